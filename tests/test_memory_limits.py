"""One memory limit on mixed GPUs: what the search admits, what the trials judge against, what the
worker is given, what the recommendation holds and what the written loader says, all the same.

The machine is faked (an 80 GiB and a 24 GiB GPU, or three GPUs); the worker is a stand-in that
records its request and reports per-GPU peaks, as the real one does in ``details["memory_per_gpu"]``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from search_fakes import LLAMA_CAPS, add_model

from autotune.advisor.recommend import loader_spec, recommend
from autotune.advisor.render import render_loader
from autotune.candidate import Candidate
from autotune.environment import Environment, Gpu
from autotune.memory import DeviceLimits
from autotune.objective import score
from autotune.search.space import build_space, forecast_peaks
from autotune.store import Store
from autotune.trials import measure_candidate
from autotune.worker import BatchResult, WorkerOutcome
from autotune.workload import MemoryLimit, Workload

GiB = 2**30
LLAMA_8B = {
    "model_type": "llama",
    "architectures": ["LlamaForCausalLM"],
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
    "tie_word_embeddings": False,
    "dtype": "bfloat16",
}
VERSIONS = {"torch": "2.11.0", "transformers": "5.17.0", "accelerate": "1.15.0", "bitsandbytes": "0.50.2"}


def machine(*sizes: int) -> Environment:
    names = {80: "NVIDIA H100 80GB HBM3", 24: "NVIDIA L4"}
    gpus = tuple(
        Gpu(
            index=i,
            uuid=f"GPU-{i}",
            name=names.get(size, f"GPU {size} GiB"),
            total_memory=size * GiB,
            free_memory=size * GiB,
            compute_capability=(9, 0) if size == 80 else (8, 9),
        )
        for i, size in enumerate(sizes)
    )
    return Environment(gpus=gpus, versions=VERSIONS, driver_version="580.159.04", cuda_driver_version="13.0", hostname="mixed")


def test_each_gpu_gets_its_own_share_and_no_limit_means_each_gpus_memory() -> None:
    env = machine(80, 24)
    half = MemoryLimit.parse("0.5")
    single = DeviceLimits.resolve(half, env, "cuda")
    assert single.to_dict() == {"cuda:0": 40 * GiB} and single.max_memory() is None  # a one-GPU candidate runs on cuda:0
    spread = DeviceLimits.resolve(half, env, "multi-gpu")
    assert spread.to_dict() == {"cuda:0": 40 * GiB, "cuda:1": 12 * GiB}
    assert spread.max_memory() == {0: 40 * GiB, 1: 12 * GiB} and spread.limit_bytes == 12 * GiB
    assert spread.describe() == "40.00 GiB on cuda:0, 12.00 GiB on cuda:1"
    fixed = DeviceLimits.resolve(MemoryLimit.parse("30GiB"), env, "multi-gpu")
    assert fixed.to_dict() == {"cuda:0": 30 * GiB, "cuda:1": 24 * GiB}  # an absolute limit, at most each GPU's memory
    free = DeviceLimits.resolve(None, env, "multi-gpu")
    assert not free.limited and free.max_memory() is None
    assert [d.admission_bytes for d in free.devices] == [80 * GiB, 24 * GiB]  # the search still holds each GPU's memory
    three = DeviceLimits.resolve(half, machine(80, 80, 24), "multi-gpu")
    assert three.max_memory() == {0: 40 * GiB, 1: 40 * GiB, 2: 12 * GiB}
    cpu = DeviceLimits.resolve(half, env, "cpu", host_bytes=64 * GiB)
    assert cpu.to_dict() == {"cpu": 32 * GiB}  # on the CPU, a fraction is of the host's memory
    unknown = DeviceLimits.resolve(half, env, "cpu", host_bytes=0)
    assert unknown.limit_bytes is None and "not applied on the CPU" in (unknown.note or "")


def test_feasibility_holds_each_gpus_peak_against_its_own_limit() -> None:
    workload = Workload(max_memory=MemoryLimit.parse("0.5"))
    spread = DeviceLimits.resolve(workload.max_memory, machine(80, 24), "multi-gpu")
    within = {"memory_per_gpu": {"cuda:0": {"nvml_used": 30 * GiB}, "cuda:1": {"nvml_used": 11 * GiB}}}
    metrics = {"peak_memory_bytes": 30 * GiB, "throughput_tokens_per_s": 100.0}
    assert score(workload, "ok", metrics, spread, within).feasible  # 30 GiB is over 12 GiB, but it is on the 80 GiB GPU
    over = {"memory_per_gpu": {"cuda:0": {"nvml_used": 30 * GiB}, "cuda:1": {"nvml_used": 13 * GiB}}}
    verdict = score(workload, "ok", metrics, spread, over)
    assert not verdict.feasible and verdict.reasons == ("peak 13.00 GiB on cuda:1 over the limit 12.00 GiB",)
    assert abs(spread.excess(metrics, over) - 1 / 12) < 1e-9
    # without per-GPU figures the trial's peak (its fullest GPU) is held against the smallest limit
    assert not score(workload, "ok", metrics, spread, {}).feasible


class Worker:
    """Stands in for the trial worker: records each request, reports each GPU's peak."""

    def __init__(self, peaks: dict[int, list[int]]) -> None:
        self.requests: list[Any] = []
        self.peaks = peaks  # batch size -> the peak of each GPU

    def __call__(self, request: Any, **_: Any) -> WorkerOutcome:
        self.requests.append(request)
        if request.make_reference:
            Path(request.reference_path).parent.mkdir(parents=True, exist_ok=True)
            Path(request.reference_path).write_bytes(b"reference")
        results = []
        for batch in request.expected_batches:
            per_gpu = self.peaks.get(batch, [GiB])
            metrics = {
                "peak_memory_bytes": max(per_gpu),
                "throughput_tokens_per_s": 100.0 * max(batch, 1),
                "latency_p50_ms": 50.0,
                "ttft_ms": 5.0,
                "quality_token_agreement": 1.0,
            }
            details = {"memory_per_gpu": {f"cuda:{i}": {"nvml_used": peak} for i, peak in enumerate(per_gpu)}}
            results.append(BatchResult("ok", None, batch, metrics, {"attn_implementation": "sdpa"}, details))
        return WorkerOutcome(tuple(results), 0, False, 4242, 1.0, "")


@pytest.mark.parametrize("sizes", [(80, 24), (80, 80, 24)])
def test_mixed_gpus_one_limit_from_the_search_to_the_written_loader(  # type: ignore[no-untyped-def]
    store: Store, tmp_path, monkeypatch, sizes
) -> None:
    monkeypatch.setenv("AUTOTUNE_CACHE", str(tmp_path / "cache"))
    env = machine(*sizes)
    workload = Workload(max_memory=MemoryLimit.parse("0.5"), prompt_tokens=512, new_tokens=128, max_batch=4)
    shares = {i: (size // 2) * GiB for i, size in enumerate(sizes)}
    spread_limits = DeviceLimits.resolve(workload.max_memory, env, "multi-gpu")

    # the search: one GPU is held against cuda:0's share (16 GB of bf16 fit 40 GiB, not 12 GiB);
    # spread, each GPU's forecast against its own share
    space = build_space(LLAMA_8B, LLAMA_CAPS, workload, env)
    assert Candidate(dtype="bfloat16") in space
    spread = Candidate(dtype="bfloat16", placement="multi-gpu")
    assert spread in space
    peaks = forecast_peaks(LLAMA_8B, spread, workload, 1, spread_limits, env)
    assert len(peaks) == len(sizes) and all(peak <= shares[i] for i, peak in enumerate(peaks))
    assert not [
        r
        for r in space.rejected
        if r.kind == "memory" and r.candidate is not None and r.candidate.quant == "none" and r.candidate.dtype == "bfloat16"
    ]

    # the trials: the worker gets each GPU's share as max_memory; each GPU's peak is judged against its own
    model = add_model(store, "org/llama-8b", workload, config=LLAMA_8B)
    env_id = store.record_environment(env)
    study = store.study_for(model, env_id)
    last = len(sizes) - 1
    worker = Worker({1: [30 * GiB] + [11 * GiB] * last, 2: [30 * GiB] + [13 * GiB] * last})
    monkeypatch.setattr("autotune.worker.launch", worker)
    trials = measure_candidate(store, model, spread, [1, 2], environment=env, environment_id=env_id, study=study, limits=spread_limits)
    assert worker.requests[-1].max_memory == shares
    fits, over = trials
    assert fits.feasible and not over.feasible
    assert over.details["infeasible"] == [f"peak 13.00 GiB on cuda:{last} over the limit 12.00 GiB"]
    assert fits.details["memory_limits"] == {f"cuda:{i}": share for i, share in shares.items()}
    assert fits.details["memory_limit_bytes"] == 12 * GiB

    # the recommendation and the loader: max_memory as the trial ran with it
    rec = recommend(store, model, current=env)
    assert rec.best is not None and rec.best.id == fits.id
    assert rec.limits is not None and rec.limits.to_dict() == fits.details["memory_limits"]
    spec = loader_spec(rec)
    expected = {i: f"{share // 2**20}MiB" for i, share in shares.items()}
    assert spec.max_memory == expected and expected[0] == "40960MiB" and expected[last] == "12288MiB"
    assert f"MAX_MEMORY = {expected!r}" in render_loader(spec)
