"""The import graph: layers point down, the memory model sits below the search and the advisor,
and the trial worker stays its own small world. Read from the source (every ``import``,
including those inside functions), so a lazy import cannot hide an upward edge."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "autotune"

#: Each part and the parts it may import (besides the bottom: errors, units, workload, axes, candidate).
ALLOWED = {
    "memory": {"environment", "registry", "store"},
    # the search sends the worker its plain request types (autotune.worker.protocol), nothing more
    "search": {"memory", "environment", "store", "objective", "worker_env", "trials", "registry", "worker"},
    "advisor": {"memory", "environment", "bandwidth", "store", "objective", "worker_env", "registry"},
    "worker": {"memory", "environment"},
    "trials": {"memory", "environment", "store", "objective", "worker_env", "worker"},
    # process control beside the daemon: runs studies, writes a report when one finishes, and hands
    # its trial workers their GPU and cores (autotune.worker.protocol's variable name)
    "service": {"search", "store", "environment", "report", "worker"},
}
BOTTOM = {"", "errors", "units", "workload", "axes", "candidate", "flash", "stats", "files"}  # "": the package itself (its version)


def part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def edges() -> set[tuple[str, str, str]]:
    """``(importing module, imported module, where)`` for every import of autotune by autotune."""
    out = set()
    for path in ROOT.rglob("*.py"):
        name = "autotune." + ".".join(path.relative_to(ROOT).with_suffix("").parts).replace(".__init__", "")
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module]
            for target in targets:
                if target.startswith("autotune.") or target == "autotune":
                    out.add((name, target, f"{path.relative_to(ROOT.parent)}:{node.lineno}"))
    return out


def test_nothing_imports_upward_and_search_does_not_import_the_advisor() -> None:
    wrong = []
    for source, target, where in edges():
        mine, theirs = part(source), part(target)
        if mine == theirs or theirs in BOTTOM or mine not in ALLOWED:
            continue
        if theirs not in ALLOWED[mine]:
            wrong.append(f"{where}: {source} imports {target}")
    assert not wrong, "\n".join(sorted(wrong))


def test_the_search_imports_only_the_worker_s_protocol() -> None:
    used = {target for source, target, _ in edges() if part(source) == "search" and part(target) == "worker"}
    assert used <= {"autotune.worker.protocol"}


def test_the_worker_imports_only_the_conversion_rule_of_the_memory_model() -> None:
    used = {target for source, target, _ in edges() if part(source) == "worker" and part(target) == "memory"}
    assert used == {"autotune.memory.bnb"}


def test_only_the_store_and_the_migrations_touch_the_tables() -> None:
    """Every query goes through :class:`autotune.store.Store`: no other part imports the ORM rows."""
    wrong = sorted(
        f"{where}: {source} imports {target}"
        for source, target, where in edges()
        if target == "autotune.store.schema" and part(source) != "store"
    )
    assert not wrong, "\n".join(wrong)
    migrations = ROOT.parent / "migrations"
    assert any("autotune.store.schema" in p.read_text() for p in migrations.rglob("*.py"))  # env.py: the metadata


def test_nothing_but_the_cli_imports_process_control() -> None:
    wrong = sorted(
        f"{where}: {source} imports {target}"
        for source, target, where in edges()
        if part(target) == "service" and part(source) not in ("service", "cli")
    )
    assert not wrong, "\n".join(wrong)


def test_the_service_hands_the_worker_only_its_protocol() -> None:
    used = {target for source, target, _ in edges() if part(source) == "service" and part(target) == "worker"}
    assert used <= {"autotune.worker.protocol"}


def test_no_cycle_between_parts() -> None:
    graph: dict[str, set[str]] = {}
    for source, target, _ in edges():
        if part(source) != part(target) and part(source) and part(target):
            graph.setdefault(part(source), set()).add(part(target))

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for nxt in graph.get(start, ()):
            if nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt})):
                return True
        return False

    cycles = sorted(p for p in graph if reaches(p, p, {p}))
    assert not cycles, {p: sorted(graph[p]) for p in cycles}
