"""measure_candidate: trial rows before the worker starts, results after, the quality reference cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from autotune.api import add_model
from autotune.candidate import Candidate
from autotune.environment import Environment, Gpu, probe
from autotune.memory import DeviceLimits
from autotune.store import Store
from autotune.trials import (
    default_placement,
    measure_candidate,
    reference_candidates,
    reference_path,
)
from autotune.workload import MemoryLimit, Workload

SMALL = {"prompt_tokens": 16, "new_tokens": 8}
FAST = {"warmup": 1, "min_repeats": 2, "max_repeats": 3, "time_cap_s": 5.0}


def gpu_env(count: int, cc: tuple[int, int] = (9, 0), total: int = 80 * 2**30) -> Environment:
    gpus = tuple(
        Gpu(index=i, uuid=f"GPU-{i}", name="H100", total_memory=total, free_memory=total, compute_capability=cc) for i in range(count)
    )
    return Environment(gpus=gpus, versions={"torch": "2.11", "transformers": "5.17", "bitsandbytes": "0.50.2"})


def setup(store: Store, path: Path, **options: object):  # type: ignore[no-untyped-def]
    model = add_model(store, str(path), {**SMALL, **options}).model
    environment = probe()
    environment_id = store.record_environment(environment)
    return model, environment, environment_id, store.study_for(model, environment_id)


def test_placement_limits_and_reference_candidates() -> None:
    cpu_only = Environment(gpus=(), versions={})
    assert default_placement(cpu_only, Workload()) == "cpu"
    assert default_placement(gpu_env(1), Workload()) == "cuda"
    assert default_placement(gpu_env(1), Workload(device="cpu")) == "cpu"
    half = MemoryLimit.parse("0.5")
    assert DeviceLimits.resolve(half, gpu_env(2), "cuda").limit_bytes == 40 * 2**30
    assert DeviceLimits.resolve(MemoryLimit.parse("20GiB"), cpu_only, "cpu", host_bytes=64 * 2**30).limit_bytes == 20 * 2**30
    assert DeviceLimits.resolve(None, gpu_env(1), "cuda").limit_bytes is None

    class Model:
        capabilities = {"attn_implementations": ["eager", "sdpa"]}

    labels = [c.label() for c in reference_candidates(Model(), cpu_only, "cpu")]  # type: ignore[arg-type]
    assert labels == ["fp32 sdpa cpu", "bf16 sdpa cpu"]
    labels = [c.label() for c in reference_candidates(Model(), gpu_env(2, cc=(7, 5)), "cuda")]  # type: ignore[arg-type]
    assert labels == ["fp32 sdpa cuda", "fp32 sdpa multi-gpu", "fp16 sdpa cuda", "fp16 sdpa multi-gpu"]


def test_rejected_candidate_is_recorded_without_a_worker(store: Store, tiny_models: dict[str, Path]) -> None:
    model, environment, environment_id, study = setup(store, tiny_models["llama"])
    spawned: list[int] = []
    trials = measure_candidate(
        store,
        model,
        Candidate(placement="cuda"),
        [1, 4],
        environment=environment,
        environment_id=environment_id,
        study=study,
        on_spawn=spawned.append,
        python="/nonexistent",
    )
    assert spawned == [] and [t.status for t in trials] == ["unsupported", "unsupported"]
    assert "no NVIDIA GPU" in trials[0].reason and trials[0].feasible is False and trials[0].details["rejected_before_load"]
    assert [t.batch_size for t in store.trials(study_id=study.id)] == [1, 4]
    with pytest.raises(Exception, match="rising order"):
        measure_candidate(
            store, model, Candidate(placement="cpu"), [4, 1], environment=environment, environment_id=environment_id, study=study
        )


def test_rows_are_running_before_the_worker_and_finished_after(
    tmp_path: Path, tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUTOTUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    with Store.open(f"sqlite:///{tmp_path / 'trials.db'}") as store:
        model, environment, environment_id, study = setup(store, tiny_models["gpt2"])
        seen: list[tuple[int, list[tuple[str, int | None]]]] = []

        def on_spawn(pid: int) -> None:
            from autotune.store.schema import TrialRow

            with store.session() as s:
                seen.append((pid, [(r.status, r.worker_pid) for r in s.query(TrialRow).order_by(TrialRow.id)]))

        reference = Candidate(dtype="float32", attn="sdpa", placement="cpu")
        trials = measure_candidate(
            store,
            model,
            reference,
            [1, 2],
            environment=environment,
            environment_id=environment_id,
            study=study,
            origin="measure",
            on_spawn=on_spawn,
            worker_options=FAST,
        )
        pid, rows = seen[0]
        assert len(seen) == 1 and rows == [("running", pid), ("running", pid)]  # one worker: it also made the reference
        assert [t.status for t in trials] == ["ok", "ok"] and all(t.origin == "measure" for t in trials)
        assert trials[1].feasible is True and trials[1].objective_value == trials[1].metrics["throughput_tokens_per_s"]
        assert (
            trials[0].metrics["quality_token_agreement"] == 1.0 and trials[0].details["reference"]["status"] == "made with this candidate"
        )
        assert trials[0].details["worker"]["returncode"] == 0 and trials[0].finished_at is not None
        assert reference_path(model, study.workload, environment, "cpu").exists()

        # A second candidate finds the cached reference (no reference worker) and goes on after an OOM.
        seen.clear()
        trials = measure_candidate(
            store,
            model,
            Candidate(dtype="bfloat16", attn="eager", placement="cpu"),
            [1, 2, 4],
            environment=environment,
            environment_id=environment_id,
            study=study,
            on_spawn=on_spawn,
            fault="oom",
            worker_options=FAST,
        )
        assert len(seen) == 1 and [t.status for t in trials] == ["ok", "oom", "skipped"]
        assert trials[0].details["reference"]["status"] == "cached" and trials[0].metrics["quality_token_agreement"] > 0
        assert trials[1].feasible is False and trials[1].objective_value is None
        assert [t.status for t in store.trials(study_id=study.id)] == ["ok", "ok", "ok", "oom", "skipped"]
        assert os.environ["AUTOTUNE_CACHE"] in trials[0].details["reference"]["path"]


def test_the_plan_of_a_candidate_s_trials_is_decided_before_anything_runs(tmp_path: Path) -> None:
    """:func:`plan_trials` is pure: the same facts give the same plan, and nothing is started or launched."""
    from search_fakes import add_model as add_fake_model
    from search_fakes import cpu_env

    from autotune.trials import plan_trials
    from autotune.worker_env import WorkerEnvironment

    with Store.open(f"sqlite:///{tmp_path / 'plan.db'}") as store:
        model = add_fake_model(store)
        environment = cpu_env()
        study = store.study_for(model, store.record_environment(environment))
        limits = DeviceLimits.resolve(None, environment, "cpu", host_bytes=64 * 2**30)
        facts = {
            "study": study,
            "environment": environment,
            "limits": limits,
            "worker_envs": None,
            "interpreters": {},
            "reference_path": "/cache/ref.pt",
            "reference_exists": False,
            "compile_cache": "/cache/compile",
        }
        reference = Candidate(dtype="float32", placement="cpu")
        plan = plan_trials(model, reference, (1, 2), **facts)
        assert plan == plan_trials(model, reference, (1, 2), **facts) and not store.trials(study_id=study.id)
        assert plan.rejected is None and plan.make_reference and plan.worker_env == "default" and plan.python is None
        assert plan.timeout_s == plan.reference_timeout_s == 300 + 150 * 2 and not plan.capped
        assert plan.request["compile_cache"] == "/cache/compile" and plan.request["ladder"] == "rising"
        # the cached reference is used by every candidate; the study's deadline cuts the worker short
        other = plan_trials(model, Candidate(dtype="bfloat16", placement="cpu"), (1,), **{**facts, "reference_exists": True}, deadline_s=30)
        assert not other.make_reference and other.capped and other.timeout_s == other.reference_timeout_s == 30
        # refused by the rules, or its worker environment's interpreter is gone: nothing will run
        assert "no NVIDIA GPU" in str(plan_trials(model, Candidate(placement="cuda"), (1,), **facts).rejected)
        ort = Candidate(dtype="float32", placement="cpu", runtime="onnxruntime", provider="CPUExecutionProvider")
        env = WorkerEnvironment("ort", "/gone/python", runtimes={"onnxruntime": ["CPUExecutionProvider"]})
        gone = plan_trials(model, ort, (1,), **{**facts, "worker_envs": [env]})
        assert gone.worker_env == "ort" and "its interpreter /gone/python is gone" in str(gone.rejected)
        there = plan_trials(model, ort, (1,), **{**facts, "worker_envs": [env], "interpreters": {"/gone/python": True}})
        assert there.rejected is None and there.python == "/gone/python" and there.request["compile_cache"] is None
        assert there.timeout_s == 300 + 150 + 1800
