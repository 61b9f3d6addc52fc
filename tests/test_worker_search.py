"""The worker as the search drives it: largest batch first, screens, deadlines, and torch.compile's cache.

Each test starts real worker processes on a tiny model (a few seconds of imports each)."""

from __future__ import annotations

from pathlib import Path

from autotune.candidate import Candidate
from autotune.worker import WorkerRequest, launch
from autotune.worker.protocol import Screen
from autotune.workload import Workload

WORKLOAD = Workload(device="cpu", prompt_tokens=16, new_tokens=4, max_batch=4, min_quality=0.0)
FP32 = Candidate(dtype="float32", placement="cpu")


def request(path: Path, batches: tuple[int, ...], **fields: object) -> WorkerRequest:
    options = {"min_repeats": 2, "max_repeats": 3, "timeout_s": 240.0, **fields}
    return WorkerRequest(
        model_path=str(path), model_name="tiny", task="text-generation", candidate=FP32, workload=WORKLOAD, batch_sizes=batches, **options
    )  # type: ignore[arg-type]


def test_a_falling_ladder_screens_a_clear_loser_after_one_run(tiny_models: dict[str, Path]) -> None:
    screen = Screen("throughput_tokens_per_s", beat=1e9)  # nothing on a CPU comes near: screened at once
    outcome = launch(request(tiny_models["llama"], (1, 2, 4), ladder="falling", screen=screen))
    by_batch = {r.batch_size: r for r in outcome.results}
    assert [r.batch_size for r in outcome.results] == [1, 2, 4]
    assert by_batch[4].status == "screened" and by_batch[4].metrics["repeats"] == 1
    assert "screened out after one timed run" in by_batch[4].reason and "a screen, not a measurement" in by_batch[4].reason
    assert by_batch[4].metrics["throughput_tokens_per_s"] > 0 and by_batch[4].metrics["peak_memory_bytes"] > 0
    assert [by_batch[b].status for b in (1, 2)] == ["skipped", "skipped"]
    assert "screened out" in by_batch[2].reason


def test_a_falling_ladder_measures_the_largest_batch_first(tiny_models: dict[str, Path]) -> None:
    screen = Screen("throughput_tokens_per_s")  # no best yet: a contender, so it goes down while it gains
    outcome = launch(request(tiny_models["llama"], (1, 4), ladder="falling", screen=screen, fault="oom"))
    by_batch = {r.batch_size: r for r in outcome.results}
    # the injected out-of-memory hits the second size measured (batch 1): batch 4 was measured first
    assert by_batch[4].status == "ok" and by_batch[4].metrics["repeats"] >= 2
    assert by_batch[1].status == "oom"


def test_the_compile_cache_is_kept_per_environment_and_reused(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    cache = tmp_path / "compile" / "fingerprint"
    cold = launch(request(tiny_models["llama"], (1,), fault="compile", compile_cache=str(cache)))
    warm = launch(request(tiny_models["llama"], (1,), fault="compile", compile_cache=str(cache)))
    first, second = cold.results[0], warm.results[0]
    assert first.status == second.status == "ok", (first.reason, second.reason)
    assert first.details["compile_cache"]["added"] > 0 and not first.details["compile_cache"]["warm"]
    assert second.details["compile_cache"]["added"] == 0 and second.details["compile_cache"]["warm"]
    assert (cache / "inductor").is_dir() and any((cache / "inductor").rglob("*"))


def test_compile_cache_lives_under_the_data_dir_per_fingerprint(monkeypatch, tmp_path: Path) -> None:
    from autotune.environment import Environment, Gpu
    from autotune.trials import compile_cache_dir

    monkeypatch.setenv("AUTOTUNE_CACHE", str(tmp_path))
    env = Environment(gpus=(), versions={"torch": "2.13.0"})
    assert compile_cache_dir(env) == tmp_path / "compile" / env.kind_fingerprint

    def h200(index: int) -> Gpu:
        return Gpu(index=0, uuid=f"GPU-{index}", name="NVIDIA H200", total_memory=140 * 2**30, free_memory=2**30, compute_capability=(9, 0))

    # two identical GPUs (CUDA_VISIBLE_DEVICES=0 and =1): two studies, one compile cache
    first, second = (Environment(gpus=(h200(i),), versions={"torch": "2.11.0"}) for i in (0, 1))
    assert first.fingerprint != second.fingerprint and compile_cache_dir(first) == compile_cache_dir(second)
    other = Environment(gpus=(h200(0),), versions={"torch": "2.12.0"})
    assert compile_cache_dir(other) != compile_cache_dir(first)


def test_a_candidate_still_running_at_the_deadline_is_stopped_and_recorded_as_such(
    store, tiny_models: dict[str, Path], tmp_path: Path, monkeypatch
) -> None:
    from autotune.api import add_model
    from autotune.environment import probe
    from autotune.search.results import candidate_results, progress
    from autotune.trials import measure_candidate

    monkeypatch.setenv("AUTOTUNE_CACHE", str(tmp_path / "cache"))
    model = add_model(store, str(tiny_models["llama"]), {"prompt_tokens": 16, "new_tokens": 4, "device": "cpu"}).model
    environment = probe()
    environment_id = store.record_environment(environment)
    study = store.study_for(model, environment_id)
    # the reference candidate itself (fp32 sdpa on the CPU) makes its reference in the same worker, which hangs
    rows = measure_candidate(
        store,
        model,
        Candidate(dtype="float32", placement="cpu"),
        [1, 2],
        environment=environment,
        environment_id=environment_id,
        study=study,
        fault="hang",
        deadline_s=4.0,
    )
    assert [t.status for t in rows] == ["timeout", "timeout"]
    assert all(t.reason.startswith("stopped at the study's deadline") and t.details["deadline"] for t in rows)
    state = progress(store.trials(study_id=study.id), study.workload)
    assert candidate_results(rows, study.workload) == [] and state.measured == 0  # measured again with a larger budget
    assert 4.0 <= state.seconds < 60  # but its time counts against the budget
