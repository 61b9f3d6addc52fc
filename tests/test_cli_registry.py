"""autotune add / models / remove / db, and every bad input they must refuse cleanly."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest
from conftest import run_autotune


def table_dump(db: Path) -> list[tuple]:
    if not db.exists():
        return []
    with sqlite3.connect(db) as conn:
        return [row for t in ("autotune_models", "autotune_studies", "autotune_trials") for row in conn.execute(f"SELECT * FROM {t}")]


def test_add_infers_task_for_each_architecture(cli, tiny_models) -> None:  # type: ignore[no-untyped-def]
    expected = {"llama": "text-generation", "falcon": "text-generation", "gpt2": "text-generation", "bert": "feature-extraction"}
    for kind, task in expected.items():
        result = cli("add", tiny_models[kind])
        assert result.code == 0, result.err
        assert result.out.startswith(f"added {tiny_models[kind]}") and task in result.out
    models = {m["model_type"]: m for m in json.loads(cli("models", "--json").out)}
    assert models["bert"]["workload"]["prompt_tokens"] == 128
    assert models["llama"]["capabilities"]["architecture"] == "LlamaForCausalLM"
    assert "sdpa" in models["llama"]["capabilities"]["attn_implementations"]
    assert "flex_attention" not in models["falcon"]["capabilities"]["attn_implementations"]


def test_long_prompt_and_prefill_only_workloads(cli, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A model whose context holds 32k tokens takes 32k prompts, and one new token (prefill only)."""
    import transformers

    from autotune.testing import build_tiny

    long_context = build_tiny("llama", tmp_path / "llama-64k", max_position_embeddings=65536)
    result = cli("add", long_context, "--prompt-tokens", "32768", "--new-tokens", "1", "--objective", "latency")
    assert result.code == 0, result.err
    assert "text-generation, 32768 prompt + 1 new tokens, objective latency" in result.out
    assert "prompt_tokens 32768 -> 8192" in cli("add", long_context, "--prompt-tokens", "8192", "--new-tokens", "16").out
    model = json.loads(cli("models", "--json").out)[0]
    assert (model["workload"]["prompt_tokens"], model["workload"]["new_tokens"]) == (8192, 16)
    if int(transformers.__version__.split(".")[0]) >= 5:  # Transformers 5 dispatches FlashAttention-4 for Llama
        assert "flash_attention_4" in model["capabilities"]["attn_implementations"]


def test_add_twice_updates_and_says_so(cli, tiny_models) -> None:  # type: ignore[no-untyped-def]
    assert cli("add", tiny_models["llama"], "--max-memory", "0.5", "--objective", "latency").code == 0
    result = cli("add", tiny_models["llama"], "--new-tokens", "64", "--max-memory", "600MB")
    assert result.code == 0
    assert result.out.startswith("updated") and "new_tokens 128 -> 64" in result.out and "max_memory 0.5 -> 600MB" in result.out
    model = json.loads(cli("models", "--json").out)[0]
    assert model["workload"]["objective"] == "latency"  # kept: not given again
    assert "already registered; workload unchanged" in cli("add", tiny_models["llama"]).out
    assert "max_memory 600MB -> -" in cli("add", tiny_models["llama"], "--max-memory", "none").out
    assert json.loads(cli("models", "--json").out)[0]["workload"]["max_memory"] is None


def test_hub_id_resolves_from_hf_cache_offline(cli, hf_cache) -> None:  # type: ignore[no-untyped-def]
    result = cli("add", "tiiuae/falcon-7b", "--max-memory", "12GiB")
    assert result.code == 0, result.err
    assert "added tiiuae/falcon-7b (FalconForCausalLM, from hf-cache)" in result.out
    table = cli("models").out
    assert "tiiuae/falcon-7b" in table and "hf-cache" in table and "12GiB" in table


def test_remove_keeps_trials_unless_purged(cli, tiny_models) -> None:  # type: ignore[no-untyped-def]
    cli("add", tiny_models["gpt2"])
    assert "trials stay" in cli("remove", tiny_models["gpt2"]).out
    assert "no models registered" in cli("models").out
    result = cli("remove", tiny_models["gpt2"])
    assert result.code == 2 and "is not registered" in result.err
    cli("add", tiny_models["gpt2"])
    assert "removed" in cli("remove", tiny_models["gpt2"], "--purge").out


def _bad_inputs(tmp: Path, models: dict[str, Path]) -> list[tuple[list[str], str]]:
    no_config = tmp / "empty"
    no_config.mkdir()
    malformed = tmp / "malformed"
    malformed.mkdir()
    (malformed / "config.json").write_text('{"model_type": "llama", ')
    unknown = tmp / "unknown"
    unknown.mkdir()
    (unknown / "config.json").write_text('{"model_type": "no-such-architecture"}')
    short = tmp / "short-context"
    short.mkdir()
    config = json.loads((models["llama"] / "config.json").read_text())
    (short / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 256}))
    llama = str(models["llama"])
    return [
        (["add", str(tmp / "missing")], "does not exist"),
        (["add", str(no_config)], "has no config.json"),
        (["add", str(malformed)], "is not valid JSON"),
        (["add", str(unknown)], "model_type 'no-such-architecture'"),
        (["add", "nobody/no-such-model"], "cannot resolve nobody/no-such-model offline"),
        (["add", llama, "--max-memory", "lots"], "cannot read memory size 'lots'"),
        (["add", llama, "--max-memory", "20Gb"], "bits"),
        (["add", llama, "--prompt-tokens", "0"], "--prompt-tokens must be a whole number from 1 to 16,777,216, got 0"),
        (["add", llama, "--new-tokens", "-5"], "--new-tokens must be a whole number from 1 to 16,777,216, got -5"),
        (["add", llama, "--new-tokens", "1000000000000"], "--new-tokens must be a whole number from 1 to 16,777,216, got 1000000000000"),
        (["add", llama, "--max-batch", "100000"], "--max-batch must be a whole number from 1 to 65,536, got 100000"),
        (
            ["add", llama, "--padding-share", "0.9999"],
            "leaves less than one real token in a row of 512 prompt tokens: give a share from 0 to 0.998",
        ),
        (["add", llama, "--padding-share", "nan"], "--padding-share must be in [0, 1)"),
        (["add", llama, "--min-quality", "inf"], "--min-quality must be in [0, 1]"),
        (
            ["add", str(short), "--prompt-tokens", "512", "--new-tokens", "128"],
            "the workload needs 640 positions (512 prompt + 128 new tokens) but LlamaForCausalLM has 256 "
            "(max_position_embeddings in its config)",
        ),
        (["add", str(short)], "needs 640 positions (512 prompt + 128 new tokens) but LlamaForCausalLM has 256"),
        (["add", llama, "--prompt-tokens", "1000"], "needs 1128 positions (1000 prompt + 128 new tokens) but LlamaForCausalLM has 1024"),
        (["add", str(models["gpt2"]), "--new-tokens", "600"], "but GPT2LMHeadModel has 1024 (n_positions in its config)"),
        # the registered encoder, updated past its positions: only the prompt counts
        (["add", str(models["bert"]), "--prompt-tokens", "1025"], "needs 1025 positions (1025 tokens) but BertModel has 1024"),
        (["add", llama, "--objective", "speed"], "invalid choice: 'speed'"),
        (["add", llama, "--prompt-tokens", "many"], "expected a whole number"),
    ]


def test_bad_input_is_one_line_exit_2_and_no_change(cli, tiny_models, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cli("add", tiny_models["bert"])
    before = table_dump(cli.db)
    for args, words in _bad_inputs(tmp_path, tiny_models):
        result = cli(*args)
        assert result.code == 2, (args, result)
        assert len(result.err.strip().splitlines()) == 1, (args, result.err)
        assert words in result.err, (args, result.err)
        assert "Traceback" not in result.err
        assert table_dump(cli.db) == before


def test_bad_database_locations(cli, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"\x00\x01 definitely not sqlite")
    result = cli("--db", junk, "models")
    assert result.code == 2 and f"{junk} is not an autotune database" in result.err
    assert junk.read_bytes() == b"\x00\x01 definitely not sqlite"
    blocker = tmp_path / "plainfile"
    blocker.write_text("x")
    result = cli("--db", blocker / "autotune.db", "models")
    assert result.code == 2 and "cannot create the database directory" in result.err
    monkeypatch.setenv("AUTOTUNE_DB", str(tmp_path / "env.db"))
    assert cli("db", "path").out.strip() == str(tmp_path / "env.db")
    assert cli("--db", tmp_path / "flag.db", "db", "path").out.strip() == str(tmp_path / "flag.db")


def test_db_upgrade(cli, tmp_path) -> None:  # type: ignore[no-untyped-def]
    db = tmp_path / "u.db"
    assert "upgraded from schema revision none to" in cli("--db", db, "db", "upgrade").out
    assert "nothing to do" in cli("--db", db, "db", "upgrade").out


def test_real_process_entry_point(tmp_path, hf_cache) -> None:  # type: ignore[no-untyped-def]
    env = {"AUTOTUNE_DB": str(tmp_path / "p.db")}
    result = run_autotune("add", "tiiuae/falcon-7b", "--prompt-tokens", "32", env=env)
    assert result.code == 0, result.err
    result = run_autotune("add", str(tmp_path / "nope"), env=env)
    assert result.code == 2 and result.err.count("\n") == 1 and "Traceback" not in result.err
    assert "tiiuae/falcon-7b" in run_autotune("models", env=env).out


@pytest.mark.parametrize("command", ["add", "estimate"])
def test_an_unreachable_hub_fails_fast_in_one_line(command: str, tmp_path: Path, tiny_models) -> None:  # type: ignore[no-untyped-def]
    """Not offline, but nothing answers: one line within seconds, not huggingface_hub's half a minute of retries."""
    from autotune.store import Store

    db = tmp_path / "hub.db"
    with Store.open(str(db)):
        pass
    before = table_dump(db)
    env = {
        "AUTOTUNE_DB": str(db),
        "HF_HOME": str(tmp_path / "hf"),
        "HF_HUB_CACHE": str(tmp_path / "hf" / "hub"),
        "HF_ENDPOINT": "http://127.0.0.1:9",
        "HF_HUB_OFFLINE": "0",
        "TRANSFORMERS_OFFLINE": "0",
    }
    started = time.monotonic()
    result = run_autotune(command, "tiiuae/falcon-7b", env=env, timeout=60)
    elapsed = time.monotonic() - started
    assert result.code == 2 and len(result.err.strip().splitlines()) == 1, result.err
    assert "the Hub at http://127.0.0.1:9 cannot be reached (127.0.0.1:9: Connection refused)" in result.err
    assert "Retrying" not in result.err and "Traceback" not in result.err
    assert elapsed < 10, elapsed  # process start included; huggingface_hub 2.4.0 alone retried for 26 s (measured here)
    assert table_dump(db) == before
