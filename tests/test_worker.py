"""The trial worker: real measurements of tiny models on CPU, effective-config readback, quality,
and every way a worker can end (OOM, segfault, hang, ImportError) coming back classified.

Each worker process costs a few seconds of torch/transformers import, so one test runs one
model's whole candidate set, and the ladders are short (prompt 16, new 8, batch 1 and 2).
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from autotune.candidate import Candidate
from autotune.errors import InputError
from autotune.worker import BatchResult, WorkerOutcome, WorkerRequest, launch
from autotune.workload import Workload

WORKLOAD = Workload(prompt_tokens=16, new_tokens=8, padding_share=0.25)
ENCODER = Workload(task="feature-extraction", prompt_tokens=16, padding_share=0.25)
FAST = dict(warmup=1, min_repeats=2, max_repeats=3, time_cap_s=5.0, timeout_s=240.0)
#: One intra-op thread per worker: two workers then share the CI machine's two cores instead of
#: four threads fighting over them (which makes tiny models many times slower).
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def launch1(req: WorkerRequest, **kwargs: object) -> WorkerOutcome:
    return launch(req, env=ENV, **kwargs)  # type: ignore[arg-type]


def run(req: WorkerRequest, **kwargs: object) -> list[BatchResult]:
    return list(launch1(req, **kwargs).results)


def launch_all(requests: list[WorkerRequest]) -> list[WorkerOutcome]:
    """Run workers two at a time (the caller must not mind their order)."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(launch1, requests))


@pytest.fixture(scope="module")
def trained_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama trained for a few seconds on a deterministic pattern (confident predictions)."""
    from autotune.testing import build_trained_tiny

    return build_trained_tiny("llama", tmp_path_factory.mktemp("trained") / "llama")


def request(
    path: Path, candidate: Candidate, batches: tuple[int, ...] = (1, 2), *, workload: Workload = WORKLOAD, **fields: object
) -> WorkerRequest:
    return WorkerRequest(
        model_path=str(path),
        model_name=path.name,
        task=workload.task,
        candidate=candidate,
        workload=workload,
        batch_sizes=batches,
        **{**FAST, **fields},
    )  # type: ignore[arg-type]


def cpu(dtype: str, attn: str, quant: str = "none", **fields: object) -> Candidate:
    return Candidate(dtype=dtype, attn=attn, quant=quant, placement="cpu", **fields)  # type: ignore[arg-type]


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes in process group ``pgid``."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry))
    return members


def assert_measured(result: BatchResult, *, generates: bool = True) -> None:
    assert result.status == "ok", result.reason
    m = result.metrics
    assert m["load_seconds"] > 0 and m["repeats"] >= 2
    assert 0 < m["latency_p50_ms"] <= m["latency_p90_ms"]
    assert m["latency_spread"] >= 0 and m["peak_memory_bytes"] > 0 and m["rss_bytes"] > 0
    assert m["torch_allocated_bytes"] is None and m["nvml_used_bytes"] is None  # CPU
    if generates:
        assert m["ttft_ms"] > 0 and m["throughput_tokens_per_s"] > 0 and m["decode_tokens_per_s"] > 0
        assert result.details["generated_tokens"] == 8
        assert len(result.details["warmup_seconds"]) >= 2  # settled: never one warm-up alone
    else:
        assert m["sequences_per_s"] > 0 and m.get("ttft_ms") is None


# -- pure parts ---------------------------------------------------------------------------------


def test_request_roundtrips_and_refuses_bad_values() -> None:
    req = request(Path("/m/llama"), cpu("bf16", "sdpa", static_cache=True), (1, 4, 16), max_memory={0: 2**30, 1: 2**29}, fault="oom")
    again = WorkerRequest.from_json(req.to_json())
    assert again == req and again.candidate.static_cache and again.workload.padding_share == 0.25
    assert again.max_memory == {0: 2**30, 1: 2**29}  # per GPU, the indices back as numbers
    for bad in [
        dict(batch_sizes=(4, 1)),
        dict(batch_sizes=(0,)),
        dict(batch_sizes=()),
        dict(fault="nope"),
        dict(make_reference=True, reference_path=None),
        dict(min_repeats=5, max_repeats=2),
        dict(max_memory={0: 0}),
        dict(max_memory={}),
    ]:
        with pytest.raises(InputError):
            WorkerRequest(**{**req.__dict__, **bad})
    assert WorkerRequest(**{**req.__dict__, "batch_sizes": (), "make_reference": True, "reference_path": "/r.pt"}).expected_batches == (0,)
    with pytest.raises(ValueError):
        BatchResult("fine", None, 1)


def test_padding_rows_fall_and_average_to_the_share() -> None:
    from autotune.worker.measure import percentile, row_lengths, spread

    lengths = row_lengths(8, 512, 0.25)
    assert lengths == sorted(lengths, reverse=True) and lengths[0] == 512
    assert abs(1 - sum(lengths) / (8 * 512) - 0.25) < 0.01
    assert row_lengths(1, 512, 0.25) == [512] and row_lengths(4, 16, 0.0) == [16] * 4
    assert min(row_lengths(4, 10, 0.9)) >= 1
    assert percentile([1.0, 2.0, 3.0], 50) == 2.0 and spread([1.0]) == 0.0
    assert spread([1.0, 1.0, 4.0]) > 1  # one slow repeat out of three is not "small"


# -- the launcher against fake interpreters (no torch: fast) -------------------------------------


def fake_python(tmp_path: Path, script: str) -> str:
    path = tmp_path / "fake-python"
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


def test_launcher_classifies_exit_status_and_signal(tmp_path: Path) -> None:
    req = request(tmp_path, cpu("fp32", "sdpa"), (1, 2, 4))
    results = run(
        req, python=fake_python(tmp_path, 'echo "Traceback (most recent call last):" >&2\necho "ValueError: boom here" >&2\nexit 3\n')
    )
    assert [r.status for r in results] == ["error", "skipped", "skipped"]
    assert "status 3" in results[0].reason and "ValueError: boom here" in results[0].reason
    results = run(req, python=fake_python(tmp_path, "kill -SEGV $$\n"))
    assert results[0].status == "crash" and "SIGSEGV" in results[0].reason
    results = run(req, python=str(tmp_path / "no-such-python"))
    assert results[0].status == "error" and "cannot start the worker" in results[0].reason


def test_launcher_environment_puts_this_package_first() -> None:
    from autotune.worker.launcher import child_environment

    env = child_environment({"PYTHONPATH": "/elsewhere", "PATH": "/bin"})
    root = str(Path(__file__).resolve().parents[1])
    assert env["PYTHONPATH"].split(os.pathsep) == [root, "/elsewhere"]


# -- real workers -------------------------------------------------------------------------------

CAUSAL_SET = [
    cpu("fp32", "eager"),
    cpu("bf16", "sdpa"),
    cpu("fp16", "sdpa", "bnb-8bit"),
    cpu("bf16", "sdpa", "bnb-4bit-nf4", double_quant=True),
]


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_causal_lm_candidates_are_measured_and_read_back(kind: str, tiny_models: dict[str, Path], tmp_path: Path) -> None:
    path = tiny_models[kind]
    reference = tmp_path / "reference.pt"
    first = launch1(request(path, CAUSAL_SET[0], reference_path=str(reference), make_reference=True))
    assert first.reference["status"] == "ok" and reference.exists()
    rest = launch_all([request(path, c, reference_path=str(reference)) for c in CAUSAL_SET[1:]])
    outcomes = dict(zip([c.label() for c in CAUSAL_SET], [first, *rest]))
    for candidate in CAUSAL_SET:
        outcome = outcomes[candidate.label()]
        assert outcome.returncode == 0, outcome.stderr_tail
        for result in outcome.results:
            assert_measured(result)
            eff = result.effective
            assert eff["attn_implementation"] == candidate.attn and eff["dtype"] == candidate.dtype
            assert eff["attention_ran"] == [candidate.attn]  # read back from a traced forward pass
            assert eff["param_devices"].keys() == {"cpu"}
            assert result.metrics["quality_token_agreement"] is not None and result.metrics["quality_kl"] is not None
            assert result.details["quality_reference_flatness"] > 0.95  # random weights: a near-flat reference
        assert [r.details["prompt_lengths"] for r in outcome.results] == [[16], [16, 8]]  # left-padded second row

    plain = outcomes["fp32 eager cpu"].results[0].effective
    assert plain["quantized_layers"] == 0 and plain["param_dtypes"].keys() == {"float32"}
    assert outcomes["fp32 eager cpu"].results[0].metrics["quality_token_agreement"] == 1.0
    int8 = outcomes["fp16 sdpa int8 cpu"].results[0].effective
    nf4 = outcomes["bf16 sdpa nf4+dq cpu"].results[0].effective
    expected = {"llama": 14, "gpt2": 8}[kind]  # 2 layers x 7 (Llama) or 4 (GPT-2: Conv1D) projections; lm_head kept by design
    assert int8["quantized_layers"] == expected and int8["quant_types"] == {"int8": expected} and int8["kept_unquantized"] == ["lm_head"]
    assert nf4["quantized_layers"] == expected and nf4["quant_types"] == {"nf4": expected}
    assert nf4["double_quant"] is True and nf4["compute_dtypes"] == ["bfloat16"] and "uint8" in nf4["param_dtypes"]
    if kind == "gpt2":
        assert int8["layer_classes"]["Linear8bitLt"] == expected  # GPT-2's Conv1D layers were converted


def test_falcon_bnb_layers_stay_unquantized_and_are_reported(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    """On transformers 5.17 and 5.24, bitsandbytes leaves Falcon's FalconLinear layers as they are."""
    import transformers

    path = tiny_models["falcon"]
    reference = str(tmp_path / "reference.pt")
    for result in run(request(path, CAUSAL_SET[0], reference_path=reference, make_reference=True)):
        assert_measured(result)
    flex = cpu("fp32", "flex_attention")
    outcomes = launch_all([request(path, c, reference_path=reference) for c in [*CAUSAL_SET[1:], flex]])
    for result in outcomes[0].results:
        assert_measured(result)
    # An attention the model class does not support comes back unsupported, in Transformers' words.
    assert outcomes[3].results[0].status == "unsupported" and "flex" in outcomes[3].results[0].reason.lower()
    for candidate, outcome in zip(CAUSAL_SET[2:], outcomes[1:3]):
        results = outcome.results
        if int(transformers.__version__.split(".")[0]) < 5:  # 4.57 converted them; nothing to report there
            assert all(r.status == "ok" for r in results)
            continue
        assert [r.status for r in results] == ["unsupported", "unsupported"]
        reason = results[0].reason
        assert reason.startswith(f"{candidate.quant} did not take effect: none of the 8 linear layers meant to be quantized was converted")
        assert "FalconLinear" in reason and "is_quantized is True" in reason
        eff = results[0].effective
        assert eff["quantized_layers"] == 0 and eff["unquantized_layers"] == 8 and eff["layer_classes"]["FalconLinear"] == 8
        assert "latency_p50_ms" not in results[0].metrics  # never measured as if it had worked


def test_encoder_candidates_are_measured_with_cosine_quality(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    path = tiny_models["bert"]
    reference = str(tmp_path / "reference.pt")
    candidates = [cpu("fp32", "eager"), cpu("bf16", "sdpa"), cpu("fp16", "sdpa", "bnb-8bit"), cpu("fp32", "sdpa", "bnb-4bit-nf4")]
    first = launch1(request(path, candidates[0], workload=ENCODER, reference_path=reference, make_reference=True))
    rest = launch_all([request(path, c, workload=ENCODER, reference_path=reference) for c in candidates[1:]])
    seen = {}
    for candidate, outcome in zip(candidates, [first, *rest]):
        for result in outcome.results:
            assert_measured(result, generates=False)
            assert result.metrics["quality_kl"] is None
        seen[candidate.label()] = outcome.results[0]
    assert seen["fp32 eager cpu"].metrics["quality_token_agreement"] == pytest.approx(1.0, abs=1e-5)
    assert seen["bf16 sdpa cpu"].metrics["quality_token_agreement"] > 0.98
    assert seen["fp16 sdpa int8 cpu"].effective["quantized_layers"] == seen["fp16 sdpa int8 cpu"].effective["linear_layers"] == 13
    assert seen["fp32 sdpa nf4 cpu"].effective["quant_types"] == {"nf4": 13}


def test_quality_separates_faithful_from_broken(trained_llama: Path, tmp_path: Path) -> None:
    reference = tmp_path / "sub" / "reference.pt"
    made = run(request(trained_llama, cpu("fp32", "sdpa"), (), reference_path=str(reference), make_reference=True))
    assert [(r.status, r.batch_size) for r in made] == [("ok", 0)] and reference.exists()  # a reference-only request
    assert made[0].details["reference"]["input_kind"] == "random-ids" and made[0].details["reference"]["new_tokens"] == 32
    faithful, broken = (
        o.results[0]
        for o in launch_all(
            [
                request(trained_llama, cpu("bf16", "eager"), (1,), reference_path=str(reference)),
                request(trained_llama, cpu("fp32", "sdpa"), (1,), reference_path=str(reference), fault="corrupt"),
            ]
        )
    )
    assert faithful.status == broken.status == "ok"  # corrupt weights still run: only quality can tell
    assert faithful.metrics["quality_token_agreement"] >= 0.95 and faithful.metrics["quality_kl"] < 0.05
    assert faithful.details["quality_reference_flatness"] < 0.9  # trained: confident, not flat
    assert broken.metrics["quality_token_agreement"] <= 0.6 and broken.metrics["quality_kl"] > 0.3
    assert broken.details["quality"]["free_running_agreement"] < faithful.details["quality"]["free_running_agreement"]
    # seeded ids: the 32-token continuations of the first 4 of 8 rows, and of all 8 when near the floor
    assert faithful.details["quality"]["extended"] is (faithful.metrics["quality_positions"] == 8 * 32)
    assert broken.metrics["quality_positions"] == 4 * 32 and not broken.details["quality"]["extended"]


def test_warmup_goes_on_until_two_calls_agree() -> None:
    """A compiled graph's first call compiles and the next may still record or recompile: the
    warm-up stops only when two calls agree, at least ``minimum`` and at most the cap."""
    from autotune.worker.measure import settle

    def calls(*seconds: float) -> Callable[[], float]:
        queue = list(seconds)
        return lambda: queue.pop(0)

    assert settle(calls(60.0, 2.2, 2.0, 2.02, 9.0), 1, 0.05) == [60.0, 2.2, 2.0, 2.02]  # compile, record, steady
    assert settle(calls(1.0, 1.01, 9.0), 1, 0.05) == [1.0, 1.01]  # no compile: two calls are enough
    assert settle(calls(1.0, 1.0, 1.0, 9.0), 3, 0.05) == [1.0, 1.0, 1.0]  # the minimum holds
    assert settle(calls(8.0, 4.0, 2.0, 1.0, 0.5, 9.0), 1, 0.05) == [8.0, 4.0, 2.0, 1.0]  # the cap holds
    assert settle(calls(8.0, 4.0, 2.0, 1.0, 0.5, 0.5, 9.0), 6, 0.05) == [8.0, 4.0, 2.0, 1.0, 0.5, 0.5]  # a minimum above the cap
    assert settle(calls(2.0, 2.0, 9.0), 1, 0.05, done=(30.0,)) == [30.0, 2.0, 2.0]  # a first pass made elsewhere counts


def test_compile_count_sees_a_new_graph() -> None:
    """The count the worker compares around a timed series moves when torch.compile makes a graph."""
    import torch

    from autotune.worker.measure import compile_count

    before = compile_count()
    assert before is not None
    torch.compile(lambda x: x * 2 + 1, backend="eager")(torch.ones(3))
    assert (compile_count() or 0) > before


def test_a_series_during_which_a_graph_compiled_is_timed_again(tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """A graph made inside the timed series (a recompile the warm-up did not reach) means those calls
    timed a compile: the worker times both series again and says so; a second one is a warning."""
    import transformers

    from autotune.worker import measure

    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_models["llama"], attn_implementation="sdpa").eval()
    counts = iter([0, 1, 1, 1])  # before the series, after it (one graph made), before the second, after it
    monkeypatch.setattr(measure, "compile_count", lambda: next(counts))
    result = measure.measure_generation(model, request(tiny_models["llama"], cpu("fp32", "sdpa"), (1,)), 1, None)
    assert result.details["recompiled_during_timing"] == 1 and result.details["retimed"] is True
    assert "warning" not in result.details and result.metrics["repeats"] >= 2
    counts = iter([0, 1, 1, 2])  # the second series made one too
    monkeypatch.setattr(measure, "compile_count", lambda: next(counts))
    again = measure.measure_generation(model, request(tiny_models["llama"], cpu("fp32", "sdpa"), (1,)), 1, None)
    assert again.details["warning"] == "torch.compile made 1 graph(s) during the timed series even when timed again"
    counts = iter([5, 5])  # nothing compiled: no second series
    monkeypatch.setattr(measure, "compile_count", lambda: next(counts))
    plain = measure.measure_generation(model, request(tiny_models["llama"], cpu("fp32", "sdpa"), (1,)), 1, None)
    assert "retimed" not in plain.details


def test_prefill_only_measures_one_series(tiny_models: dict[str, Path]) -> None:
    """--new-tokens 1: the whole call ends at the first token, so its latency is the time to first token."""
    prefill = Workload(prompt_tokens=256, new_tokens=1)
    results = run(request(tiny_models["llama"], cpu("fp32", "sdpa"), (1, 2), workload=prefill))
    for result in results:
        assert result.status == "ok", result.reason
        m, d = result.metrics, result.details
        assert d["generated_tokens"] == 1 and d["e2e_ms"] == d["ttft_ms_repeats"]
        assert m["ttft_ms"] == m["latency_p50_ms"] and m["decode_tokens_per_s"] is None
        assert m["throughput_tokens_per_s"] == pytest.approx(result.batch_size / (m["latency_p50_ms"] / 1e3))


# -- faults -------------------------------------------------------------------------------------


def test_injected_oom_stops_the_ladder(tiny_models: dict[str, Path]) -> None:
    results = run(request(tiny_models["llama"], cpu("fp32", "sdpa"), (1, 2, 4), fault="oom"))
    assert [r.status for r in results] == ["ok", "oom", "skipped"]
    assert "out of memory at batch size 2" in results[1].reason and "batch size 2" in results[2].reason
    assert results[1].effective["attn_implementation"] == "sdpa"


def test_segfault_keeps_finished_batches(tiny_models: dict[str, Path]) -> None:
    outcome = launch1(request(tiny_models["llama"], cpu("fp32", "sdpa"), (1, 2, 4), fault="crash"))
    assert outcome.returncode == -11
    assert [r.status for r in outcome.results] == ["ok", "crash", "skipped"]
    assert outcome.results[0].metrics["throughput_tokens_per_s"] > 0  # written before the crash, kept
    assert "SIGSEGV" in outcome.results[1].reason and "measuring batch size 2" in outcome.results[1].reason
    assert "Segmentation fault" in outcome.results[1].details["output_tail"]


def test_a_worker_dies_with_the_process_that_launched_it(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    """``kill -9`` of the tuner must not leave its worker holding a GPU: the kernel ends it too."""
    if not sys.platform.startswith("linux"):
        pytest.skip("parent-death signals are Linux's")
    (tmp_path / "request.json").write_text(
        request(tiny_models["llama"], cpu("fp32", "sdpa"), (1,), fault="hang", timeout_s=120.0).to_json()
    )
    script = (
        "import sys\nfrom autotune.worker import WorkerRequest, launch\n"
        "launch(WorkerRequest.from_json(open(sys.argv[1]).read()), on_spawn=lambda pid: print(pid, flush=True))\n"
    )
    tuner = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "request.json")], stdout=subprocess.PIPE, text=True)
    worker = int(tuner.stdout.readline())  # type: ignore[union-attr]
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and worker not in group_members(worker):
            time.sleep(0.1)
        assert worker in group_members(worker)
        time.sleep(1.0)  # past the worker's start-up, where it asks to die with its parent
        tuner.kill()
        tuner.wait()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and worker in group_members(worker):
            time.sleep(0.1)
        assert worker not in group_members(worker)
    finally:
        try:
            os.killpg(worker, signal.SIGKILL)  # the hang fault's own grandchild
        except ProcessLookupError:
            pass


def ignores_sigterm(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as fh:
            mask = next(line for line in fh if line.startswith("SigIgn:")).split()[1]
    except (OSError, StopIteration):
        return False
    return bool(int(mask, 16) & (1 << (signal.SIGTERM - 1)))


def test_hang_times_out_and_kills_the_whole_process_group(tiny_models: dict[str, Path]) -> None:
    pids: list[int] = []
    seen: list[list[int]] = []

    def watch(pid: int) -> None:
        """Until the worker is killed: wait for it and its grandchild to be up, both ignoring SIGTERM."""

        def poll() -> None:
            while not seen and time.monotonic() - started < 60:
                members = group_members(pid)
                if len(members) >= 2 and all(ignores_sigterm(m) for m in members):
                    seen.append(members)
                elif pid not in members:
                    return
                time.sleep(0.05)

        pids.append(pid)
        threading.Thread(target=poll, daemon=True).start()

    # The limit leaves a loaded machine time to start the worker and its grandchild (a fraction
    # of a second when idle); the launcher's SIGTERM then finds both ignoring it.
    started = time.monotonic()
    outcome = launch1(request(tiny_models["llama"], cpu("fp32", "sdpa"), (1, 2), fault="hang", timeout_s=10.0), on_spawn=watch)
    assert outcome.timed_out and [r.status for r in outcome.results] == ["timeout", "skipped"]
    assert "10 s limit" in outcome.results[0].reason
    assert len(seen) == 1 and len(seen[0]) >= 2  # the worker and the grandchild it started, both ignoring SIGTERM
    assert group_members(pids[0]) == []  # nothing of it survives the launcher's return
    assert time.monotonic() - started < 30


def test_an_unclassified_error_names_the_model_the_candidate_and_what_to_try(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    broken = tmp_path / "broken-llama"
    shutil.copytree(tiny_models["llama"], broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    # past the tiny GPT-2's 1024 positions: `autotune add` refuses such a workload, a request does not
    too_long = Workload(prompt_tokens=1100, new_tokens=8)
    unloadable, measured = launch_all(
        [
            request(broken, cpu("fp32", "sdpa"), (1, 2)),
            request(tiny_models["gpt2"], cpu("fp32", "eager"), (1, 2), workload=too_long),
        ]
    )
    assert [r.status for r in unloadable.results] == ["error", "error"]
    reason = unloadable.results[0].reason
    assert reason.startswith("loading broken-llama as fp32 sdpa cpu failed with an error autotune does not recognise (")
    assert "autotune trials broken-llama --json" in reason
    assert "`autotune measure broken-llama --dtype fp32 --placement cpu --attn sdpa --batch 1`" in reason
    assert [r.status for r in measured.results] == ["error", "skipped"]
    reason = measured.results[0].reason
    assert reason.startswith(
        "measuring batch size 1 of gpt2 as fp32 eager cpu failed with an error autotune does not recognise "
        "(IndexError: index out of range in self)"
    ), reason
    assert "`autotune measure gpt2 --dtype fp32 --placement cpu --attn eager --batch 1`" in reason
    assert measured.results[0].details["traceback"].rstrip().endswith("IndexError: index out of range in self")


def test_import_error_static_cache_on_cpu_and_a_silent_fallback_are_unsupported(tiny_models: dict[str, Path]) -> None:
    failed, static, fallback = launch_all(
        [
            request(tiny_models["gpt2"], cpu("fp32", "sdpa"), (1, 2), fault="import"),
            request(tiny_models["llama"], cpu("fp32", "sdpa", static_cache=True), (1, 2)),
            request(tiny_models["llama"], cpu("fp32", "sdpa"), (1, 2), fault="fallback"),
        ]
    )
    # the config still says sdpa; the traced forward pass shows the eager function ran under that name
    assert [r.status for r in fallback.results] == ["unsupported", "unsupported"]
    assert fallback.results[0].reason == "attention sdpa did not take effect: a forward pass ran eager"
    assert fallback.results[0].effective["attn_implementation"] == "sdpa"
    assert "latency_p50_ms" not in fallback.results[0].metrics
    assert [r.status for r in failed.results] == ["unsupported", "unsupported"]
    assert "autotune_injected_fault" in failed.results[0].reason and "not importable" in failed.results[0].reason
    # transformers compiles the static-cache forward only on CUDA/XPU: on the CPU the option does not take effect.
    assert [r.status for r in static.results] == ["unsupported", "unsupported"]
    assert "static cache did not take effect as compiled" in static.results[0].reason
    assert static.results[0].effective["static_cache_compiled"] is False
