"""How much of a space the study must measure to find its best: study vs exhaustive, on the CPU.

1. Builds a tiny random-weight Llama and measures every candidate of a small space with the real
   trial worker (the exhaustive run: its best is the reference, and its time the yardstick).
2. Runs the study on the same space with the real worker for a few seeds (the live runs), each
   with a fresh store and quality-reference cache, and notes when it first measured a candidate
   within 97% of the exhaustive best (judged by the exhaustive measurement of that candidate, so
   timing noise between runs does not move the goalpost) and when it stopped.
3. Measures the exhaustive top three once more, to show how large the timing noise is next to
   the differences between candidates.
4. Replays the study on the exhaustive measurements for more seeds (no worker: each candidate
   costs the time it took in the exhaustive run), with the baselines and without them (TPE
   alone), next to a random order of the same candidates.

Prints one table: trials and time until a candidate within 97% of the exhaustive best was
measured, how good the best candidate found within a quarter of the exhaustive time is (by its
exhaustive measurement), and when the study stopped. The issue's target: 97% of the exhaustive
best in a quarter of the exhaustive time or less.

    python benchmarks/search_efficiency.py [--live-seeds 2] [--replay-seeds 20] [--space SPEC]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from autotune.api import add_model  # noqa: E402
from autotune.environment import probe  # noqa: E402
from autotune.search.results import progress  # noqa: E402
from autotune.search.space import parse_restriction  # noqa: E402
from autotune.search.study import SearchSettings, StudySearch, format_value  # noqa: E402
from autotune.store import Store  # noqa: E402

#: bitsandbytes 4-bit on the CPU takes one to two minutes a candidate here (and a random model
#: fails the quality floor with it), so the default space is unquantized: 12 candidates.
SPACE = "dtype=fp32,bf16,fp16 attn=eager,sdpa,sdpa[flash],sdpa[math] quant=none static_cache=false"
WORKLOAD = {"device": "cpu", "prompt_tokens": 32, "new_tokens": 16, "max_batch": 4}
#: Small, but large enough that compute, not per-call overhead, sets the pace (about 30M parameters).
MODEL = dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=4, vocab_size=4096)
TARGET = 0.97


def open_study(root: Path, name: str, model_dir: Path) -> tuple[Store, Any]:
    store = Store.open(str(root / f"{name}.db"))
    model = add_model(store, str(model_dir), WORKLOAD).model
    return store, model


def run_study(
    store: Store, model: Any, settings: SearchSettings, *, measure: Any = None, costs: dict[str, float] | None = None
) -> list[tuple[str, float, str]]:
    """Run a study to its end: ``(candidate key, seconds it cost, origin)`` per measured candidate."""
    environment = probe()
    search = StudySearch(store, model, environment, store.record_environment(environment), settings, measure=measure)
    steps = []
    while True:
        started = time.monotonic()
        step = search.step()
        took = time.monotonic() - started
        if step.result is not None:
            key = step.result.key
            steps.append((key, costs[key] if costs is not None else took, step.result.origin))
            print(f"    {len(steps):2d}. {step.describe(search.metric)}", file=sys.stderr, flush=True)
        if step.finished:
            print(f"    stop: {step.study.stop_reason}", file=sys.stderr, flush=True)
            return steps


def reach(steps: list[tuple[str, float, str]], good: set[str]) -> tuple[int | None, float | None]:
    """Trials and seconds until the first candidate in ``good`` was measured (``None``: never)."""
    spent = 0.0
    for index, (key, seconds, _) in enumerate(steps, 1):
        spent += seconds
        if key in good:
            return index, spent
    return None, None


class Replay:
    """A measure function that copies the exhaustive run's rows of a candidate instead of launching a worker."""

    def __init__(self, rows: dict[str, list[Any]]) -> None:
        self.rows = rows

    def __call__(
        self,
        store: Store,
        model: Any,
        candidate: Any,
        batch_sizes: Any,
        *,
        environment: Any,
        environment_id: int,
        study: Any,
        origin: str = "search",
        **_: Any,
    ) -> list[Any]:
        out = []
        for old in self.rows[candidate.key()]:
            new = store.start_trial(study.id, candidate, old.batch_size, origin=origin)
            out.append(
                store.finish_trial(
                    new.id,
                    old.status,
                    reason=old.reason,
                    metrics=old.metrics,
                    effective=old.effective,
                    details=old.details,
                    feasible=old.feasible,
                    objective_value=old.objective_value,
                )
            )
        return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--space", default=SPACE, help=f"the space (default: {SPACE})")
    parser.add_argument("--live-seeds", type=int, default=2, help="studies run with the real worker (default 2)")
    parser.add_argument("--live-trials", type=int, default=6, help="trial budget of a live study (default 6)")
    parser.add_argument("--replay-seeds", type=int, default=20, help="studies replayed on the exhaustive measurements (default 20)")
    parser.add_argument("--patience", type=int, default=8)
    parser.add_argument(
        "--worker-options",
        default="max_repeats=5",
        help="timing knobs for every worker, e.g. min_repeats=2,max_repeats=5 (default max_repeats=5)",
    )
    parser.add_argument("--keep", metavar="DIR", help="work in DIR and keep the stores (default: a temporary directory)")
    args = parser.parse_args(argv)

    root = Path(args.keep or tempfile.mkdtemp(prefix="autotune-search-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from autotune.testing import build_tiny

    model_dir = build_tiny("llama", root / "llama", **MODEL)
    restrict = parse_restriction(args.space)
    options = {k: float(v) if "." in v else int(v) for k, v in (o.split("=") for o in args.worker_options.split(",") if o)}

    # 1. exhaustive
    print(f"exhaustive run over {args.space} ...", file=sys.stderr, flush=True)
    os.environ["AUTOTUNE_CACHE"] = str(root / "cache-exhaustive")
    store, model = open_study(root, "exhaustive", model_dir)
    started = time.monotonic()
    exhaustive = run_study(store, model, SearchSettings(seed=0, patience=10**6, restrict=restrict, worker_options=options))
    exhaustive_s = time.monotonic() - started
    state = progress(store.trials(), model.workload)
    rows: dict[str, list[Any]] = {}
    for trial in store.trials():
        rows.setdefault(trial.candidate.key(), []).append(trial)
    costs = {key: seconds for key, seconds, _ in exhaustive}
    values = {r.key: r.value for r in state.results}
    labels = {r.key: r.candidate.label() for r in state.results}
    metric = "throughput_tokens_per_s"
    best_key = state.best.key
    best = values[best_key]
    good = {k for k, v in values.items() if v is not None and v >= TARGET * best}
    store.close()

    table: list[list[str]] = []

    def at_quarter(steps: list[tuple[str, float, str]]) -> float | None:
        """The exhaustive value of the best candidate measured within a quarter of the exhaustive time."""
        spent, found = 0.0, None
        for key, seconds, _ in steps:
            spent += seconds
            if spent > exhaustive_s / 4:
                break
            if values.get(key) is not None and (found is None or values[key] > found):
                found = values[key]
        return found

    def pct(value: float | None) -> str:
        return "-" if value is None else f"{value / best:.0%}"

    def row(name: str, seed: str, runs: list[list[tuple[str, float, str]]], stops: bool = True) -> None:
        reached = [reach(r, good) for r in runs]
        trials = [t for t, _ in reached if t is not None]
        seconds = [x for _, x in reached if x is not None]
        quarter = [at_quarter(r) or 0.0 for r in runs]
        stop_trials = [len(r) for r in runs]
        stop_seconds = [sum(x for _, x, _ in r) for r in runs]
        many = len(runs) > 1

        def show(items: list[float], fmt: str, higher_is_worse: bool = True) -> str:
            if not items:
                return "not reached"
            mid = fmt.format(statistics.median(items))
            worst = fmt.format(max(items) if higher_is_worse else min(items))
            missed = len(runs) - len(items)
            return (f"{mid} ({worst})" if many else mid) + (f", {missed} missed" if missed else "")

        table.append(
            [
                name,
                seed,
                show(trials, "{:.0f}"),
                show([x / exhaustive_s for x in seconds], "{:.0%}"),
                show([q / best for q in quarter], "{:.0%}", higher_is_worse=False),
                show(stop_trials, "{:.0f}") if stops else "-",
                show([x / exhaustive_s for x in stop_seconds], "{:.0%}") if stops else "-",
            ]
        )

    # 2. live studies
    for seed in range(args.live_seeds):
        print(f"live study, seed {seed} ...", file=sys.stderr, flush=True)
        os.environ["AUTOTUNE_CACHE"] = str(root / f"cache-live-{seed}")
        store, model = open_study(root, f"live-{seed}", model_dir)
        steps = run_study(
            store,
            model,
            SearchSettings(seed=seed, patience=args.patience, max_trials=args.live_trials, restrict=restrict, worker_options=options),
        )
        store.close()
        row("study, real worker", f"seed {seed}, {args.live_trials}-trial budget", [steps])

    # 3. the noise: the top three measured once more
    print("re-measuring the exhaustive top three ...", file=sys.stderr, flush=True)
    os.environ["AUTOTUNE_CACHE"] = str(root / "cache-exhaustive")
    store, model = open_study(root, "recheck", model_dir)
    environment = probe()
    environment_id = store.record_environment(environment)
    study = store.study_for(model, environment_id)
    top = sorted((k for k in values if values[k] is not None), key=lambda k: -values[k])[:3]
    from autotune.trials import measure_candidate

    again: dict[str, float | None] = {}
    for key in top:
        candidate = rows[key][0].candidate
        measure_candidate(
            store,
            model,
            candidate,
            sorted({t.batch_size for t in rows[key]}),
            environment=environment,
            environment_id=environment_id,
            study=study,
            origin="recheck",
            worker_options=options,
        )
        result = [r for r in progress(store.trials(study_id=study.id), model.workload).results if r.key == key]
        again[key] = result[0].value if result else None
    store.close()

    # 4. replays on the exhaustive measurements
    replay = Replay(rows)
    for name, baselines in (("study (replayed)", True), ("TPE alone (replayed)", False)):
        runs = []
        for seed in range(args.replay_seeds):
            store, model = open_study(root, f"replay-{int(baselines)}-{seed}", model_dir)
            settings = SearchSettings(seed=seed, patience=args.patience, restrict=restrict, baselines=baselines)
            runs.append(run_study(store, model, settings, measure=replay, costs=costs))
            store.close()
        row(name, f"{len(runs)} seeds: median (worst)", runs)
    shuffled = []
    for seed in range(args.replay_seeds):
        keys = list(costs)
        random.Random(seed).shuffle(keys)
        shuffled.append([(k, costs[k], "random") for k in keys])
    row("random order (replayed)", f"{len(shuffled)} seeds: median (worst)", shuffled, stops=False)

    print()
    print(f"space: {args.space} -> {len(costs)} candidates, tiny Llama {MODEL}, workload {WORKLOAD}, worker {options}")
    print(
        f"exhaustive: {len(exhaustive)} trials in {exhaustive_s:.0f} s; best {labels[best_key]} "
        f"{format_value(metric, best)}; within {TARGET:.0%} of it: {', '.join(sorted(labels[k] for k in good))}"
    )
    print(
        "noise, the top three measured again: "
        + "; ".join(f"{labels[k]} {format_value(metric, values[k])} then {format_value(metric, again[k])}" for k in top)
    )
    print()
    headers = [
        "run",
        "",
        "trials to 97%",
        "time to 97% (share of exhaustive)",
        "best found in 25% of the time",
        "trials at stop",
        "time at stop (share)",
    ]
    widths = [max(len(str(r[i])) for r in [headers, *table]) for i in range(len(headers))]
    for line in [headers, *table]:
        print("  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip())
    print()
    print("every candidate's exhaustive measurement:")
    for key, seconds, _ in sorted(exhaustive, key=lambda e: -(values[e[0]] or 0)):
        print(f"  {labels[key]:<24} {format_value(metric, values[key]):>12}  {seconds:5.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
