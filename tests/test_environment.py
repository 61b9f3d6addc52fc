"""The environment probe, on this GPU-less machine and against a stand-in NVML."""

from __future__ import annotations

import json
import sys
import types

import pytest

from autotune import environment
from autotune.environment import Environment, probe


def test_cpu_only_here_is_reported_not_raised(cli) -> None:  # type: ignore[no-untyped-def]
    env = probe()
    if env.gpus:
        pytest.skip("this machine has a GPU")
    assert env.cpu_only and env.nvml_error
    result = cli("gpus")
    assert result.code == 0
    assert result.out.splitlines()[0].endswith("CPU-only environment")
    data = json.loads(cli("gpus", "--json").out)
    assert data["cpu_only"] is True and data["gpus"] == [] and data["fingerprint"] == env.fingerprint
    assert set(data["versions"]) >= {"torch", "transformers", "accelerate", "bitsandbytes", "flash-attn", "optimum", "onnxruntime"}


def _fake_nvml(count: int, cc: tuple[int, int] = (9, 0)) -> types.ModuleType:
    nvml = types.ModuleType("pynvml")

    class NVMLError(Exception):
        pass

    nvml.NVMLError = NVMLError
    nvml.nvmlInit = lambda: None
    nvml.nvmlShutdown = lambda: None
    nvml.nvmlSystemGetDriverVersion = lambda: "580.159.04"
    nvml.nvmlSystemGetCudaDriverVersion = lambda: 13000
    nvml.nvmlDeviceGetCount = lambda: count
    nvml.nvmlDeviceGetHandleByIndex = lambda i: i
    nvml.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(total=85_520_809_984, free=84_000_000_000, used=1)
    nvml.nvmlDeviceGetPciInfo = lambda h: types.SimpleNamespace(busId=f"00000000:{h:02d}:00.0")
    nvml.nvmlDeviceGetUUID = lambda h: f"GPU-{h:08d}"
    nvml.nvmlDeviceGetName = lambda h: b"NVIDIA H100 80GB HBM3"
    nvml.nvmlDeviceGetCudaComputeCapability = lambda h: cc
    return nvml


def test_gpus_through_nvml_and_fingerprint(monkeypatch: pytest.MonkeyPatch, cli) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setitem(sys.modules, "pynvml", _fake_nvml(2))
    one = probe()
    assert [g.uuid for g in one.gpus] == ["GPU-00000000", "GPU-00000001"]
    assert one.driver_version == "580.159.04" and one.cuda_driver_version == "13.0"
    assert one.gpus[0].supports(one.versions)["bf16"] == "yes"
    assert one.gpus[0].supports({**one.versions, "flash-attn": None})["flash_attention"].startswith("hardware yes")
    assert one.gpus[0].supports({**one.versions, "flash-attn-4": None}, "13.0")["flash_attention_4"] == (
        "hardware yes; package flash-attn-4 not installed (pip install 'flash-attn-4[cu13]', which brings nvidia-cutlass-dsl "
        "with its CUDA 13 libraries)"
    )
    assert one.gpus[0].supports({**one.versions, "flash-attn-4": "4.0.0b36"})["flash_attention_4"] == "yes"
    assert "flash-attn-4" in one.versions and "nvidia-cutlass-dsl" in one.versions  # in the fingerprint
    text = cli("gpus").out
    assert "NVIDIA H100 80GB HBM3" in text and "9.0" in text and "GPU-00000001" in text
    assert "FA4" in text.splitlines()[1] and "flash_attention_4: hardware yes; package flash-attn-4 not installed" in text
    again = Environment.from_dict(one.to_dict())
    assert again.fingerprint == one.fingerprint

    monkeypatch.setitem(sys.modules, "pynvml", _fake_nvml(1))
    assert probe().fingerprint != one.fingerprint  # a GPU removed
    monkeypatch.setitem(sys.modules, "pynvml", _fake_nvml(2))
    monkeypatch.setattr(environment, "installed_versions", lambda: {**one.versions, "transformers": "9.9.9"})
    assert probe().fingerprint != one.fingerprint  # a library upgraded


def test_only_the_gpus_cuda_will_use(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", _fake_nvml(4))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2")
    pinned = probe()
    assert [(g.index, g.uuid) for g in pinned.gpus] == [(2, "GPU-00000002")]  # NVML's index, CUDA's order
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,GPU-00000001")
    assert [g.index for g in probe().gpus] == [3, 1]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert probe().cpu_only
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert len(probe().gpus) == 4 and probe().fingerprint != pinned.fingerprint
    uuids = [f"GPU-{i:08d}" for i in range(4)]
    assert environment.visible_order(uuids, "1,7,2") == [1]  # CUDA stops at the first GPU it cannot find
    assert environment.visible_order(uuids, "-1") == []
    assert environment.visible_order(uuids, "GPU-00000003") == [3]


def test_old_gpu_support_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", _fake_nvml(1, cc=(7, 0)))
    gpu = probe().gpus[0]
    supports = gpu.supports({"bitsandbytes": "0.50.2", "flash-attn": "2.8.3"})
    assert supports["bf16"].startswith("no") and supports["flash_attention"].startswith("no")
    assert supports["flash_attention_4"] == (
        "no: compute capability 7.0; flash-attn-4 runs on compute capability 9.x (Hopper) or 10.x (Blackwell)"
    )
    assert supports["bitsandbytes"].startswith("4-bit only") and supports["fp8"].startswith("no")
