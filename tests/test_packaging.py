"""The project installs as users get it: a wheel with the migrations, and help for every command."""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import zipfile
from pathlib import Path

from conftest import REPO


def test_every_command_has_help() -> None:
    from autotune.cli import build_parser

    def walk(parser: argparse.ArgumentParser, path: str) -> list[str]:
        missing = []
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                helps = {a.dest: a.help for a in action._choices_actions}
                for name, sub in action.choices.items():
                    if not helps.get(name) or not sub.description or "Example" not in sub.description:
                        missing.append(f"{path} {name}")
                    missing += walk(sub, f"{path} {name}")
        return missing

    assert walk(build_parser(), "autotune") == []


def test_wheel_carries_migrations_and_entry_point(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(REPO)],
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    wheel = next(tmp_path.glob("autotune-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "autotune/migrations/env.py" in names and "autotune/migrations/script.py.mako" in names
    assert any(n.startswith("autotune/migrations/versions/0001") for n in names)
    packages = sorted(str(p.relative_to(REPO)) for p in (REPO / "autotune").rglob("__init__.py"))
    assert [p for p in packages if p not in names] == []  # every subpackage ships
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "autotune = autotune.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()

    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)], check=True, capture_output=True
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    proc = subprocess.run(
        [sys.executable, "-m", "autotune", "--db", str(tmp_path / "w.db"), "db", "upgrade"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "upgraded from schema revision none" in proc.stdout


def test_dockerfile_pins_the_tested_versions() -> None:
    """torch 2.11.0+cu130 and transformers 5.17.0 as on the GPU runs; the rest as requirements/dev.txt pins them (its test tools, pytest and ruff, stay out of the image)."""
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "torch==2.11.0 --index-url" in dockerfile and "ARG TORCH_INDEX=https://download.pytorch.org/whl/cu130" in dockerfile
    # FlashAttention-2 cannot build on a runtime image (no CUDA toolkit): no build path for it
    assert "transformers==5.17.0" in dockerfile and "ARG FLASH_ATTN=" not in dockerfile and "--no-build-isolation" not in dockerfile
    pins = [line.split("#")[0].strip() for line in (REPO / "requirements" / "dev.txt").read_text().splitlines()]
    shared = [pin for pin in pins if "==" in pin and not pin.startswith(("transformers==", "pytest==", "ruff=="))]
    assert len(shared) >= 8
    for pin in shared:
        assert (pin if "[" not in pin else f'"{pin}"') in dockerfile, pin


def test_health_check_and_service_run_real_commands() -> None:
    from autotune.cli import build_parser

    parser = build_parser()
    health = re.search(r"^HEALTHCHECK .* CMD (\[.*\])$", (REPO / "Dockerfile").read_text(), re.M)
    assert health, "no HEALTHCHECK in exec form"
    argv = json.loads(health.group(1))
    assert argv[:3] == ["autotune", "status", "--check-daemon"] and parser.parse_args(argv[1:]).check_daemon
    unit = (REPO / "deploy" / "autotune.service").read_text()
    start = re.search(r"^ExecStart=(.*)$", unit, re.M)
    assert start and shlex.split(start.group(1))[0].endswith("/autotune")
    assert parser.parse_args(shlex.split(start.group(1))[1:]).command == "daemon"
    assert re.search(r"^KillMode=mixed$", unit, re.M) and re.search(r"^TimeoutStopSec=\d+$", unit, re.M)
