"""The loading code: every shape the generator emits runs on CPU in a fresh process, the rest compiles.

One subprocess imports every written loader (plain, pinned SDPA kernel, bnb 4-bit and 8-bit, a
static cache, an encoder, a tokenizer, a Hub id pinned to its revision, and one written by
`autotune recommend --write`), loads each and generates with it: a process costs seconds of torch
import, so they share one.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

from autotune.advisor.render import LoaderSpec, comment, render_loader, version_tuple
from autotune.candidate import Candidate

V5 = {"torch": "2.13.0+cpu", "transformers": "5.24.0", "bitsandbytes": "0.50.2", "accelerate": "1.15.0"}
V4 = {"torch": "2.5.1+cu124", "transformers": "4.57.6", "bitsandbytes": "0.45.0", "accelerate": "1.2.0"}
REMOVED_KWARGS = {"load_in_4bit", "load_in_8bit", "use_flash_attention_2", "torch_dtype"}

#: The child: imports each loader named on the command line, loads, generates, reports as JSON.
CHILD = r"""
import importlib, json, sys
import torch
results = {}
for name in sys.argv[1:]:
    module = importlib.import_module(name)
    model, tokenizer = module.load_model()
    if tokenizer is not None:
        batch = tokenizer(["w1 w2 w3 w4 w5", "w6 w7"], return_tensors="pt", padding=True).to(model.device)
    else:
        ids = torch.randint(3, 500, (module.BATCH_SIZE, 16), generator=torch.Generator().manual_seed(0))
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if hasattr(module, "generate"):
        out = module.generate(model, **batch)
        shape = list(out.shape)
    else:
        shape = list(module.forward(model, **batch).last_hidden_state.shape)
    quantized = sorted({type(m).__name__ for m in model.modules() if "Linear" in type(m).__name__ and type(m).__name__ != "Linear"})
    results[name] = {"shape": shape, "input": list(batch["input_ids"].shape), "tokenizer": tokenizer is not None,
                     "attn": model.config._attn_implementation, "dtype": str(next(model.parameters()).dtype),
                     "layers": quantized, "kwargs": getattr(module, "GENERATE_KWARGS", None)}
results["_autotune_imported"] = any(m == "autotune" or m.startswith("autotune.") for m in sys.modules)
print("RESULTS " + json.dumps(results))
"""


def spec(
    model_ref: str, candidate: Candidate, *, task: str = "text-generation", batch: int = 2, versions: dict | None = None, **fields: object
) -> LoaderSpec:
    fields = {"model_name": model_ref, "measured_on": "the CPU of ci", **fields}
    return LoaderSpec(
        model_ref=model_ref,
        task=task,
        candidate=candidate,
        batch_size=batch,
        new_tokens=4,
        prompt_tokens=16,
        versions=versions or V5,
        measured={"throughput_tokens_per_s": 100.0},
        summary="throughput 100.0 tok/s",
        measured_at=datetime(2026, 1, 2, tzinfo=timezone.utc),
        **fields,  # type: ignore[arg-type]
    )


def add_tokenizer(model_dir: Path, target: Path) -> Path:
    """A copy of ``model_dir`` with a small word-level tokenizer that has no pad token."""
    import shutil

    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    shutil.copytree(model_dir, target)
    vocab = {f"w{i}": i for i in range(3, 500)} | {"[UNK]": 0, "<s>": 1, "</s>": 2}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]", bos_token="<s>", eos_token="</s>").save_pretrained(target)
    return target


def call_keywords(source: str, attribute: str) -> set[str]:
    """The keyword names of every ``*.attribute(...)`` call in ``source``."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == attribute:
            names |= {k.arg for k in node.keywords if k.arg}
    return names


def test_every_shape_runs_on_cpu_in_a_fresh_process(tiny_models, tmp_path, hf_cache, cli, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from autotune.environment import probe
    from autotune.store import Store

    loaders = tmp_path / "loaders"
    loaders.mkdir()
    llama, gpt2, falcon, bert = (str(tiny_models[k]) for k in ("llama", "gpt2", "falcon", "bert"))
    with_tokenizer = add_tokenizer(tiny_models["llama"], tmp_path / "llama-tok")
    shapes = {
        "plain_sdpa": spec(llama, Candidate(dtype="float32", attn="sdpa", placement="cpu")),
        "plain_eager_falcon": spec(falcon, Candidate(dtype="bfloat16", attn="eager", placement="cpu")),
        "pinned_math": spec(gpt2, Candidate(dtype="float32", attn="sdpa", sdpa_kernel="math", placement="cpu")),
        "bnb_4bit": spec(
            llama,
            Candidate(dtype="bfloat16", attn="sdpa", quant="bnb-4bit-nf4", double_quant=True, compute_dtype="float32", placement="cpu"),
        ),
        "bnb_8bit": spec(gpt2, Candidate(dtype="float32", attn="sdpa", quant="bnb-8bit", placement="cpu")),
        "static_cache": spec(llama, Candidate(dtype="float32", attn="sdpa", static_cache=True, placement="cpu")),
        "encoder": spec(bert, Candidate(dtype="float32", attn="sdpa", sdpa_kernel="math", placement="cpu"), task="feature-extraction"),
        "tokenizer": spec(str(with_tokenizer), Candidate(dtype="float32", attn="sdpa", placement="cpu"), has_tokenizer=True),
    }
    for name, loader in shapes.items():
        (loaders / f"{name}.py").write_text(render_loader(loader))

    # a Hub id pinned to the measured revision, written by `autotune recommend --write` from real store rows
    assert cli("add", "tiiuae/falcon-7b", "--prompt-tokens", "16", "--new-tokens", "4").code == 0
    with Store.open(str(cli.db)) as store:
        model = store.get_model("tiiuae/falcon-7b")
        study = store.study_for(model, store.record_environment(probe()))
        store.record_trial(
            study.id,
            Candidate(dtype="float32", attn="sdpa", placement="cpu"),
            2,
            "ok",
            metrics={"throughput_tokens_per_s": 50.0, "peak_memory_bytes": 400_000_000, "quality_token_agreement": 1.0},
        )
    result = cli("recommend", "tiiuae/falcon-7b", "--write", loaders / "written_by_recommend.py")
    assert result.code == 0, result.err
    written = (loaders / "written_by_recommend.py").read_text()
    assert "MODEL_ID = 'tiiuae/falcon-7b'" in written and "REVISION = '" in written and "revision=REVISION" in written

    names = sorted(p.stem for p in loaders.glob("*.py"))
    child_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {
        "PYTHONPATH": str(loaders),
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_CACHE": str(hf_cache),
        "TRANSFORMERS_VERBOSITY": "error",
    }
    proc = subprocess.run([sys.executable, "-c", CHILD, *names], capture_output=True, text=True, cwd=tmp_path, env=child_env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULTS "))
    results = json.loads(line[len("RESULTS ") :])
    assert results.pop("_autotune_imported") is False
    assert set(results) == set(names)
    for name, r in results.items():
        if name == "encoder":
            assert r["shape"] == [2, 16, 64], r
        else:
            assert r["shape"][1] == r["input"][1] + 4, (name, r)  # the new tokens were generated
    assert results["plain_eager_falcon"]["attn"] == "eager" and results["plain_eager_falcon"]["dtype"] == "torch.bfloat16"
    assert results["bnb_4bit"]["layers"] == ["Linear4bit"]
    assert results["bnb_8bit"]["layers"] == ["Linear8bitLt"]
    assert results["static_cache"]["kwargs"]["cache_implementation"] == "static"
    assert results["tokenizer"]["tokenizer"] is True and results["tokenizer"]["input"] == [2, 5]
    assert results["written_by_recommend"]["tokenizer"] is False


def test_generated_code_uses_current_arguments() -> None:
    source = render_loader(
        spec(
            "org/model",
            Candidate(dtype="bfloat16", attn="flash_attention_2", quant="bnb-4bit-nf4", double_quant=True, placement="cuda"),
            versions={**V5, "transformers": "5.17.0"},
        )
    )
    compile(source, "loader.py", "exec")
    assert call_keywords(source, "from_pretrained") == {"dtype", "attn_implementation", "quantization_config", "device_map"}
    assert call_keywords(source, "from_pretrained").isdisjoint(REMOVED_KWARGS)
    assert "BitsAndBytesConfig(\n        load_in_4bit=True," in source
    assert "bnb_4bit_quant_type='nf4'" in source and "bnb_4bit_use_double_quant=True" in source
    assert "bnb_4bit_compute_dtype=torch.bfloat16" in source and "device_map='cuda:0'" in source
    assert any(line.startswith("# Needs:") and "flash-attn" in line for line in source.splitlines())


def test_transformers_4_and_old_torch_forms() -> None:
    source = render_loader(
        spec("org/model", Candidate(dtype="float16", attn="sdpa", quant="bnb-8bit", sdpa_kernel="efficient"), versions=V4)
    )
    compile(source, "loader.py", "exec")
    assert "torch_dtype=torch.float16" in source and "dtype=" not in source.replace("torch_dtype=", "")
    assert "quantization_config=quantization_config" in source and "load_in_8bit=True" in source
    assert call_keywords(source, "from_pretrained").isdisjoint({"load_in_4bit", "load_in_8bit", "use_flash_attention_2"})
    assert "sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION])" in source
    legacy = render_loader(
        spec(
            "org/model", Candidate(dtype="float16", attn="sdpa", sdpa_kernel="math"), versions={"torch": "2.1.2", "transformers": "4.38.2"}
        )
    )
    compile(legacy, "loader.py", "exec")
    assert "torch.backends.cuda.sdp_kernel(enable_flash=False, enable_mem_efficient=False, enable_math=True)" in legacy
    ancient = render_loader(spec("org/model", Candidate(dtype="float16", attn="sdpa"), versions={"transformers": "4.33.0"}))
    assert "attn_implementation" not in ancient and "torch_dtype=" in ancient


def test_multi_gpu_placement_renders_and_compiles() -> None:
    loader = spec(
        "org/model",
        Candidate(dtype="bfloat16", attn="sdpa", placement="multi-gpu", quant="bnb-4bit-nf4"),
        max_memory={0: "20480MiB", 1: "20480MiB"},
        versions={**V5, "transformers": "5.17.0"},
    )
    source = render_loader(loader)
    compile(source, "loader.py", "exec")
    assert "MAX_MEMORY = {0: '20480MiB', 1: '20480MiB'}" in source
    assert "device_map='auto'" in source and "max_memory=MAX_MEMORY" in source
    unlimited = render_loader(spec("org/model", Candidate(placement="multi-gpu")))
    compile(unlimited, "loader.py", "exec")
    assert "device_map='auto'" in unlimited and "MAX_MEMORY" not in unlimited


def test_stored_text_cannot_inject_code(capfd) -> None:  # type: ignore[no-untyped-def]
    evil = 'x"); import os; os.system("echo pwned'
    evil_gpu = "NVIDIA H100\nimport os; os.system('echo pwned')  #"
    loader = spec(
        evil,
        Candidate(dtype="bfloat16", attn="sdpa\nimport os", placement="cpu"),
        model_name=evil + "\n__import__('os')",
        revision="main'\nimport os",
        measured_on=evil_gpu,
        versions={"torch": "2.13\nimport os", "transformers": "5.24.0\r\nos.system('echo pwned')"},
    )
    source = render_loader(loader)
    tree = ast.parse(source)
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom)) for alias in node.names}
    assert "os" not in imported
    calls = {ast.unparse(node.func) for node in ast.walk(tree) if isinstance(node, ast.Call)}
    assert not any("system" in c or "__import__" in c for c in calls), calls
    # executing the module's top level defines the constants and runs nothing else
    namespace: dict[str, object] = {"__name__": "loader"}
    exec(compile(source, "loader.py", "exec"), namespace)  # noqa: S102 - the point of the test
    assert namespace["MODEL_ID"] == evil and namespace["REVISION"] == "main'\nimport os"
    assert "pwned" not in capfd.readouterr().out
    assert comment("a\nb\r\nc\x00d\u2028e") == "a b c d e"


def test_encoder_and_version_parsing() -> None:
    source = render_loader(spec("org/bert", Candidate(dtype="float16", attn="sdpa"), task="text-classification"))
    compile(source, "loader.py", "exec")
    assert "AutoModelForSequenceClassification" in source and "def forward(model, **inputs):" in source
    assert "GENERATE_KWARGS = {}" in source and "def generate" not in source
    assert version_tuple("2.11.0+cu130") == (2, 11) and version_tuple(None, (5, 0)) == (5, 0)


@pytest.mark.parametrize("kernel,backend", [("flash", "FLASH_ATTENTION"), ("cudnn", "CUDNN_ATTENTION"), ("math", "MATH")])
def test_pinned_kernels(kernel: str, backend: str) -> None:
    source = render_loader(spec("m", Candidate(dtype="bfloat16", attn="sdpa", sdpa_kernel=kernel)))
    compile(source, "loader.py", "exec")
    assert f"with torch.inference_mode(), sdpa_kernel([SDPBackend.{backend}]):" in source
    assert "from torch.nn.attention import SDPBackend, sdpa_kernel" in source


def test_a_flash_attention_winner_fails_in_one_line_without_its_package(tiny_models, tmp_path) -> None:  # type: ignore[no-untyped-def]
    versions = {**V5, "transformers": "5.17.0", "flash-attn-4": "4.0.0b36", "nvidia-cutlass-dsl": "4.8.1"}
    source = render_loader(spec(str(tiny_models["llama"]), Candidate(dtype="bfloat16", attn="flash_attention_4"), versions=versions))
    header = [line for line in source.splitlines() if line.startswith("#")]
    assert any(line.startswith("# Needs:") and "flash-attn-4==4.0.0b36" in line for line in header)
    assert (
        "# flash_attention_4 needs the flash-attn-4 package: pip install flash-attn-4==4.0.0b36 (with a CUDA 13 driver: "
        "pip install 'flash-attn-4[cu13]==4.0.0b36'); it runs on compute capability 9.x (Hopper) or 10.x (Blackwell)."
    ) in header
    assert "attn_implementation='flash_attention_4'" in source
    (tmp_path / "fa4_loader.py").write_text(source)
    # flash-attn-4 is not installed here: load_model() stops before loading, with one line naming the package
    child_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-c", "import fa4_loader; fa4_loader.load_model()"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=child_env,
        timeout=300,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        "ImportError: this loader runs attn_implementation='flash_attention_4', which needs the package flash-attn-4 "
        "(not installed here): pip install flash-attn-4==4.0.0b36 (with a CUDA 13 driver: pip install 'flash-attn-4[cu13]==4.0.0b36')"
    )
    fa2 = render_loader(spec("org/model", Candidate(dtype="float16", attn="flash_attention_2", quant="bnb-8bit")))
    compile(fa2, "loader.py", "exec")
    assert "importlib.metadata.version('flash-attn')" in fa2 and "pip install flash-attn --no-build-isolation" in fa2
