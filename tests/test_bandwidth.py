"""The memory-bandwidth floor of decoding (issue 24): each GPU's bandwidth from NVIDIA's
datasheets or NVML's bus width and memory clock, and the winner's decode step shown against
the floor its weights set, in ``recommend`` (text and JSON) and the report."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from test_recommend import GPU_ENV, H100, register

from autotune.bandwidth import Bandwidth, decode_step_ms, floor_ms, memory_bandwidth
from autotune.candidate import Candidate
from autotune.environment import Environment, Gpu
from autotune.store import Store

GiB = 2**30


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("NVIDIA H100 80GB HBM3", 3.35e12),
        ("NVIDIA H100 PCIe", 2.0e12),
        ("NVIDIA H200", 4.8e12),
        ("NVIDIA A100-SXM4-80GB", 2.039e12),
        ("NVIDIA A100-SXM4-40GB", 1.555e12),
        ("NVIDIA L4", 300e9),
    ],
)
def test_datasheet_bandwidths(name: str, expected: float) -> None:
    got = memory_bandwidth(replace(H100, name=name))
    assert got is not None and got.bytes_per_s == expected and got.source.startswith("NVIDIA's datasheet")


def test_nvml_bus_width_and_clock_for_other_gpus() -> None:
    # NVML reports an H100 SXM's 5120-bit bus at 2619 MHz: the formula gives its datasheet's 3.35 TB/s
    other = replace(H100, name="NVIDIA Future GPU", memory_bus_width=5120, max_memory_clock_mhz=2619)
    got = memory_bandwidth(other)
    assert got is not None and got.bytes_per_s == pytest.approx(3.352e12, rel=1e-3) and got.source == "NVML: 5120-bit bus at 2619 MHz"
    assert memory_bandwidth(replace(H100, name="NVIDIA Future GPU")) is None  # recorded before NVML's figures were read
    # the new fields survive the store's round trip, and leave the fingerprint alone
    env = replace(GPU_ENV, gpus=(other,))
    assert (
        Environment.from_dict(env.to_dict()).gpus[0] == other
        and env.fingerprint == replace(GPU_ENV, gpus=(replace(other, memory_bus_width=None),)).fingerprint
    )


def test_floor_and_step() -> None:
    # issue 24's figure: a Llama-3-8B's 16 GB of bf16 weights on an H100 is 4.8 ms a token
    assert floor_ms(16_000_000_000, Bandwidth(3.35e12, "datasheet")) == pytest.approx(4.776, abs=1e-3)
    assert decode_step_ms({"decode_tokens_per_s": 100.0}, 1) == 10.0 and decode_step_ms({"decode_tokens_per_s": 1600.0}, 16) == 10.0
    assert decode_step_ms({}, 1) is None


def test_recommend_shows_the_winner_against_the_floor(cli, store_url, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("AUTOTUNE_DB", store_url)
    winner = Candidate(dtype="bfloat16", attn="sdpa", quant="torchao-int8wo", static_cache=True)
    with Store.open(store_url) as store:
        model = register(store)
        study = store.study_for(model, store.record_environment(GPU_ENV))
        metrics = {"throughput_tokens_per_s": 150.0, "decode_tokens_per_s": 160.0, "latency_p50_ms": 850.0, "peak_memory_bytes": 10 * GiB}
        metrics["quality_token_agreement"] = 0.97
        effective = {"weights_bytes": 9_000_000_000, "quantized_layers": 224}
        store.record_trial(study.id, winner, 1, "ok", metrics=metrics, effective=effective)
    out = cli("recommend", "org/llama", "--no-code").out
    # 9.00 GB at 3.35 TB/s is 2.69 ms; 160 tok/s at batch 1 is 6.25 ms a step
    line = "decode 6.25 ms a step at batch 1, against a memory-bandwidth floor of 2.69 ms (9.00 GB of weights at 3.35 TB/s"
    assert line in out and "43% of the limit" in out, out
    doc = json.loads(cli("recommend", "org/llama", "--json").out)
    roof = doc["roofline"]
    assert roof["floor_ms_per_step"] == pytest.approx(9e9 / 3.35e12 * 1e3) and roof["decode_ms_per_step"] == pytest.approx(6.25)
    assert roof["bandwidth_source"] == "NVIDIA's datasheet for H100" and roof["share_of_limit"] == pytest.approx(2.6866 / 6.25, rel=1e-3)


def test_no_floor_on_the_cpu(cli, store_url, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("AUTOTUNE_DB", store_url)
    cpu_env = Environment(gpus=(), versions=dict(GPU_ENV.versions), hostname="ci")
    with Store.open(store_url) as store:
        model = register(store, device="cpu")
        study = store.study_for(model, store.record_environment(cpu_env))
        metrics = {"throughput_tokens_per_s": 50.0, "decode_tokens_per_s": 60.0, "latency_p50_ms": 300.0, "quality_token_agreement": 1.0}
        store.record_trial(
            study.id, Candidate(dtype="float32", placement="cpu"), 1, "ok", metrics=metrics, effective={"weights_bytes": 10**6}
        )
    out = cli("recommend", "org/llama", "--no-code").out
    assert "fp32 sdpa cpu at batch 1" in out and "memory-bandwidth floor" not in out
    assert json.loads(cli("recommend", "org/llama", "--json").out)["roofline"] is None


def test_a_gpu_record_without_nvml_figures_reads_back(tmp_path) -> None:  # type: ignore[no-untyped-def]
    data = GPU_ENV.to_dict()
    for gpu in data["gpus"]:
        gpu.pop("memory_bus_width"), gpu.pop("max_memory_clock_mhz")
    assert Environment.from_dict(data).gpus[0] == Gpu(0, "GPU-0000", "NVIDIA H100 80GB HBM3", 80 * GiB, 79 * GiB, (9, 0))


def test_the_report_shows_the_floor(store: Store, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from autotune.report import write_report

    model = register(store)
    study = store.study_for(model, store.record_environment(GPU_ENV))
    metrics = {"throughput_tokens_per_s": 120.0, "decode_tokens_per_s": 125.0, "latency_p50_ms": 1000.0, "quality_token_agreement": 1.0}
    metrics["peak_memory_bytes"] = 17 * GiB
    candidate = Candidate(dtype="bfloat16", attn="sdpa", static_cache=True)
    store.record_trial(study.id, candidate, 1, "ok", metrics=metrics, effective={"weights_bytes": 16_060_000_000})
    html = write_report(store, tmp_path / "r.html").read_text()
    # 16.06 GB at 3.35 TB/s: 4.79 ms; 125 tok/s at batch 1: 8.00 ms a step
    assert "decode 8.00 ms a step at batch 1, against a memory-bandwidth floor of 4.79 ms (16.06 GB of weights at 3.35 TB/s" in html
    assert "60% of the limit" in html
