"""ONNX Runtime candidates: the validity rules, worker environments, exports cached on disk, and
measurements in a second Python environment (transformers 4.57 + optimum-onnx).

The tests that run ONNX Runtime need the interpreter named by ``AUTOTUNE_TEST_ONNX_PYTHON``
(``./dev test`` builds it from requirements/onnx.txt and sets it); without it they are skipped,
with that reason. Workers are few and tiny (prompt 16, new 8, batch 1 and 2); the quality
references and exports are cached once for the whole module.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from autotune.candidate import Candidate, choose_worker_env, onnxruntime_rejection, rejection
from autotune.environment import Environment, Gpu
from autotune.worker_env import WorkerEnvironment

ORT_PYTHON = os.environ.get("AUTOTUNE_TEST_ONNX_PYTHON")
needs_ort = pytest.mark.skipif(
    not ORT_PYTHON,
    reason="AUTOTUNE_TEST_ONNX_PYTHON is not set: ./dev test builds the ONNX Runtime environment (requirements/onnx.txt) and sets it",
)
SMALL = {"prompt_tokens": 16, "new_tokens": 8}
FAST = {"warmup": 1, "min_repeats": 2, "max_repeats": 3, "time_cap_s": 5.0}
CPU_ORT = WorkerEnvironment("ort", ORT_PYTHON or "/unset", runtimes={"onnxruntime": ["CPUExecutionProvider"]})


def ort(**fields: object) -> Candidate:
    base: dict[str, object] = {"dtype": "float32", "placement": "cpu", "runtime": "onnxruntime", "provider": "CPUExecutionProvider"}
    return Candidate(**{**base, **fields})  # type: ignore[arg-type]


def h100() -> Environment:
    gpu = Gpu(index=0, uuid="GPU-0", name="H100", total_memory=80 * 2**30, free_memory=80 * 2**30, compute_capability=(9, 0))
    return Environment(gpus=(gpu,), versions={"torch": "2.13", "transformers": "5.24"})


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One AUTOTUNE_CACHE for the module: references and exports are made once."""
    return tmp_path_factory.mktemp("ort-cache")


@pytest.fixture
def ort_env(monkeypatch: pytest.MonkeyPatch, shared_cache: Path) -> Path:
    monkeypatch.setenv("AUTOTUNE_CACHE", str(shared_cache))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    return shared_cache


# -- rules, no interpreter needed -----------------------------------------------------------------


@pytest.mark.parametrize(
    "candidate, words",
    [
        (ort(provider=None), "needs an execution provider"),
        (ort(provider="OpenVINOExecutionProvider"), "autotune places only"),
        (ort(attn="eager"), "attention eager: a PyTorch loading option"),
        (ort(quant="bnb-4bit-nf4"), "quantization bnb-4bit-nf4"),
        (ort(static_cache=True), "static cache True"),
        (ort(sdpa_kernel="math"), "SDPA kernel math"),
        (ort(dtype="bfloat16"), "float32 or float16"),
        (ort(dtype="float16"), "exports float16 graphs on a GPU only"),
        (ort(provider="CUDAExecutionProvider"), "CUDAExecutionProvider runs on one GPU (placement cuda)"),
        (ort(provider="CPUExecutionProvider", placement="cuda"), "runs on the CPU (placement cpu)"),
        (ort(provider="CUDAExecutionProvider", placement="multi-gpu"), "one device"),
        (Candidate(placement="cuda", provider="CUDAExecutionProvider"), "applies only to runtime onnxruntime"),
        (Candidate(placement="cuda", io_binding=True), "IO binding: applies only to runtime onnxruntime"),
    ],
)
def test_onnxruntime_rules(candidate: Candidate, words: str) -> None:
    reason = rejection(candidate, h100(), {"attn_implementations": ["eager", "sdpa"]})
    if candidate.placement == "multi-gpu":  # on one GPU the general rule answers first
        reason = onnxruntime_rejection(candidate)
    assert reason is not None and words in reason, reason


def test_worker_environments_decide_where_an_ort_candidate_runs() -> None:
    cuda_ort = WorkerEnvironment("gpu-ort", "/x/python", runtimes={"onnxruntime": ["CUDAExecutionProvider", "CPUExecutionProvider"]})
    torch_only = WorkerEnvironment("old", "/y/python", runtimes={"pytorch": ["cpu"]})
    fp16_cuda = ort(dtype="float16", provider="CUDAExecutionProvider", placement="cuda", io_binding=True)
    assert fp16_cuda.label() == "fp16 onnxruntime[CUDA] io-binding cuda" and ort().label() == "fp32 onnxruntime[CPU] cpu"
    assert rejection(fp16_cuda, h100(), {}) is None  # without environments, only the static rules
    assert "autotune env add ort /path/to/python" in onnxruntime_rejection(fp16_cuda, [torch_only])
    reason = onnxruntime_rejection(fp16_cuda, [CPU_ORT, torch_only])
    assert "no worker environment offers it (ort offers CPUExecutionProvider)" in reason
    assert rejection(fp16_cuda, h100(), {}, None, [CPU_ORT, cuda_ort]) is None
    assert choose_worker_env(fp16_cuda, [CPU_ORT, cuda_ort]) == cuda_ort
    assert choose_worker_env(ort(), [cuda_ort, CPU_ORT]) == cuda_ort  # the first by name that offers it
    assert choose_worker_env(Candidate(), [cuda_ort]) is None  # PyTorch runs in default
    # The PyTorch rules (model support) do not apply to an exported graph; the workload's device does.
    assert rejection(ort(), Environment(gpus=(), versions={}), {"attn_implementations": ["eager"]}) is None
    from autotune.workload import Workload

    assert "pinned to CUDA" in rejection(ort(), Environment(gpus=(), versions={}), {}, Workload(device="cuda"))


def test_export_key_and_isolated_child_path(tmp_path: Path) -> None:
    from autotune.worker.launcher import child_environment
    from autotune.worker.onnx import ExportSpec
    from autotune.worker.protocol import WorkerRequest
    from autotune.workload import Workload

    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "gpt2"}')
    spec = ExportSpec(str(model), "org/m", None, "text-generation-with-past", "float32", "cpu", 0, {"optimum-onnx": "0.1.0"})
    assert spec.directory(tmp_path).name == f"m-fp32-{spec.key()}"
    variants = [
        ExportSpec(**{**spec.__dict__, "dtype": "float16"}),
        ExportSpec(**{**spec.__dict__, "revision": "abc"}),
        ExportSpec(**{**spec.__dict__, "versions": {"optimum-onnx": "0.2.0"}}),
        ExportSpec(**{**spec.__dict__, "task": "feature-extraction"}),
    ]
    assert len({spec.key(), *(v.key() for v in variants)}) == 5
    assert ExportSpec(**{**spec.__dict__, "fail": True}).key() == spec.key()
    before = spec.key()
    (model / "config.json").write_text('{"model_type": "gpt2", "n_layer": 3}')
    assert spec.key() != before  # a changed config is a new export

    env = child_environment({"PYTHONPATH": "/elsewhere", "PATH": "/bin"}, isolated_in=str(tmp_path / "w"))
    assert env["PYTHONPATH"] == str(tmp_path / "w" / "pythonpath")
    assert sorted(os.listdir(env["PYTHONPATH"])) == ["autotune"]
    assert (Path(env["PYTHONPATH"]) / "autotune" / "worker" / "onnx.py").exists()
    request = WorkerRequest(
        model_path=str(model),
        model_name="m",
        task="text-generation",
        candidate=ort(),
        workload=Workload(),
        batch_sizes=(1,),
        model_revision="r1",
        onnx_cache="/c",
    )
    assert WorkerRequest.from_json(request.to_json()) == request


# -- worker environments on real and broken interpreters -----------------------------------------


def test_env_add_refuses_broken_interpreters(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    result = cli("env", "add", "gone", tmp_path / "no" / "python")
    assert result.code == 2 and result.err.count("\n") == 1
    assert result.err.startswith("autotune: cannot use") and "does not exist" in result.err
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "bare")], check=True)
    result = cli("env", "add", "bare", tmp_path / "bare" / "bin" / "python")
    assert result.code == 2 and "offers no runtime" in result.err and result.err.count("\n") == 1
    assert cli("env", "add", "default", sys.executable).code == 2
    # An interpreter with torch and transformers but no optimum-onnx is registered: it offers PyTorch.
    result = cli("env", "add", "torch-only", sys.executable)
    assert result.code == 0, result.err
    assert "pytorch [cpu]" in result.out and "not available there: onnxruntime:" in result.out
    envs = {e["name"]: e for e in json.loads(cli("env", "list", "--json").out)}
    assert set(envs) == {"default", "torch-only"} and "onnxruntime" not in envs["torch-only"]["runtimes"]


_FAKE_ORT = """
import os
def get_available_providers():
    return {listed!r}
class InferenceSession:
    def __init__(self, model, providers):
        os.write(2, b"[E:onnxruntime:Default, provider_bridge_ort.cc:2251] Failed to load library libonnxruntime_providers_cuda.so"
                    b" with error: libcudnn.so.9: cannot open shared object file: No such file or directory\\n")
    def get_providers(self):
        return ["CPUExecutionProvider"]
"""


@pytest.mark.parametrize(
    ("listed", "torch_sees_gpu", "reason"),
    [
        (["CUDAExecutionProvider", "CPUExecutionProvider"], False, "libcudnn.so.9: cannot open shared object file"),
        (["CPUExecutionProvider"], True, "onnxruntime is the CPU build; install onnxruntime-gpu there"),
        (["CPUExecutionProvider"], False, None),
    ],
)
def test_env_list_says_why_the_cuda_provider_is_not_usable(
    cli, tmp_path: Path, listed: list[str], torch_sees_gpu: bool, reason: str | None
) -> None:  # type: ignore[no-untyped-def]
    # An interpreter whose onnxruntime lists the CUDA provider but whose sessions fall back to the
    # CPU (the log line ONNX Runtime writes when libcudnn is missing), or a CPU build beside a GPU.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "env")], check=True)
    site = next((tmp_path / "env" / "lib").glob("python*/site-packages"))
    (site / "onnxruntime").mkdir()
    (site / "onnxruntime" / "__init__.py").write_text(_FAKE_ORT.format(listed=listed))
    (site / "optimum" / "onnxruntime").mkdir(parents=True)
    (site / "optimum" / "onnxruntime" / "__init__.py").write_text("")
    (site / "torch").mkdir()
    (site / "torch" / "__init__.py").write_text(f"class cuda:\n    is_available = staticmethod(lambda: {torch_sees_gpu})\n")
    result = cli("env", "add", "ort", tmp_path / "env" / "bin" / "python")
    assert result.code == 0, result.err
    assert "onnxruntime [CPUExecutionProvider]" in result.out and "CUDAExecutionProvider]" not in result.out
    env = {e["name"]: e for e in json.loads(cli("env", "list", "--json").out)}["ort"]
    assert env["runtimes"]["onnxruntime"] == ["CPUExecutionProvider"]
    cuda_problems = [p for p in env["problems"] if p.startswith("onnxruntime CUDAExecutionProvider")]
    table = cli("env", "list").out
    if reason is None:
        assert cuda_problems == [] and "CUDAExecutionProvider" not in table
    else:
        assert len(cuda_problems) == 1 and reason in cuda_problems[0], env["problems"]
        assert f"ort: not available: {cuda_problems[0]}" in table and f"not available there: {cuda_problems[0]}" in result.out


@needs_ort
def test_env_add_and_list_the_onnx_environment(cli) -> None:  # type: ignore[no-untyped-def]
    result = cli("env", "add", "ort", ORT_PYTHON)
    assert result.code == 0, result.err
    assert result.out.startswith("added worker environment ort") and "onnxruntime [CPUExecutionProvider]" in result.out
    envs = {e["name"]: e for e in json.loads(cli("env", "list", "--json").out)}
    ort_env = envs["ort"]
    assert ort_env["usable"] and ort_env["versions"]["transformers"].startswith("4.57") and ort_env["versions"]["optimum-onnx"]
    assert envs["default"]["versions"]["transformers"].startswith("5.")
    table = cli("env", "list").out
    assert "OPTIMUM-ONNX" in table and "ort" in table
    assert cli("env", "add", "ort", ORT_PYTHON).out.startswith("updated worker environment ort")


# -- measuring ONNX Runtime candidates ------------------------------------------------------------


@needs_ort
def test_measure_gpt2_on_the_cpu_provider_exports_once(cli, tiny_models, ort_env) -> None:  # type: ignore[no-untyped-def]
    model = tiny_models["gpt2"]
    assert cli("add", model, "--prompt-tokens", "16", "--new-tokens", "8").code == 0
    result = cli("measure", model, "--runtime", "onnxruntime", "--batch", "1,2", "--json")
    assert "autotune env add ort /path/to/python" in json.loads(result.out)["results"][0]["reason"]
    assert cli("env", "add", "ort", ORT_PYTHON).code == 0

    result = cli("measure", model, "--runtime", "onnxruntime", "--provider", "CPUExecutionProvider", "--batch", "1,2", "--json")
    assert result.code == 0, result.out + result.err
    doc = json.loads(result.out)
    assert doc["label"] == "fp32 onnxruntime[CPU] cpu"
    for r in doc["results"]:
        assert r["status"] == "ok", r["reason"]
        assert r["worker_env"] == "ort"
        for metric in (
            "load_seconds",
            "ttft_ms",
            "latency_p50_ms",
            "latency_p90_ms",
            "throughput_tokens_per_s",
            "decode_tokens_per_s",
            "peak_memory_bytes",
            "quality_token_agreement",
            "quality_kl",
        ):
            assert r[metric] is not None, metric
        # Same graph and weights as the fp32 PyTorch reference: the same greedy tokens.
        assert r["quality_token_agreement"] > 0.9 and r["quality_kl"] < 1e-3
    effective = doc["results"][0]["effective"]
    assert effective["runtime"] == "onnxruntime" and effective["providers"] == ["CPUExecutionProvider"]
    assert effective["io_binding"] is False and effective["onnx_dtype"] == "float32" and "model.onnx" in effective["onnx_files"]
    assert effective["versions"]["transformers"].startswith("4.57")
    first = effective["export"]
    assert first["cached"] is False and first["seconds"] > 0 and first["task"] == "text-generation-with-past"
    assert first["path"].startswith(str(ort_env / "onnx"))
    assert doc["results"][0]["details"]["reference"]["label"] == "fp32 sdpa cpu"  # made by PyTorch in default

    # The second candidate of the same model and dtype finds the export in the cache.
    result = cli("measure", model, "--runtime", "onnxruntime", "--io-binding", "--batch", "1")
    assert result.code == 0, result.out
    assert "ran in worker environment ort" in result.out and "IO binding on" in result.out and "export cached" in result.out
    exports = [p.name for p in (ort_env / "onnx").iterdir()]
    assert exports.count(Path(first["path"]).name) == 1 and not [p for p in exports if p.startswith(".tmp-")]
    with sqlite3.connect(cli.db) as conn:
        rows = conn.execute("SELECT status, worker_env FROM autotune_trials ORDER BY id").fetchall()
    assert rows == [("unsupported", "default")] * 2 + [("ok", "ort")] * 3


@needs_ort
@pytest.mark.parametrize("task", ["feature-extraction", "text-classification"])
def test_encoders_on_the_cpu_provider(task: str, tmp_path: Path, tiny_models: dict[str, Path], ort_env: Path) -> None:
    import shutil

    from autotune.api import add_model
    from autotune.environment import probe
    from autotune.store import Store
    from autotune.trials import measure_candidate

    path = tiny_models["bert"] if task == "feature-extraction" else Path(shutil.copytree(tiny_models["bert"], tmp_path / "bert-cls"))
    with Store.open(f"sqlite:///{tmp_path / 'ort.db'}") as store:
        model = add_model(store, str(path), {"task": task, "prompt_tokens": 16}).model
        environment = probe()
        environment_id = store.record_environment(environment)
        study = store.study_for(model, environment_id)
        trials = measure_candidate(
            store,
            model,
            ort(),
            [1, 2],
            environment=environment,
            environment_id=environment_id,
            study=study,
            worker_options=FAST,
            worker_envs=[CPU_ORT],
        )
    for t in trials:
        assert t.status == "ok", t.reason
        assert t.worker_env == "ort" and t.metrics["sequences_per_s"] > 0 and t.metrics["latency_p50_ms"] > 0
        assert t.metrics["peak_memory_bytes"] > 0 and t.metrics["quality_token_agreement"] is not None
    effective = trials[0].effective
    assert effective["from_pretrained"]["class"] == (
        "ORTModelForFeatureExtraction" if task == "feature-extraction" else "ORTModelForSequenceClassification"
    )
    assert effective["export"]["task"] == task
    if task == "feature-extraction":
        assert trials[0].metrics["quality_token_agreement"] > 0.999  # cosine of the last hidden states
    else:
        # The checkpoint has no classifier: the PyTorch reference (transformers 5) and the export
        # (transformers 4.57) initialise it from the same seed, and draw the same weights.
        assert trials[0].details["quality_measure"].startswith("top-class agreement")
        assert trials[0].metrics["quality_token_agreement"] == 1.0 and trials[0].metrics["quality_kl"] < 1e-4


@needs_ort
def test_broken_environments_and_exports_are_recorded(tmp_path: Path, tiny_models: dict[str, Path], ort_env: Path) -> None:
    from autotune.api import add_model
    from autotune.environment import probe
    from autotune.store import Store
    from autotune.trials import measure_candidate

    with Store.open(f"sqlite:///{tmp_path / 'broken.db'}") as store:
        model = add_model(store, str(tiny_models["gpt2"]), SMALL).model
        environment = probe()
        environment_id = store.record_environment(environment)
        study = store.study_for(model, environment_id)

        def measure(envs: list[WorkerEnvironment] | None, **kwargs: object):  # type: ignore[no-untyped-def]
            return measure_candidate(
                store,
                model,
                ort(),
                [1, 2],
                environment=environment,
                environment_id=environment_id,
                study=study,
                worker_options=FAST,
                worker_envs=envs,
                **kwargs,
            )  # type: ignore[arg-type]

        spawned: list[int] = []
        none = measure(None, on_spawn=spawned.append)  # the store has no environment registered
        assert [t.status for t in none] == ["unsupported"] * 2 and spawned == []
        assert "no worker environment offers ONNX Runtime (register one: autotune env add ort" in none[0].reason
        gone = measure([WorkerEnvironment("ort", str(tmp_path / "gone" / "python"), runtimes=CPU_ORT.runtimes)])
        assert gone[0].status == "unsupported" and gone[0].worker_env == "ort" and "is gone" in gone[0].reason
        assert "autotune env add ort PYTHON" in gone[0].reason
        # Registered when it had optimum-onnx; now it has not (this interpreter never had it).
        stale = measure([WorkerEnvironment("stale", sys.executable, runtimes=CPU_ORT.runtimes)])
        assert [t.status for t in stale] == ["unsupported"] * 2 and stale[0].worker_env == "stale"
        assert "cannot import onnxruntime" in stale[0].reason and "pip install" in stale[0].reason
        failed = measure([CPU_ORT], fault="export")
        assert [t.status for t in failed] == ["error", "error"]
        assert failed[0].reason.startswith("exporting to ONNX failed: RuntimeError: the ONNX exporter failed")
        assert "export_log" in failed[0].details and failed[0].feasible is False
        assert [t.status for t in store.trials(study_id=study.id)] == ["unsupported"] * 6 + ["error"] * 2


@needs_ort
def test_concurrent_exports_share_one_cache_entry(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    """Two workers exporting the same model at once: both succeed, one directory stays, no temporary left."""
    script = f"""
import json, os
from autotune.candidate import Candidate
from autotune.worker import onnx
from autotune.worker.protocol import WorkerRequest
from autotune.workload import Workload
request = WorkerRequest(model_path={str(tiny_models["bert"])!r}, model_name="bert", task="feature-extraction",
                        candidate=Candidate(dtype="float32", placement="cpu", runtime="onnxruntime", provider="CPUExecutionProvider"),
                        workload=Workload(task="feature-extraction", prompt_tokens=16), batch_sizes=(1,), onnx_cache={str(tmp_path)!r})
jobs = [onnx.start_export(request) for _ in range(2)]
started = [job.proc is not None for job in jobs]
exports = [job.wait() for job in jobs]
again = onnx.start_export(request).wait()
print(json.dumps({{"started": started, "paths": [e.path for e in exports], "cached": again.cached, "listing": sorted(os.listdir({str(tmp_path)!r}))}}))
"""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([ORT_PYTHON, "-c", script], capture_output=True, text=True, env=env, timeout=300)  # type: ignore[list-item]
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["started"] == [True, True] and len(set(out["paths"])) == 1 and out["cached"] is True
    assert out["listing"] == [Path(out["paths"][0]).name]
    assert (Path(out["paths"][0]) / "model.onnx").exists() and (Path(out["paths"][0]) / "autotune-export.json").exists()


# -- a study that mixes PyTorch and ONNX Runtime -------------------------------------------------


def test_space_offers_onnxruntime_where_an_environment_does() -> None:
    from autotune.search.space import build_space, candidate_from, params_of, parse_restriction
    from autotune.workload import Workload

    config = {"model_type": "gpt2", "vocab_size": 512, "n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 1024}
    caps = {"architecture": "GPT2LMHeadModel", "attn_implementations": ["eager", "sdpa"]}
    cpu = Environment(gpus=(), versions={"torch": "2.13", "transformers": "5.24"})
    restrict = parse_restriction("dtype=fp32,fp16 attn=sdpa quant=none static_cache=false")
    space = build_space(config, caps, Workload(**SMALL), cpu, restrict=restrict, worker_envs=[CPU_ORT])
    labels = sorted(c.label() for c in space.candidates)
    assert labels == ["fp16 sdpa cpu", "fp32 onnxruntime[CPU] cpu", "fp32 onnxruntime[CPU] io-binding cpu", "fp32 sdpa cpu"]
    assert space.choices["runtime"][0] == "pytorch" and "onnxruntime:CPUExecutionProvider+io-binding" in space.choices["runtime"]
    assert [b.name for b in space.baselines] == ["transformers defaults", "ONNX Runtime"]
    for candidate in space.candidates:
        assert candidate_from(params_of(candidate)) == candidate
    fp16 = next(r for r in space.rejected if "float16 on the CPU" in r.reason)
    assert fp16.count == 2 and fp16.pattern == {"runtime": "onnxruntime", "provider": "CPUExecutionProvider", "placement": "cpu"}
    assert fp16.label == "onnxruntime[CPU] cpu (2 candidates)"
    only_ort = build_space(
        config, caps, Workload(**SMALL), cpu, restrict={**restrict, **parse_restriction("runtime=ort")}, worker_envs=[CPU_ORT]
    )
    assert {c.runtime for c in only_ort.candidates} == {"onnxruntime"} and len(only_ort) == 2
    # No environment registered: no ONNX Runtime candidate, and the study says how to get one.
    bare = build_space(config, caps, Workload(**SMALL), cpu, restrict=restrict, worker_envs=[])
    assert {c.runtime for c in bare.candidates} == {"pytorch"}
    (note,) = [r for r in bare.rejected if r.pattern == {"runtime": "onnxruntime"}]
    assert "autotune env add ort /path/to/python" in note.reason
    assert not [r for r in build_space(config, caps, Workload(**SMALL), cpu, restrict=restrict).rejected if "onnxruntime" in r.reason]


@needs_ort
def test_one_study_mixes_pytorch_and_onnxruntime_and_recommends_one(cli, tiny_models, ort_env) -> None:  # type: ignore[no-untyped-def]
    model = tiny_models["gpt2"]
    assert cli("add", model, "--prompt-tokens", "16", "--new-tokens", "8", "--max-batch", "2", "--device", "cpu").code == 0
    assert cli("env", "add", "ort", ORT_PYTHON).code == 0
    space = "dtype=fp32 attn=sdpa quant=none static_cache=false runtime=pytorch,onnxruntime:CPUExecutionProvider"
    result = cli("tune", model, "--space", space, "--seed", "1", "--exhaustive")  # both measured fully, whichever is faster
    assert result.code == 0, result.err
    assert "space: 2 candidates" in result.err and "study finished: space exhausted" in result.err
    trials = json.loads(cli("trials", model, "--json").out)[0]["trials"]
    assert {(t["label"], t["worker_env"], t["status"]) for t in trials} == {
        ("fp32 sdpa cpu", "default", "ok"),
        ("fp32 onnxruntime[CPU] cpu", "ort", "ok"),
    }
    # batch 1 and 2 of each; where the two land within the noise, the study confirms by measuring both again
    assert len([t for t in trials if t["origin"] != "confirm"]) == 4

    doc = json.loads(cli("recommend", model, "--json").out)
    doc = doc[0] if isinstance(doc, list) else doc
    best = doc["recommendation"]
    assert best["label"] in ("fp32 sdpa cpu", "fp32 onnxruntime[CPU] cpu")
    why = {v["option"]: v for v in doc["why_not"]}
    loser = "PyTorch" if best["candidate"]["runtime"] == "onnxruntime" else "ONNX Runtime (CPUExecutionProvider)"
    assert why[loser]["kind"] == "slower"
    assert why["BetterTransformer"]["kind"] == "unavailable" and "SDPA" in why["BetterTransformer"]["reason"]
    assert "Optimum 2" in why["BetterTransformer"]["reason"] and "Transformers 5" in why["BetterTransformer"]["reason"]

    # The loaders: an ONNX Runtime one for the ONNX Runtime trial, and the Transformers 4.x form of
    # the PyTorch one, both executed in the second environment.
    from dataclasses import replace

    from autotune.advisor.recommend import loader_spec, packages_for, recommend
    from autotune.advisor.render import render_loader
    from autotune.store import Store

    with Store.open(f"sqlite:///{cli.db}") as store:
        registered = store.get_model(str(model))
        rec = recommend(store, registered)
        assert rec.best is not None and list(rec.packages) == doc["packages"]
        runs = store.trials(study_id=rec.study.id)
        ort_trial = max((t for t in runs if t.candidate.runtime == "onnxruntime" and t.ok), key=lambda t: t.batch_size)
        torch_trial = next(t for t in runs if t.candidate.runtime == "pytorch" and t.ok)
        ort_packages = packages_for(store, ort_trial, rec.environment)
        ort_spec = loader_spec(replace(rec, best=ort_trial))
        legacy_spec = replace(loader_spec(replace(rec, best=torch_trial)), versions={**ort_spec.versions})
    assert any(p.startswith("optimum-onnx==") for p in ort_packages) and "transformers==4.57.6" in ort_packages
    assert best["candidate"]["runtime"] != "onnxruntime" or doc["packages"] == ort_packages
    assert ort_spec.versions["transformers"] == "4.57.6" and ort_spec.onnx_export == ort_trial.effective["export"]["path"]
    ort_source, legacy_source = render_loader(ort_spec), render_loader(legacy_spec)
    assert "from optimum.onnxruntime import ORTModelForCausalLM" in ort_source and "provider=PROVIDER" in ort_source
    assert "export=True" in ort_source and "PROVIDER = 'CPUExecutionProvider'" in ort_source and "optimum-onnx==" in ort_source
    assert "torch_dtype=torch.float32" in legacy_source and "\n        dtype=" not in legacy_source
    loaders = ort_env / "loaders"
    loaders.mkdir(exist_ok=True)
    (loaders / "ort_loader.py").write_text(ort_source)
    (loaders / "legacy_loader.py").write_text(legacy_source)
    script = f"""
import json, os, torch
import ort_loader, legacy_loader
ids = torch.randint(1, 500, (2, 16))
batch = {{"input_ids": ids, "attention_mask": torch.ones_like(ids)}}
out = {{}}
model, tok = ort_loader.load_model()
out["ort"] = [type(model).__name__, list(ort_loader.generate(model, **batch).shape)]
fresh = {str(ort_env / "loaders" / "fresh-export")!r}
model, _ = ort_loader.load_model(export_dir=fresh)  # exports MODEL_ID with export=True, saves it, then loads it
out["fresh"] = sorted(n for n in os.listdir(fresh) if n.endswith(".onnx"))
model, _ = legacy_loader.load_model()
out["legacy"] = [str(model.dtype), model.config._attn_implementation, list(legacy_loader.generate(model, **batch).shape)]
print(json.dumps(out))
"""
    proc = subprocess.run(
        [ORT_PYTHON, "-c", script],
        capture_output=True,
        text=True,
        cwd=loaders,
        timeout=300,  # type: ignore[list-item]
        env={**os.environ, "PYTHONPATH": str(loaders)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["ort"] == ["ORTModelForCausalLM", [2, 24]] and out["fresh"] == ["model.onnx"]
    assert out["legacy"] == ["torch.float32", "sdpa", [2, 24]]


def test_onnx_loader_for_a_float16_cuda_winner() -> None:
    from autotune.advisor.render import LoaderSpec, render_loader

    spec = LoaderSpec(
        model_name="org/bert",
        model_ref="org/bert",
        task="feature-extraction",
        batch_size=8,
        revision="a" * 40,
        candidate=ort(dtype="float16", placement="cuda", provider="CUDAExecutionProvider", io_binding=True),
        versions={"optimum-onnx": "0.1.0", "optimum": "2.1.0", "onnxruntime-gpu": "1.31.1", "transformers": "4.57.6", "torch": "2.13.0"},
        onnx_export=None,
    )
    source = render_loader(spec)
    compile(source, "loader.py", "exec")
    assert "from optimum.onnxruntime import ORTModelForFeatureExtraction" in source
    assert "main_export(MODEL_ID, output=export_dir, task='feature-extraction', dtype='fp16', device='cuda', revision=REVISION)" in source
    assert "USE_IO_BINDING = True" in source and "PROVIDER = 'CUDAExecutionProvider'" in source and "def forward(model" in source
    assert "# Needs: optimum-onnx==0.1.0, optimum==2.1.0, onnxruntime-gpu==1.31.1, transformers==4.57.6, torch==2.13.0" in source
