"""A newcomer's first steps: the demo says how to reach what it made, and a tiny model of one's own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO, run_autotune


def _testing(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "autotune.testing", *args], capture_output=True, text=True, env=env, timeout=300)


def test_demo_ends_with_the_commands_that_reach_its_autotune_and_database(tmp_path: Path) -> None:
    # Stand-ins for the demo's virtual environment: an `autotune` and a `python` that only succeed.
    venv_bin = tmp_path / "venv dir" / "bin"
    venv_bin.mkdir(parents=True)
    for name in ("autotune", "python"):
        (venv_bin / name).write_text("#!/bin/sh\nexit 0\n")
        (venv_bin / name).chmod(0o755)
    demo = tmp_path / "demo"
    env = {key: value for key, value in os.environ.items() if not key.startswith("AUTOTUNE_")}
    env.update(PATH=f"{venv_bin}:/usr/bin:/bin", AUTOTUNE_DEMO_DIR=str(demo))
    proc = subprocess.run(["bash", str(REPO / "scripts" / "demo.sh")], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[-4] == "The demo's autotune and its database, from any shell:"
    export, status, recommend = (line.strip() for line in lines[-3:])
    assert status == "autotune status" and recommend == f"autotune recommend {demo / 'SmolLM2-135M-Instruct'}"
    # The printed line, run in a fresh shell with an ordinary PATH, reaches both.
    check = subprocess.run(
        ["bash", "-c", f'{export}; command -v autotune; echo "$AUTOTUNE_DB"; echo "$AUTOTUNE_CACHE"'],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        timeout=30,
    )
    assert check.returncode == 0, check.stderr
    assert check.stdout.splitlines() == [str(venv_bin / "autotune"), str(demo / "autotune.db"), str(demo / "cache")]


def test_a_tiny_model_of_ones_own(tmp_path: Path) -> None:
    helped = _testing("--help")
    assert helped.returncode == 0 and "llama, falcon, gpt2, bert" in helped.stdout and "--trained" in helped.stdout
    for args, words in (
        (["t5", str(tmp_path / "x")], "invalid choice: 't5'"),
        (["llama"], "required: DIR"),
        (["bert", str(tmp_path / "x"), "--trained"], "--trained builds causal LMs"),
    ):
        bad = _testing(*args)
        assert bad.returncode == 2 and len(bad.stderr.splitlines()) == 1 and words in bad.stderr, bad.stderr
    made = _testing("gpt2", str(tmp_path / "tiny-gpt2"), "--seed", "3")
    assert made.returncode == 0 and made.stdout.strip() == str(tmp_path / "tiny-gpt2"), made.stderr
    again = _testing("gpt2", str(tmp_path / "tiny-gpt2"))
    assert again.returncode == 2 and "already holds a model" in again.stderr
    added = run_autotune("--db", str(tmp_path / "t.db"), "add", str(tmp_path / "tiny-gpt2"), "--prompt-tokens", "16")
    assert added.code == 0 and "GPT2LMHeadModel" in added.out, added.err
