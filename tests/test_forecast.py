"""The memory forecast: Falcon-7B from its real config, KV caches and weights that match what
Transformers really allocates, the largest batch, calibration, and `autotune estimate`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autotune.candidate import Candidate
from autotune.memory import calibration as cal
from autotune.memory import forecast as fc
from autotune.workload import Workload

#: tiiuae/falcon-7b's config.json, as published.
FALCON_7B = {
    "model_type": "falcon",
    "hidden_size": 4544,
    "num_hidden_layers": 32,
    "num_attention_heads": 71,
    "vocab_size": 65024,
    "multi_query": True,
    "parallel_attn": True,
    "new_decoder_architecture": False,
    "bias": False,
    "alibi": False,
    "architectures": ["FalconForCausalLM"],
    "torch_dtype": "bfloat16",
    "layer_norm_epsilon": 1e-5,
    "bos_token_id": 11,
    "eos_token_id": 11,
}
#: A Llama-3-70B-shaped config: far larger than any machine this runs on.
LLAMA_70B = {
    "model_type": "llama",
    "hidden_size": 8192,
    "intermediate_size": 28672,
    "num_hidden_layers": 80,
    "num_attention_heads": 64,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
    "architectures": ["LlamaForCausalLM"],
    "torch_dtype": "bfloat16",
}
#: The Llama-3-8B shape the GPU runs in benchmarks/results registered.
LLAMA_8B = {
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "vocab_size": 128256,
    "tie_word_embeddings": False,
    "architectures": ["LlamaForCausalLM"],
    "dtype": "bfloat16",
}
GiB = 2**30
RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def write_config(directory: Path, config: dict) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config))
    return directory


# -- Falcon-7B from its config alone -------------------------------------------------------------


def test_falcon_7b_parameters_weights_and_kv_per_token(cli, tmp_path) -> None:  # type: ignore[no-untyped-def]
    model = write_config(tmp_path / "falcon-7b", FALCON_7B)
    result = cli("estimate", model, "--gpu-memory", "24GiB", "--json")
    assert result.code == 0, result.err
    doc = json.loads(result.out)
    assert doc["parameters"] == 6_921_720_704  # 6.92 B: the embedding and the head are tied
    assert round(doc["weights_bf16_bytes"] / 1e9, 1) == 13.8
    assert doc["kv_bytes_per_token_bf16"] == 8 * 1024  # one KV head, although the config reports 71
    assert "1 KV head" in doc["kv_description"] and "num_kv_heads=71" in doc["kv_description"]
    rows = {row["label"]: row for row in doc["candidates"]}
    # one K/V head for 71 query heads: SDPA has no fused kernel for that and materialises the scores like eager
    assert rows["bf16 sdpa cuda"]["largest_batch"]["<=24.00 GiB"] == rows["bf16 eager cuda"]["largest_batch"]["<=24.00 GiB"] > 0
    assert rows["fp32 sdpa cuda"]["largest_batch"]["<=24.00 GiB"] == 0  # 27.7 GB of fp32 weights
    # bitsandbytes on Transformers 5 leaves FalconLinear unquantized: 4-bit stays at bf16 size, and says so
    assert rows["bf16 sdpa nf4 cuda"]["weights_bytes"] == rows["bf16 sdpa cuda"]["weights_bytes"]
    assert any("FalconLinear" in note for note in doc["notes"])

    text = cli("estimate", model, "--gpu-memory", "24GiB", "--batch", "1,8").out
    assert "6.92 B parameters" in text and "13.84 GB" in text and "8.00 KiB per token" in text
    assert "PEAK B=1" in text and "PEAK B=8" in text and "MAX BATCH <=24.00 GiB" in text


def test_falcon_7b_resolves_offline_from_a_config_only_hf_cache(cli, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import huggingface_hub.constants

    from autotune.testing import install_in_hf_cache

    cache = tmp_path / "hf" / "hub"
    install_in_hf_cache(write_config(tmp_path / "cfg", FALCON_7B), "tiiuae/falcon-7b", cache)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    result = cli("estimate", "tiiuae/falcon-7b", "--batch", "1")
    assert result.code == 0, result.err
    assert result.out.startswith("tiiuae/falcon-7b: FalconForCausalLM (falcon), 6.92 B parameters")
    assert "no GPU here" in result.out and "RAM" in result.out  # says which limit it used on a CPU-only machine
    assert not cli.db.exists()  # estimating an unregistered model creates no database


def test_a_model_far_larger_than_this_machine(cli, tmp_path) -> None:  # type: ignore[no-untyped-def]
    result = cli("estimate", write_config(tmp_path / "llama-70b", LLAMA_70B), "--gpu-memory", "80GiB", "--batch", "1,16", "--json")
    assert result.code == 0, result.err
    doc = json.loads(result.out)
    assert round(doc["parameters"] / 1e9, 1) == 70.6
    rows = {row["label"]: row for row in doc["candidates"]}
    assert rows["bf16 sdpa cuda"]["largest_batch"]["<=80.00 GiB"] == 0  # 141 GB of bf16 weights
    assert rows["bf16 sdpa nf4+dq cuda"]["largest_batch"]["<=80.00 GiB"] > 16
    assert doc["kv_bytes_per_token_bf16"] == 2 * 80 * 8 * 128 * 2


def test_estimate_of_a_registered_model_uses_its_workload(cli, tiny_models) -> None:  # type: ignore[no-untyped-def]
    assert cli("add", tiny_models["llama"], "--prompt-tokens", "64", "--new-tokens", "8").code == 0
    doc = json.loads(cli("estimate", tiny_models["llama"], "--gpu-memory", "1GiB", "--json").out)
    assert doc["registered"] is True and doc["workload"]["prompt_tokens"] == 64
    doc = json.loads(cli("estimate", tiny_models["llama"], "--gpu-memory", "1GiB", "--prompt-tokens", "32", "--json").out)
    assert doc["workload"]["prompt_tokens"] == 32
    from autotune.environment import probe_gpus

    if not probe_gpus()[0]:  # no GPU and no --gpu-memory: the workload's limit sizes a GPU
        assert cli("add", tiny_models["llama"], "--max-memory", "1GiB").code == 0
        doc = json.loads(cli("estimate", tiny_models["llama"], "--json").out)
        assert doc["limits"] == [{"name": "GPU limit 1GiB", "bytes": GiB, "count": 1, "cpu": False}]
        assert "the workload's --max-memory 1GiB" in doc["limit_source"]


def test_estimate_of_a_cpu_workload_sizes_cpu_loads_against_this_machines_memory(cli, tiny_models) -> None:  # type: ignore[no-untyped-def]
    from autotune.memory import host_memory_bytes

    assert cli("add", tiny_models["llama"], "--device", "cpu", "--max-memory", "1GiB").code == 0
    doc = json.loads(cli("estimate", tiny_models["llama"], "--json").out)
    assert doc["device"] == "cpu" and all(row["candidate"]["placement"] == "cpu" for row in doc["candidates"])
    assert doc["limits"] == [{"name": "CPU RAM", "bytes": GiB, "count": 1, "cpu": True}]  # the workload's limit on the host
    assert "--device cpu" in doc["limit_source"] and "GPU limit" not in json.dumps(doc["limits"])
    assert cli("add", tiny_models["llama"], "--max-memory", "none").code == 0
    doc = json.loads(cli("estimate", tiny_models["llama"], "--gpu-memory", "24GiB", "--json").out)
    assert doc["limits"][0]["name"] == "<=24.00 GiB"  # a GPU size given: GPU rows, whatever the workload
    doc = json.loads(cli("estimate", tiny_models["llama"], "--json").out)
    assert doc["limits"] == [{"name": "CPU RAM", "bytes": host_memory_bytes(), "count": 1, "cpu": True}]
    text = cli("estimate", tiny_models["llama"], "--batch", "1").out
    assert "MAX BATCH CPU RAM" in text and "bf16 sdpa cpu" in text and "cuda" not in text


def test_estimate_bad_input_is_one_line_exit_2(cli, tmp_path) -> None:  # type: ignore[no-untyped-def]
    model = write_config(tmp_path / "m", FALCON_7B)
    unknown = write_config(tmp_path / "u", {"model_type": "no-such-architecture"})
    cases = [
        (["estimate", model, "--batch", "0,8"], "--batch"),
        (["estimate", model, "--batch", "many"], "--batch"),
        (["estimate", model, "--gpu-memory", "lots"], "cannot read memory size"),
        (["estimate", tmp_path / "missing"], "does not exist"),
        (["estimate", unknown], "no-such-architecture"),
        (["estimate", "nobody/no-such-model"], "cannot resolve"),
    ]
    for args, words in cases:
        result = cli(*args)
        assert result.code == 2, (args, result)
        assert len(result.err.strip().splitlines()) == 1 and words in result.err, (args, result.err)


# -- the KV cache and the weights, against what Transformers allocates ----------------------------


@pytest.mark.parametrize(
    "kind,overrides",
    [
        ("llama", {}),  # grouped-query: 2 KV heads of 4
        ("llama", {"head_dim": 32}),  # head_dim from the config, not hidden / heads
        ("falcon", {}),  # Falcon-7B layout: one KV head
        ("falcon", {"new_decoder_architecture": True, "num_kv_heads": 2, "multi_query": False}),  # Falcon-40B: every head
        ("gpt2", {}),
    ],
)
def test_kv_cache_matches_the_cache_generate_leaves(tmp_path, kind, overrides) -> None:  # type: ignore[no-untyped-def]
    import torch
    from transformers import AutoModelForCausalLM

    from autotune.testing import build_tiny

    path = build_tiny(kind, tmp_path / kind, **overrides)
    config = json.loads((path / "config.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    ids = torch.randint(3, 500, (3, 16), generator=torch.Generator().manual_seed(0))
    for static in (False, True):
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=8,
            min_new_tokens=8,
            do_sample=False,
            return_dict_in_generate=True,
            cache_implementation="static" if static else None,
        )
        cache = getattr(out, "cache", None) or out.past_key_values
        real = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))
        predicted = fc.forecast_parts(
            config, Candidate(dtype="float32", placement="cpu", static_cache=static), Workload(prompt_tokens=16, new_tokens=8), 3
        )
        assert predicted.cache_bytes == real, (kind, overrides, static)


def test_sliding_window_caps_the_cache() -> None:
    mistral = {
        "model_type": "mistral",
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 512,
        "sliding_window": 100,
    }
    workload = Workload(prompt_tokens=512, new_tokens=128)
    capped = fc.forecast_parts(mistral, Candidate(placement="cpu"), workload, 2)
    assert capped.cache_bytes == 2 * (2 * 2 * 16) * 100 * 2 * 2  # layers x K+V elements x window x batch x bf16
    full = fc.forecast_parts({**mistral, "sliding_window": None}, Candidate(placement="cpu"), workload, 2)
    assert full.cache_bytes == 2 * (2 * 2 * 16) * (512 + 128 - 1) * 2 * 2


def _loaded_bytes(model) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    import bitsandbytes as bnb

    def size(t) -> int:  # type: ignore[no-untyped-def]
        return t.numel() * t.element_size()

    weights = sum(size(p) for p in model.parameters()) + sum(size(b) for b in model.buffers())
    state = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            qs = module.weight.quant_state
            state += size(qs.absmax) + size(qs.code)
            if qs.nested:
                state += size(qs.state2.absmax) + size(qs.state2.code) + size(qs.offset)
        elif isinstance(module, bnb.nn.Linear8bitLt):
            state += size(module.weight.SCB)
    return weights, state


@pytest.mark.parametrize(
    "kind,candidate",
    [
        ("llama", Candidate(dtype="bfloat16", placement="cpu")),
        ("llama", Candidate(dtype="bfloat16", quant="bnb-4bit-nf4", placement="cpu")),
        ("llama", Candidate(dtype="bfloat16", quant="bnb-4bit-nf4", double_quant=True, placement="cpu")),
        ("gpt2", Candidate(dtype="float16", quant="bnb-8bit", placement="cpu")),  # GPT-2's Conv1D layers are quantized too
        ("falcon", Candidate(dtype="bfloat16", quant="bnb-4bit-nf4", placement="cpu")),  # FalconLinear is left alone
    ],
)
def test_weights_and_quantization_state_match_a_real_load(tmp_path, kind, candidate) -> None:  # type: ignore[no-untyped-def]
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from autotune.testing import build_tiny

    path = (
        build_tiny(kind, tmp_path / kind, hidden_size=128, intermediate_size=256) if kind == "llama" else build_tiny(kind, tmp_path / kind)
    )
    config = json.loads((path / "config.json").read_text())
    dtype = getattr(torch, candidate.dtype)
    quantization = None
    if candidate.quant == "bnb-8bit":
        quantization = BitsAndBytesConfig(load_in_8bit=True)
    elif candidate.is_4bit:
        quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=candidate.double_quant)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, quantization_config=quantization, device_map="cpu")
    weights, state = _loaded_bytes(model)
    predicted = fc.forecast_parts(config, candidate, Workload(prompt_tokens=16, new_tokens=8), 1)
    assert predicted.parts["quant_state"] == state
    assert abs(predicted.parts["weights"] - weights) <= 0.01 * weights, (predicted.parts["weights"], weights)


def test_eager_attention_grows_with_the_square_of_the_prompt() -> None:
    llama = {
        "model_type": "llama",
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 4,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 1000,
    }

    def extra(prompt: int, static: bool = False) -> int:
        """What eager attention's layer transient holds beyond SDPA's (its MLP's) at batch 2."""
        workload = Workload(prompt_tokens=prompt, new_tokens=8)
        eager = fc.forecast_parts(llama, Candidate(attn="eager", static_cache=static), workload, 2).parts["activations"]
        return eager - fc.forecast_parts(llama, Candidate(attn="sdpa", static_cache=static), workload, 2).parts["activations"]

    def expected(prompt: int, span: int, static: bool = False) -> int:
        scores = 2 * 32 * prompt * span * 10  # B x heads x P x keys x (bf16 scores, fp32 softmax, cast back)
        repeated = 2 * 32 * span * 2 * 64 * 2  # K and V of the 8 K/V heads repeated to the 32 query heads
        mask = 2 * prompt * span * 2 if static else 0  # a static cache's eager mask spans the cache
        mlp = 3 * 2 * prompt * 8192 * 2  # the gated MLP's transient, which SDPA's peak is
        return scores + repeated + mask - mlp

    assert extra(1024) == expected(1024, 1024)
    assert extra(2048) + 3 * 2 * 2048 * 8192 * 2 > 3.9 * (extra(1024) + 3 * 2 * 1024 * 8192 * 2)  # the scores: P^2
    # a static cache hands attention every slot of the cache: the scores span P + N - 1 keys
    assert extra(1024, static=True) == expected(1024, 1024 + 8 - 1, static=True)
    math_kernel = fc.forecast_parts(llama, Candidate(sdpa_kernel="math"), Workload(prompt_tokens=1024), 2).parts["activations"]
    assert math_kernel == fc.forecast_parts(llama, Candidate(attn="eager"), Workload(prompt_tokens=1024), 2).parts["activations"]
    # FlashAttention, flex attention and SDPA's fused kernels materialise no score matrix
    for attn in ("flash_attention_2", "flash_attention_3", "flex_attention"):
        fused = fc.forecast_parts(llama, Candidate(attn=attn), Workload(prompt_tokens=1024), 2).parts["activations"]
        assert fused == fc.forecast_parts(llama, Candidate(attn="sdpa"), Workload(prompt_tokens=1024), 2).parts["activations"]


def test_largest_batch_is_the_edge_of_the_limit() -> None:
    workload = Workload(prompt_tokens=512, new_tokens=128)
    for candidate in (Candidate(), Candidate(attn="eager"), Candidate(quant="bnb-4bit-nf4", double_quant=True)):
        n = fc.largest_batch(LLAMA_70B, candidate, workload, [80 * GiB])
        if candidate.quant == "none":
            assert n == 0
            continue
        assert fc.forecast_parts(LLAMA_70B, candidate, workload, n).total_bytes <= 80 * GiB
        assert fc.forecast_parts(LLAMA_70B, candidate, workload, n + 1).total_bytes > 80 * GiB
    spread = fc.forecast_parts(LLAMA_70B, Candidate(placement="multi-gpu"), workload, 1, gpus=4)
    assert spread.devices == 4 and spread.peak_bytes < spread.total_bytes / 3
    assert fc.largest_batch(LLAMA_70B, Candidate(placement="multi-gpu"), workload, [80 * GiB] * 4) > 0


def test_falcon_multi_query_sdpa_runs_the_math_kernel() -> None:
    import warnings

    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    query, kv = torch.randn(1, 8, 16, 8), torch.randn(1, 1, 16, 8)
    with warnings.catch_warnings(), pytest.raises(RuntimeError), sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
        warnings.simplefilter("ignore")  # "both fused kernels require query, key and value to have the same num_heads"
        torch.nn.functional.scaled_dot_product_attention(query, kv, kv, is_causal=True)

    workload = Workload(prompt_tokens=512, new_tokens=128)
    sdpa = fc.forecast_parts(FALCON_7B, Candidate(), workload, 16)
    eager = fc.forecast_parts(FALCON_7B, Candidate(attn="eager"), workload, 16)
    assert sdpa.parts["activations"] == eager.parts["activations"]
    assert any("math kernel" in note for note in sdpa.notes)
    # the new decoder (Falcon-40B) broadcasts K/V to every head before SDPA: the fused kernels take it
    short = Workload(prompt_tokens=512, new_tokens=8)  # the prompt's pass peaks, not the decoding of a cache 71 heads wide
    new_decoder = fc.forecast_parts({**FALCON_7B, "new_decoder_architecture": True, "num_kv_heads": 1}, Candidate(), short, 16)
    mlp = 2 * 16 * 512 * 4 * 4544 * 2  # the new decoder's peak: its MLP's transient (fc1 and GELU, 4 x hidden wide)
    scores = fc.forecast_parts(FALCON_7B, Candidate(), short, 16).parts["activations"] - new_decoder.parts["activations"]
    assert scores == 16 * 71 * 512 * 512 * 10 - mlp  # B x heads x P^2 in place of the MLP's transient
    # measured on an H200 (results/e2e_falcon7b_h200.db): 13.81 GiB at batch 1, 18.04 GiB at batch 16
    for batch, measured in ((1, 13.814), (16, 18.035)):
        peak = fc.forecast_parts(FALCON_7B, Candidate(), workload, batch, transformers_version="5.17.0").total_bytes
        assert abs(peak / GiB - measured) < 0.05 * measured, (batch, peak / GiB)


def test_llm_int8_counts_its_outlier_copies_and_their_cached_generations() -> None:
    workload = Workload(prompt_tokens=512, new_tokens=128)
    largest = 14336 * 4096  # the MLP's weights
    int8 = fc.forecast_parts(LLAMA_8B, Candidate(dtype="float16", quant="bnb-8bit"), workload, 1)
    fp16 = fc.forecast_parts(LLAMA_8B, Candidate(dtype="float16"), workload, 1)
    assert int8.parts["activations"] - fp16.parts["activations"] == 9 * largest  # int8 copy + two fp32 products
    on_cpu = fc.forecast_parts(LLAMA_8B, Candidate(dtype="float16", quant="bnb-8bit", placement="cpu"), workload, 1)
    generations = sum(1 / k for k in range(1, 33)) - 1  # H(32) - 1: no caching allocator on the CPU
    assert abs(int8.parts["allocator_slack"] - on_cpu.parts["allocator_slack"] - generations * 9 * largest) <= 1
    # measured on an H200 (results/e2e_llama8b_h200.db), all batches from one worker
    for batch, measured in ((1, 11.268), (2, 12.523), (4, 12.973), (8, 12.984), (16, 13.434)):
        peak = fc.forecast_parts(LLAMA_8B, Candidate(dtype="float16", quant="bnb-8bit"), workload, batch).total_bytes
        assert abs(peak / GiB - measured) < 0.10 * measured, (batch, peak / GiB)


def _transformers_split(config: dict, quant: str, devices: int, limit: int) -> tuple[list[int], int]:
    """Blocks per GPU and the head's GPU, as the installed Transformers' own device_map="auto" places them."""
    import torch
    import transformers

    try:
        from transformers.integrations.accelerate import _get_device_map
    except ImportError:
        pytest.skip(f"transformers {transformers.__version__} has no integrations.accelerate._get_device_map")
    cfg = transformers.CONFIG_MAPPING[config["model_type"]].from_dict(config)
    quantizer = None
    if quant != "none":
        pytest.importorskip("bitsandbytes")
        from transformers import BitsAndBytesConfig
        from transformers.quantizers import AutoHfQuantizer

        quantizer = AutoHfQuantizer.from_config(BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4"), pre_quantized=False)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    if quantizer is not None:
        quantizer.preprocess_model(model, device_map="auto", dtype=torch.bfloat16)
    device_map = _get_device_map(model, "auto", {i: limit for i in range(devices)}, quantizer)

    def device_of(name: str) -> int:
        return next(d for key, d in device_map.items() if name == key or name.startswith(key + ".") or not key)

    blocks = [0] * devices
    for i in range(config["num_hidden_layers"]):
        blocks[device_of(f"model.layers.{i}")] += 1
    return blocks, device_of("lm_head")


@pytest.mark.parametrize(
    "config,quant,devices,limit",
    [
        (LLAMA_8B, "none", 2, 10 * GiB),
        (LLAMA_8B, "none", 4, 140 * GiB),
        (LLAMA_8B, "bnb-4bit-nf4", 2, 10 * GiB),
        (
            {
                **LLAMA_8B,
                "hidden_size": 2048,
                "intermediate_size": 8192,
                "num_hidden_layers": 16,
                "head_dim": 64,
                "tie_word_embeddings": True,
            },
            "none",
            2,
            10 * GiB,
        ),  # Llama-3.2-1B: the tied head goes with the embedding
    ],
)
def test_multi_gpu_split_is_the_one_transformers_makes(config, quant, devices, limit) -> None:  # type: ignore[no-untyped-def]
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        blocks, head = _transformers_split(config, quant, devices, limit)
    shape = fc.model_shape(config, "text-generation")
    split = fc.device_split(shape, Candidate(quant=quant, placement="multi-gpu"), devices, [limit] * devices)
    assert [sum(1 for i in units if shape.units[i].block) for units in split] == blocks
    assert next(d for d, units in enumerate(split) if any(shape.units[i].head for i in units)) == head


def test_multi_gpu_peak_is_the_fuller_gpu() -> None:
    # results/e2e_llama8b_2xh200.db: nf4 over two H200s under max_memory 10 GiB with Transformers 5.17 put
    # the embedding and 4 blocks on GPU 0, 28 blocks and the head on GPU 1, which peaked at 4.90 GiB
    workload = Workload(prompt_tokens=512, new_tokens=128)
    candidate = Candidate(quant="bnb-4bit-nf4", double_quant=True, compute_dtype="float16", placement="multi-gpu")
    shape = fc.model_shape(LLAMA_8B, "text-generation")
    split = fc.device_split(shape, candidate, 2, [10 * GiB] * 2, (5, 17))
    assert [sum(1 for i in units if shape.units[i].block) for units in split] == [4, 28]
    spread = fc.forecast_parts(LLAMA_8B, candidate, workload, 1, max_memory=[10 * GiB] * 2, transformers_version="5.17.0")
    first, second = (sum(parts.values()) for parts in spread.device_parts)
    assert spread.peak_bytes == second > first and spread.device_bytes == (first, second)
    assert abs(second / GiB - 4.898) < 0.05 * 4.898
    assert spread.total_bytes == first + second and any(shape.units[i].head for i in split[1])  # the head on the second
    # Transformers 5.18 on sizes its margin from the largest leaf (the embedding), not the mean one
    newer = fc.device_split(shape, candidate, 2, [10 * GiB] * 2, (5, 18))
    assert [sum(1 for i in units if shape.units[i].block) for units in newer] == [14, 18]


@pytest.mark.parametrize(
    "store",
    ["e2e_falcon7b_h200.db", "e2e_llama8b_h200.db", "e2e_llama8b_2xh200.db", "e2e_falcon7b_h200_20261126.db", "e2e_llama8b_20261126.db"],
)
def test_forecast_meets_its_target_on_the_gpu_trials(store, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import shutil

    from autotune.memory.measured import measured_points
    from autotune.store import Store

    copy = shutil.copy(RESULTS / store, tmp_path / store)
    with Store.open(str(copy)) as opened:
        points = [p.point for p in measured_points(opened)]
    calibration = cal.calibrate(points)
    assert calibration.before.worst is not None and calibration.before.worst <= 0.15
    assert calibration.cross_validated.median <= 0.05 and calibration.cross_validated.worst <= 0.15


# -- calibration ---------------------------------------------------------------------------------


def test_calibration_recovers_overhead_and_scale_and_reports_its_error() -> None:
    forecasts = [2 * GiB, 4 * GiB, 8 * GiB, 12 * GiB, 20 * GiB]
    points = [("cpu", f, int(1.1 * f + 0.3 * GiB)) for f in forecasts]
    points.append(("cpu", 6 * GiB, int(1.1 * 6 * GiB + 0.3 * GiB) * 2))  # an outlier
    calibration = cal.calibrate(points)
    fit = calibration.fits["cpu"]
    assert fit.points == 6 and abs(fit.scale - 1.1) < 0.01 and abs(fit.overhead - 0.3 * GiB) < 0.05 * GiB
    assert calibration.before.median > 0.1 and calibration.after.median < 0.01  # the outlier does not pull the fit
    assert calibration.cross_validated.n == 6 and calibration.cross_validated.median < 0.02
    assert calibration.apply(10 * GiB, "cpu") == fit.apply(10 * GiB)
    assert calibration.apply(10 * GiB, "NVIDIA H100") == 10 * GiB  # no points for that kind: unchanged
    assert "median" in calibration.describe() and calibration.to_dict()["fits"]["cpu"]["points"] == 6


def test_gpu_calibration_fits_an_overhead_only() -> None:
    # A store of one GPU where a few quantized points sit off the line: a fitted scale would
    # extrapolate their offsets; the GPU fit keeps scale 1 and learns the per-process constant.
    points = [("NVIDIA H200", f, f + GiB // 4) for f in (14 * GiB, 16 * GiB, 18 * GiB)]
    points += [("NVIDIA H200", 11 * GiB, 10 * GiB + GiB // 2), ("NVIDIA H200", 6 * GiB, 6 * GiB + GiB // 2)]
    fit = cal.calibrate(points).fits["NVIDIA H200"]
    assert fit.scale == 1.0 and fit.overhead == GiB // 4


def test_calibration_with_few_points() -> None:
    assert cal.calibrate([]).fits == {} and cal.calibrate([]).before.n == 0
    one = cal.calibrate([("cpu", 1000, 1500)])
    assert one.fits["cpu"].scale == 1.0 and one.fits["cpu"].overhead == 500 and one.after.worst == 0
    close = cal.calibrate([("cpu", 1000, 1500), ("cpu", 1010, 1700)])  # too close to say anything of the scale
    assert close.fits["cpu"].scale == 1.0
    wild = cal.calibrate([("cpu", 1000, 100), ("cpu", 2000, 10_000)])
    assert cal.SCALE_RANGE[0] <= wild.fits["cpu"].scale <= cal.SCALE_RANGE[1]


def test_estimate_calibrates_from_trials_of_this_environment(cli, tiny_models) -> None:  # type: ignore[no-untyped-def]
    from autotune.environment import probe
    from autotune.store import Store

    assert cli("add", tiny_models["llama"], "--prompt-tokens", "16", "--new-tokens", "8").code == 0
    with Store.open(str(cli.db)) as store:
        model = store.get_model(str(tiny_models["llama"]))
        study = store.study_for(model, store.record_environment(probe()))
        for batch, peak in ((1, 420_000_000), (4, 425_000_000), (16, 440_000_000)):
            store.record_trial(
                study.id,
                Candidate(dtype="float32", placement="cpu"),
                batch,
                "ok",
                metrics={"peak_memory_bytes": peak, "throughput_tokens_per_s": 10.0},
            )
    text = cli("estimate", tiny_models["llama"], "--batch", "1").out
    assert "forecast calibrated from 3 measured trials" in text and "leave-one-out" in text
    assert "safety margin the search adds for admission" in text and "MARGIN" in text
    doc = json.loads(cli("estimate", tiny_models["llama"], "--batch", "1", "--json").out)
    assert all("value" in row["margin"] for row in doc["candidates"]) and doc["margins"]["default"] > 0


# -- the forecast on shapes it was not fitted on, and the safety margin ---------------------------


def h200_runs() -> tuple[dict, list[dict]]:
    """The worker runs of three shapes measured on an H200 (results/forecast_shapes_h200.json)."""
    doc = json.loads((RESULTS / "forecast_shapes_h200.json").read_text())
    return doc, [r for r in doc["runs"] if r["status"] == "ok" and r["quality_reference"] is not False]


def h200_forecast(doc: dict, run: dict) -> int:
    before = [b for b in run["ladder"] if b < run["batch_size"]]
    return fc.forecast_parts(
        doc["shapes"][run["shape"]],
        Candidate.from_dict(run["candidate"]),
        Workload(prompt_tokens=run["prompt_tokens"], new_tokens=run["new_tokens"]),
        run["batch_size"],
        transformers_version="5.17.0",
        before=before,
    ).peak_bytes


def test_static_cache_cuda_graphs_and_eager_scores_on_shapes_never_fitted(tmp_path: Path) -> None:
    """Measured on an H200 (torch 2.11, Transformers 5.17) through autotune's worker: a Llama-3.2-1B
    shape and a Qwen2-1.5B shape, bf16, SDPA and eager, each with and without a compiled static
    cache, batch 1, 8 and 32, 512 + 128 tokens (results/forecast_shapes_h200.json). Neither shape
    is in a store the calibration is fitted on; the forecast, calibrated with the overhead the
    Falcon-7B and Llama-8B stores give, must not fall more than 7% under any peak, nor 10% over.
    (An earlier study of the same Llama-3.2-1B shape on an H200 recorded peaks 0.3-0.5 GiB higher,
    3.57 / 4.01 / 5.27 GiB for bf16 SDPA; these runs, with the worker as it measures today, did not.)"""
    doc, runs = h200_runs()
    others = []
    for name in ("e2e_falcon7b_h200_20261126.db", "e2e_llama8b_20261126.db"):
        import shutil

        from autotune.memory.measured import measured_points
        from autotune.store import Store

        copy = shutil.copy(RESULTS / name, tmp_path / name)  # opening a store upgrades its schema: not the stored one
        with Store.open(str(copy)) as store:
            others += [p.point for p in measured_points(store)]
    overhead = cal.calibrate(others).fits["NVIDIA H200"]
    errors = {}
    for run in runs:
        if run["shape"] in ("llama1b", "qwen2") and run["prompt_tokens"] == 512:
            predicted = overhead.apply(h200_forecast(doc, run))
            label = Candidate.from_dict(run["candidate"]).label()
            errors[(run["shape"], label, run["batch_size"])] = (predicted - run["peak_memory_bytes"]) / run["peak_memory_bytes"]
    assert len(errors) == 24 and all(-0.07 <= e <= 0.10 for e in errors.values()), errors
    # the static cache: bf16 SDPA peaked at 3.26 / 3.80 / 5.52 GiB; with eager attention, whose scores span
    # the whole cache, 3.29 / 4.64 / 8.85 GiB; without the static cache 3.08 / 3.52 / 4.78 and 3.14 / 4.15 / 7.15
    assert errors[("llama1b", "bf16 eager cuda static", 32)] > -0.03 and errors[("llama1b", "bf16 sdpa cuda static", 32)] > -0.05


def test_long_prompts_eager_grows_with_the_square_flash_does_not() -> None:
    """Llama-3.2-1B shape on an H200: SDPA (flash kernel) peaked at 3.90 GiB for 8k prompt tokens and
    6.68 GiB for 32k; eager at 35.3 GiB for 8k (the scores of one layer: 32 heads x 8k x 8k), and ran
    out of memory for 32k (its scores alone would take 320 GiB)."""
    doc, runs = h200_runs()
    for run in runs:
        if run["prompt_tokens"] >= 8192:
            predicted = h200_forecast(doc, run)
            assert abs(predicted - run["peak_memory_bytes"]) <= 0.08 * run["peak_memory_bytes"], (run, predicted / GiB)
    oom = next(r for r in doc["runs"] if r["status"] == "oom")
    assert oom["prompt_tokens"] == 32768 and h200_forecast(doc, {**oom, "ladder": []}) > 141 * GiB
    flash = Candidate(attn="flash_attention_2")
    for prompt in (8192, 32768):
        llama = doc["shapes"]["llama1b"]
        fused = fc.forecast_parts(llama, flash, Workload(prompt_tokens=prompt, new_tokens=16), 1).parts["activations"]
        assert fused == fc.forecast_parts(llama, Candidate(), Workload(prompt_tokens=prompt, new_tokens=16), 1).parts["activations"]


def test_cuda_graph_pools_are_held_only_by_a_compiled_static_cache_on_a_gpu() -> None:
    doc, _ = h200_runs()
    llama, workload = doc["shapes"]["llama1b"], Workload(prompt_tokens=512, new_tokens=128)
    on_gpu = fc.forecast_parts(llama, Candidate(static_cache=True), workload, 32).parts["cuda_graphs"]
    step = 32 * 32 * 639 * 128 * 2 + 32 * 128256 * 6  # the decode step's repeated K/V and its logits
    assert on_gpu == int(fc.GRAPH_POOL_FACTOR * step) + fc.COMPILED_BYTES
    assert fc.forecast_parts(llama, Candidate(static_cache=True, placement="cpu"), workload, 32).parts["cuda_graphs"] == 0
    assert fc.forecast_parts(llama, Candidate(), workload, 32).parts["cuda_graphs"] == 0
    # each earlier batch size of the worker's ladder leaves its static cache's blocks cached
    alone = fc.forecast_parts(llama, Candidate(static_cache=True), workload, 32).peak_bytes
    after = fc.forecast_parts(llama, Candidate(static_cache=True), workload, 32, before=(1, 8)).peak_bytes
    assert after - alone >= 9 * 639 * 32 * 1024  # the caches of batch 1 and 8: 32 KiB per token each


def test_margins_are_learned_per_group_with_coarser_groups_behind() -> None:
    h200 = "NVIDIA H200"

    def point(shape: str, group: tuple[str, str, str], forecast: float, measured: float) -> cal.CalibrationPoint:
        return cal.CalibrationPoint(h200, int(forecast * GiB), int(measured * GiB), "", group, shape)

    sdpa, eager = ("sdpa", "dynamic", "none"), ("eager", "static", "none")
    points = [point(s, sdpa, 10, 10.3) for s in ("a", "b", "c")]  # 3% under, on three shapes
    points += [point(s, eager, 10, 9.0) for s in ("a", "b", "c")]  # 10% over
    margins = cal.learn_margins(points, [p.forecast_bytes for p in points])
    assert margins.for_candidate(Candidate(), h200).value == pytest.approx(10.3 / 10 - 1 + cal.MARGIN_PAD)
    # a group the forecast over-estimates admits a little more: an over-forecast does not drop the winner
    assert margins.for_candidate(Candidate(attn="eager", static_cache=True), h200).value == pytest.approx(0.9 - 1 + cal.MARGIN_PAD)
    # no point of nf4: the margin of SDPA with a dynamic cache on that GPU, not the default
    nf4 = margins.for_candidate(Candidate(quant="bnb-4bit-nf4"), h200)
    assert nf4.group == (h200, "sdpa", "dynamic") and nf4.points == 3
    assert margins.for_candidate(Candidate(attn="flash_attention_2"), h200).group == (h200,)
    # another GPU: the GPU family; the CPU, with no point: the documented default
    assert margins.for_candidate(Candidate(), "NVIDIA H100 80GB HBM3").group == ("gpu",)
    empty = cal.Correction()
    assert (
        empty.margin(Candidate(placement="cpu"), "cpu").value == cal.DEFAULT_MARGIN
        and "default" in empty.margin(Candidate(placement="cpu"), "cpu").describe()
    )
    assert empty.admitted(10 * GiB, Candidate(), h200) == int(10 * GiB * (1 + cal.DEFAULT_MARGIN))
    # two points are too few for a group of their own
    few = cal.learn_margins(points[:2], [p.forecast_bytes for p in points[:2]])
    assert few.for_candidate(Candidate(), h200).value == cal.DEFAULT_MARGIN


def test_holdout_fits_on_other_shapes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """benchmarks/forecast_holdout.py on the stored results: every held-out row is fitted on the
    other shapes only, and the rows carry the keys BENCHMARKS.md documents."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("forecast_holdout", RESULTS.parent / "forecast_holdout.py")
    holdout = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules["forecast_holdout"] = holdout
    spec.loader.exec_module(holdout)  # type: ignore[union-attr]
    out = tmp_path / "holdout.json"
    assert holdout.main(["--json-out", str(out)]) == 0
    rows = json.loads(out.read_text())
    held = [r for r in rows if not r["fitted_on_shape"]]
    assert len({r["shape"] for r in held}) >= 5 and len(held) == len(rows) // 2
    for r in held[:5]:
        assert set(r) >= {"shape", "candidate", "batch_size", "peak_bytes", "forecast_bytes", "error", "fitted_on_shape"}
        assert r["error"] == pytest.approx((r["forecast_bytes"] - r["peak_bytes"]) / r["peak_bytes"], abs=1e-4)
    assert sorted(abs(r["error"]) for r in held)[len(held) // 2] <= 0.05  # the median held-out error


def test_the_gpu_shapes_script_runs_through_the_worker_on_the_cpu(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """benchmarks/forecast_gpu_shapes.py --tiny: a tiny Llama measured through the trial worker on the
    CPU, stored with its forecasts, and written as held-out rows (the GPU run is the same code)."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("forecast_gpu_shapes", RESULTS.parent / "forecast_gpu_shapes.py")
    script = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules["forecast_gpu_shapes"] = script
    spec.loader.exec_module(script)  # type: ignore[union-attr]
    out = tmp_path / "out"
    assert script.main(["--out", str(out), "--tiny", "--shapes", "llama-tiny", "--only", "bf16 sdpa$", "--jobs", "1"]) == 0
    rows = json.loads((out / "forecast_holdout_gpu.json").read_text())
    assert [r["batch_size"] for r in rows] == [1, 2, 4] and not any(r["fitted_on_shape"] for r in rows)
    assert all(r["peak_bytes"] > 0 and r["forecast_bytes"] > 0 and r["device"] == "cpu" for r in rows)
    from autotune.store import Store

    with Store.open(str(out / "forecast_gpu_shapes.db")) as store:
        trials = store.trials()
    assert len(trials) == 3 and all(t.metrics.get("forecast_bytes") for t in trials)
    assert "| llama-tiny | bf16 sdpa cpu | 1 |" in (out / "forecast_holdout_gpu.md").read_text()
    runs = json.loads((out / "forecast_shapes_gpu.json").read_text())
    assert runs["shapes"]["llama-tiny"]["model_type"] == "llama" and len(runs["runs"]) == 3


def test_the_memory_package_and_its_sdpa_rule_need_no_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys, autotune.memory as m, autotune.memory.bnb\n"
        "why = m.sdpa_math_fallback({'model_type': 'falcon', 'num_attention_heads': 71})\n"
        "assert why and 'math kernel' in why and m.sdpa_math_fallback({'model_type': 'llama'}) is None\n"
        "assert m.sdpa_math_fallback({'model_type': 'falcon', 'new_decoder_architecture': True}) is None\n"
        "heavy = [n for n in ('torch', 'transformers', 'sqlalchemy') if n in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=RESULTS.parents[1])
    assert proc.returncode == 0, proc.stderr
