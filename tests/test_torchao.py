"""torchao and fine-grained FP8 as quantization candidates (issue 24): the axis values and their
keys, the validity rules with their reasons, the space that offers them only where torchao is
installed, the memory forecast of each layout, the rendered loaders, and torchao's int8
weight-only measured and read back on the CPU (float8 weight-only too: torchao 0.18 runs it on
the CPU; int4 weight-only and float8 activations need CUDA)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from search_fakes import CPU_WORKLOAD, LLAMA_CAPS, TINY_LLAMA, cpu_env, gpu_env

from autotune import axes
from autotune.advisor.render import render_loader, requirements
from autotune.candidate import Candidate, rejection
from autotune.environment import Environment
from autotune.errors import InputError
from autotune.memory.forecast import forecast_parts
from autotune.memory.shape import model_shape
from autotune.search.space import build_space, params_of, parse_restriction
from autotune.worker import WorkerRequest, launch
from autotune.workload import Workload

TORCHAO = {"torchao": "0.18.0"}
GPU_WORKLOAD = Workload(prompt_tokens=16, new_tokens=8, max_batch=4)
FAST = dict(warmup=1, min_repeats=2, max_repeats=3, time_cap_s=5.0, timeout_s=600.0)
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def gpu(cc: tuple[int, int], name: str = "NVIDIA H100 80GB HBM3", **versions: str | None) -> Environment:
    env = gpu_env(1, **{**TORCHAO, **versions})
    return replace(env, gpus=(replace(env.gpus[0], compute_capability=cc, name=name),))


def ao(quant: str, dtype: str = "bfloat16", placement: str = "cuda", **fields: object) -> Candidate:
    group = fields.pop("group_size", None)
    extra = (("group_size", group),) if group is not None else ()
    return Candidate(dtype=dtype, attn="sdpa", quant=quant, placement=placement, extra=extra, **fields)  # type: ignore[arg-type]


# -- the axis -----------------------------------------------------------------------------------


def test_quant_values_labels_and_keys() -> None:
    assert axes.QUANTS[:4] == ("none", "bnb-8bit", "bnb-4bit-nf4", "bnb-4bit-fp4")  # the existing values, in their order
    assert set(axes.TORCHAO_QUANTS) < set(axes.QUANTS) and "fp8-fine" in axes.QUANTS
    # the group size lives beside the fields: off its default it is in the key, at it the key is as before
    assert (
        Candidate(quant="bnb-8bit", dtype="float16").key()
        == Candidate.from_dict(Candidate(quant="bnb-8bit", dtype="float16").to_dict()).key()
    )
    g128, g64 = ao("torchao-int4wo"), ao("torchao-int4wo", group_size=64)
    assert g128.extra == () and g64.extra == (("group_size", 64),) and g128.key() != g64.key()
    assert ao("torchao-int4wo", group_size=128).key() == g128.key()
    assert g64.label() == "bf16 sdpa ao-int4wo-g64 cuda" and g128.label() == "bf16 sdpa ao-int4wo-g128 cuda"
    assert ao("torchao-int8wo", static_cache=True).label() == "bf16 sdpa ao-int8wo cuda static"
    assert ao("torchao-float8dq").label() == "bf16 sdpa ao-fp8dq cuda"
    assert g64.measure_args() == "--dtype bf16 --placement cuda --attn sdpa --quant torchao-int4wo --group-size 64"
    # the sampler sees the group size folded into the quantization, and reads it back
    assert params_of(g64)["quant"] == "torchao-int4wo[g64]" and params_of(ao("torchao-int8wo"))["quant"] == "torchao-int8wo"
    assert axes.axis("quant").fields_of("torchao-int4wo[g32]") == {"quant": "torchao-int4wo", "group_size": 32}
    # a group size means nothing without int4 weight-only: the canonical form drops it
    assert axes.canonical({"quant": "torchao-int8wo", "group_size": 32})["group_size"] == 128
    with pytest.raises(InputError, match="unknown group_size 48: choose one of 128, 64, 32"):
        ao("torchao-int4wo", group_size=48)
    with pytest.raises(InputError, match="unknown quantization 'torchao-int2'"):
        Candidate(quant="torchao-int2")
    assert axes.axis("quant").option(g64.to_dict()) == "torchao int4 weight-only (group size 64)"


def test_space_restrictions_read_the_new_values() -> None:
    assert parse_restriction("quant=torchao-int4wo,none")["quant"] == ("torchao-int4wo", "none")
    assert parse_restriction("quant=torchao-int4wo[g64]")["quant"] == ("torchao-int4wo[g64]",)
    assert axes.quant_allowed("torchao-int4wo[g32]", ("torchao-int4wo",)) and not axes.quant_allowed(
        "torchao-int4wo[g32]", ("torchao-int4wo[g64]",)
    )
    for bad, message in (
        ("quant=torchao-int3wo", "space restriction quant=torchao-int3wo: choose among none, bnb-8bit"),
        ("quant=torchao-int8wo[g64]", "torchao-int4wo\\[gN\\] with N one of 128, 64, 32"),
        ("quant=torchao-int4wo[g48]", "space restriction quant=torchao-int4wo\\[g48\\]"),
    ):
        with pytest.raises(InputError, match=message):
            parse_restriction(bad)


# -- the rules ----------------------------------------------------------------------------------

H100 = gpu((9, 0))
A100 = gpu((8, 0), "NVIDIA A100-SXM4-80GB")


@pytest.mark.parametrize(
    ("candidate", "environment", "reason"),
    [
        (ao("torchao-int8wo"), gpu_env(1), "torchao-int8wo: package torchao is not installed (pip install 'autotune[torchao]')"),
        (ao("torchao-int8wo"), gpu((9, 0), torchao="0.17.0"), "torchao-int8wo: torchao 0.17.0 is older than 0.18"),
        (
            ao("torchao-int8wo"),
            gpu((9, 0), torch="2.9.1"),
            "torchao-int8wo: torchao 0.18.0 pairs with torch 2.11 or newer, and torch here is 2.9.1",
        ),
        (ao("torchao-int4wo", placement="cpu"), cpu_env(**TORCHAO), "torchao-int4wo: int4 weight-only runs on CUDA"),
        (ao("torchao-float8dq", placement="cpu"), cpu_env(**TORCHAO), "torchao-float8dq: float8 activations need float8 matmuls"),
        (
            ao("torchao-float8wo"),
            A100,
            "torchao-float8wo: float8 needs compute capability 8.9 or newer (Ada, Hopper), and GPU 0 (NVIDIA A100-SXM4-80GB) has 8.0",
        ),
        (ao("torchao-float8dq"), A100, "torchao-float8dq: float8 needs compute capability 8.9"),
        (
            ao("torchao-int4wo", dtype="float16"),
            H100,
            "torchao-int4wo: its kernels take bfloat16 activations; load it with dtype bfloat16, not float16",
        ),
        (ao("fp8-fine", placement="cpu"), cpu_env(kernels="0.11.0"), "fp8-fine: Transformers' fine-grained FP8 runs only on a GPU"),
        (ao("fp8-fine"), H100, "fp8-fine: Transformers' FP8 linear layers load their kernel through the package kernels"),
        (ao("fp8-fine"), gpu((8, 0), kernels="0.11.0"), "fp8-fine: float8 needs compute capability 8.9"),
        (ao("torchao-int8wo", group_size=64), H100, "a group size applies only to torchao-int4wo"),
    ],
)
def test_rules_say_why(candidate: Candidate, environment: Environment, reason: str) -> None:
    got = rejection(candidate, environment, LLAMA_CAPS)
    assert got is not None and got.startswith(reason), got


def test_what_may_run() -> None:
    for candidate, environment in (
        (ao("torchao-int8wo", dtype="float32", placement="cpu"), cpu_env(**TORCHAO)),
        (ao("torchao-float8wo", placement="cpu"), cpu_env(**TORCHAO)),
        (ao("torchao-int8wo", static_cache=True), A100),  # the static cache compiles torchao's kernels
        (ao("torchao-int4wo", group_size=32, static_cache=True), A100),
        (ao("torchao-float8dq", static_cache=True), H100),
        (ao("fp8-fine"), gpu((9, 0), kernels="0.11.0")),
    ):
        assert rejection(candidate, environment, LLAMA_CAPS, GPU_WORKLOAD) is None, candidate.label()
    gpt2 = {"architecture": "GPT2LMHeadModel", "attn_implementations": ["eager", "sdpa"]}
    assert rejection(ao("torchao-int8wo"), H100, gpt2) == (
        "torchao-int8wo: GPT2LMHeadModel's projections are Conv1D layers, which it leaves unconverted (it quantizes nn.Linear): "
        "nothing would be quantized"
    )
    gguf = {**LLAMA_CAPS, "gguf_file": "model.gguf"}
    assert "Transformers refuses a quantization_config with gguf_file" in (rejection(ao("torchao-int8wo"), H100, gguf) or "")


def test_the_space_offers_torchao_only_where_it_is_installed() -> None:
    without = build_space(TINY_LLAMA, LLAMA_CAPS, GPU_WORKLOAD, gpu_env(1))
    assert not any(c.is_torchao for c in without.candidates)
    assert not any("torchao" in r.reason for r in without.rejected)  # left out as ONNX Runtime is without an environment
    space = build_space(TINY_LLAMA, LLAMA_CAPS, GPU_WORKLOAD, H100)
    labels = {c.label() for c in space.candidates}
    for label in (
        "bf16 sdpa ao-int8wo cuda static",
        "bf16 sdpa ao-int4wo-g32 cuda static",
        "bf16 sdpa ao-int4wo-g64 cuda",
        "bf16 sdpa ao-int4wo-g128 cuda static",
        "bf16 sdpa ao-fp8wo cuda static",
        "bf16 sdpa ao-fp8dq cuda static",
        "fp32 sdpa ao-int8wo cuda",
    ):
        assert label in labels, label
    assert "torchao-int4wo[g32]" in space.choices["quant"] and "fp8-fine" not in space.choices["quant"]
    reasons = {r.reason for r in space.rejected}
    assert any(r.startswith("torchao-int4wo: its kernels take bfloat16 activations") for r in reasons)
    # an A100 keeps int8 and int4 and says why float8 is out
    a100 = build_space(TINY_LLAMA, LLAMA_CAPS, GPU_WORKLOAD, A100)
    assert not any(c.quant in axes.FLOAT8_QUANTS for c in a100.candidates)
    assert any("float8 needs compute capability 8.9" in r.reason for r in a100.rejected)
    # the CPU: int8 and float8 weight-only, int4 refused with its reason
    cpu = build_space(TINY_LLAMA, LLAMA_CAPS, CPU_WORKLOAD, cpu_env(**TORCHAO))
    assert {c.quant for c in cpu.candidates} >= {"torchao-int8wo", "torchao-float8wo"}
    assert any(r.reason.startswith("torchao-int4wo: int4 weight-only runs on CUDA") for r in cpu.rejected)
    restricted = build_space(TINY_LLAMA, LLAMA_CAPS, GPU_WORKLOAD, H100, restrict=parse_restriction("quant=torchao-int4wo[g64]"))
    assert {params_of(c)["quant"] for c in restricted.candidates} == {"torchao-int4wo[g64]"}


# -- the forecast -------------------------------------------------------------------------------


def test_the_forecast_counts_each_layout() -> None:
    shape = model_shape(TINY_LLAMA, "text-generation")
    layers = shape.quantizable  # (weights, output rows) of the 14 projections (lm_head and the embedding stay)
    assert len(layers) == 14
    elements = sum(e for e, _ in layers)
    rows = sum(r for _, r in layers)
    plain, _ = shape.weight_bytes("bfloat16")
    rest = plain - 2 * elements  # the embedding, the head and the norms, in bf16
    assert shape.weight_bytes("bfloat16", "torchao-int8wo") == (rest + elements, 4 * rows)
    assert (
        shape.weight_bytes("bfloat16", "torchao-float8wo")
        == shape.weight_bytes("bfloat16", "torchao-float8dq")
        == (rest + elements, 4 * rows)
    )
    # int4: half a byte a weight, a bf16 scale and zero point per group
    assert shape.weight_bytes("bfloat16", "torchao-int4wo", group_size=32) == (rest + elements // 2, elements // 32 * 4)
    assert shape.weight_bytes("bfloat16", "torchao-int4wo", group_size=128)[1] == elements // 128 * 4
    # fine-grained FP8: one fp32 scale per 128 x 128 block (every projection here is one block)
    assert shape.weight_bytes("bfloat16", "fp8-fine") == (rest + elements, 14 * 4)
    forecast = forecast_parts(TINY_LLAMA, ao("torchao-int4wo", group_size=64), GPU_WORKLOAD, 1)
    assert forecast.parts["weights"] == rest + elements // 2 and forecast.parts["quant_state"] == elements // 64 * 4


# -- the loader ---------------------------------------------------------------------------------


def _spec(candidate: Candidate, versions: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    from datetime import datetime, timezone

    from autotune.advisor.render import LoaderSpec

    return LoaderSpec(
        model_ref="org/model",
        task="text-generation",
        candidate=candidate,
        batch_size=1,
        new_tokens=4,
        prompt_tokens=16,
        versions=versions or {"torch": "2.11.0", "transformers": "5.17.0", "accelerate": "1.15.0", "torchao": "0.18.0"},
        measured={"throughput_tokens_per_s": 100.0},
        summary="throughput 100.0 tok/s",
        measured_at=datetime(2026, 1, 2, tzinfo=timezone.utc),
        model_name="org/model",
        measured_on="one H100",
    )


@pytest.mark.parametrize(
    ("candidate", "imports", "config"),
    [
        (ao("torchao-int8wo"), "from torchao.quantization import Int8WeightOnlyConfig", "TorchAoConfig(quant_type=Int8WeightOnlyConfig())"),
        (
            ao("torchao-int4wo", group_size=64),
            "from torchao.quantization import Int4WeightOnlyConfig",
            "TorchAoConfig(quant_type=Int4WeightOnlyConfig(group_size=64, int4_packing_format='tile_packed_to_4d'))",
        ),
        (
            ao("torchao-float8wo"),
            "from torchao.quantization import Float8WeightOnlyConfig",
            "TorchAoConfig(quant_type=Float8WeightOnlyConfig())",
        ),
        (
            ao("torchao-float8dq"),
            "from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow",
            "TorchAoConfig(quant_type=Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()))",
        ),
        (ao("fp8-fine"), "from transformers import AutoModelForCausalLM, FineGrainedFP8Config", "FineGrainedFP8Config()"),
    ],
)
def test_loaders_build_the_config_objects(candidate: Candidate, imports: str, config: str) -> None:
    source = render_loader(_spec(candidate))
    compile(source, "loader.py", "exec")
    assert imports in source and f"quantization_config = {config}" in source
    assert "quantization_config=quantization_config," in source and "BitsAndBytesConfig" not in source
    pins = requirements(_spec(candidate))
    assert ("torchao==0.18.0" in pins) == candidate.is_torchao and "bitsandbytes" not in " ".join(pins)
    assert ("kernels" in pins) == (candidate.quant == "fp8-fine")


# -- measured on the CPU ------------------------------------------------------------------------


def test_int8_weight_only_is_measured_read_back_and_its_loader_runs_on_the_cpu(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    """torchao's int8 weight-only on a tiny Llama in a worker: every projection holds an
    ``Int8Tensor``, the head stays by design, the weights' bytes are the forecast's, and the
    rendered loader loads the same layers in a fresh process."""
    from autotune.worker.backends._base import OptionNotInEffect
    from autotune.worker.loading import check_effective

    path = tiny_models["llama"]
    candidate = ao("torchao-int8wo", dtype="bfloat16", placement="cpu")
    request = WorkerRequest(
        model_path=str(path),
        model_name="llama",
        task="text-generation",
        candidate=candidate,
        workload=Workload(prompt_tokens=16, new_tokens=8),
        batch_sizes=(1,),
        **FAST,  # type: ignore[arg-type]
    )
    outcome = launch(request, env=ENV)
    result = outcome.results[0]
    assert result.status == "ok", (result.reason, outcome.stderr_tail[-2000:])
    eff = result.effective
    assert eff["quantized_layers"] == 14 and eff["quant_types"] == {"Int8Tensor": 14} and eff["kept_unquantized"] == ["lm_head"]
    assert eff["unquantized_layers"] == 0 and eff["dtype"] == "bfloat16" and eff["versions"]["torchao"].startswith("0.18")
    assert eff["from_pretrained"]["quantization_config"].startswith("TorchAoConfig(quant_type=Int8WeightOnlyConfig(")
    config = json.loads((path / "config.json").read_text())
    forecast = forecast_parts(config, candidate, Workload(prompt_tokens=16, new_tokens=8, device="cpu"), 1)
    assert eff["weights_bytes"] == forecast.parts["weights"] + forecast.parts["quant_state"]
    assert result.metrics["throughput_tokens_per_s"] > 0 and result.metrics["latency_p50_ms"] > 0

    # a read-back that does not hold what was asked is a finding
    with pytest.raises(
        OptionNotInEffect, match="torchao-int8wo did not take effect: the converted layers hold Float8Tensor, not Int8Tensor"
    ):
        check_effective(candidate, {**eff, "quant_types": {"Float8Tensor": 14}})
    with pytest.raises(OptionNotInEffect, match="none of the 14 linear layers meant to be quantized was converted"):
        check_effective(
            candidate,
            {**eff, "quantized_layers": 0, "unquantized_layers": 14, "unquantized_examples": ["model.layers.0.mlp.up_proj (Linear)"]},
        )

    loader = tmp_path / "ao_loader.py"
    spec = replace(
        _spec(candidate, {"torch": "2.13.0", "transformers": "5.24.0", "torchao": "0.18.0"}), model_ref=str(path), has_tokenizer=False
    )
    loader.write_text(render_loader(spec))
    child = (
        "import ao_loader, json, torch\n"
        "model, _ = ao_loader.load_model()\n"
        "kinds = sorted({type(m.weight).__name__ for m in model.modules() if isinstance(m, torch.nn.Linear)})\n"
        "out = ao_loader.generate(model, input_ids=torch.tensor([[5, 6, 7]]), attention_mask=torch.ones(1, 3, dtype=torch.long))\n"
        "print('RESULT ' + json.dumps({'kinds': kinds, 'shape': list(out.shape)}))\n"
    )
    done = subprocess.run([sys.executable, "-c", child], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600)
    line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
    assert line is not None, done.stderr[-2000:]
    got = json.loads(line[len("RESULT ") :])
    assert got["kinds"] == ["Int8Tensor", "Parameter"] and got["shape"][0] == 1  # the head stays a plain Parameter


def test_falcon_is_refused_and_a_forced_load_comes_back_unsupported(tiny_models: dict[str, Path]) -> None:
    """torchao converts Falcon's FalconLinear weights (an nn.Linear subclass), then FalconLinear's own
    ``input @ weight.T`` fails inside torchao: the rules refuse it, and a worker asked anyway reports
    it ``unsupported`` with torchao's words, never as an error of the model or as measured."""
    falcon = {"architecture": "FalconForCausalLM", "attn_implementations": ["eager", "sdpa"]}
    candidate = ao("torchao-int8wo", placement="cpu")
    assert rejection(candidate, cpu_env(**TORCHAO), falcon) == (
        "torchao-int8wo: FalconForCausalLM's linear layers multiply by weight.T themselves, which torchao's tensors do not "
        "implement (aten.permute, torchao 0.18)"
    )
    request = WorkerRequest(
        model_path=str(tiny_models["falcon"]),
        model_name="falcon",
        task="text-generation",
        candidate=candidate,
        workload=Workload(prompt_tokens=16, new_tokens=8),
        batch_sizes=(1,),
        **FAST,  # type: ignore[arg-type]
    )
    result = launch(request, env=ENV).results[0]
    assert result.status == "unsupported" and result.reason.startswith(
        "torchao-int8wo: torchao's tensors refused an operation of this model in a first forward pass: NotImplementedError: "
        "Int8Tensor dispatch: attempting to run unimplemented operator/function: func=<OpOverload(op='aten.permute'"
    ), result.reason
    assert "latency_p50_ms" not in result.metrics


def test_the_search_expects_little_of_them_until_measured() -> None:
    """The knowledge-first search's priors: torchao's published gains are discounted (inside
    Transformers they have been far smaller), fine-grained FP8 is expected to lose, and on the CPU
    weight-only runs below bf16."""
    from autotune.search.prior import Knowledge

    gpu_k = Knowledge(Workload(objective="latency", max_batch=1), H100)
    effects = {q: gpu_k.expect(ao(q)).effects for q in ("torchao-int8wo", "torchao-int4wo", "fp8-fine")}
    assert [e.factor for e in effects["torchao-int8wo"]] == [1.1] and "1.57x bf16 in torchao's benchmark" in effects["torchao-int8wo"][
        0
    ].reason
    assert [e.factor for e in effects["torchao-int4wo"]] == [1.15] and [e.factor for e in effects["fp8-fine"]] == [0.6]
    cpu_k = Knowledge(Workload(device="cpu"), cpu_env(**TORCHAO))
    on_cpu = cpu_k.expect(ao("torchao-int8wo", placement="cpu"))
    assert on_cpu.factor == 0.7 and "bitsandbytes" not in on_cpu.describe()
