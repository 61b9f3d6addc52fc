"""The explanations, in words: why every option the winner did not take lost (the verdicts), how
the search came to the winner, and the notes and figures a recommendation prints.

:mod:`autotune.advisor.recommend` chooses the winner and calls :func:`explain` and the prose
helpers here; the report (:mod:`autotune.report`) shows what they wrote. The options explained,
their names in words and the one-option changes asked about (the what-ifs) are the axes'
(:mod:`autotune.axes`). It reads records only: no torch, no Transformers.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from itertools import product
from typing import Any

from autotune import axes
from autotune.advisor.scoring import behind_pct, best_of, score_trial
from autotune.candidate import ATTENTIONS, DTYPE_SHORT, DTYPES, QUANTS, SDPA_KERNELS, Candidate, rejection
from autotune.environment import Environment
from autotune.objective import format_floor, format_quality, metric_for
from autotune.store import ModelRecord, StudyRecord, TrialRecord
from autotune.units import format_gib
from autotune.workload import Workload

#: Statuses of trials that ran and failed (the candidate could be tried, and broke).
FAILED = ("oom", "crash", "timeout", "error")
#: Statuses of candidates that could not be tried here.
UNAVAILABLE = ("unsupported", "rejected")

BETTERTRANSFORMER = (
    "BetterTransformer: not available: to_bettertransformer() is gone from Transformers 5 and Optimum 2; "
    "its successor is SDPA, Transformers' default attention"
)

_METRIC_UNITS = {
    "throughput_tokens_per_s": ("tok/s", "{:.1f}"),
    "sequences_per_s": ("seq/s", "{:.1f}"),
    "latency_p50_ms": ("ms p50", "{:.1f}"),
    "peak_memory_bytes": ("", "{}"),
}


@dataclass(frozen=True)
class Verdict:
    """Why one option lost.

    ``kind`` is ``slower``, ``over-memory``, ``below-quality``, ``infeasible``, ``failed``,
    ``unsupported`` (as measured; other variants may run), ``unavailable`` (every variant refused
    here) or ``not-measured``; ``reason`` is the sentence shown to the user.
    """

    axis: str
    option: str
    kind: str
    reason: str
    trial_id: int | None = None
    behind_pct: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "axis": self.axis,
            "option": self.option,
            "kind": self.kind,
            "reason": self.reason,
            "trial_id": self.trial_id,
            "behind_pct": self.behind_pct,
        }


def search_notes(trials: list[TrialRecord], study: StudyRecord, best: TrialRecord) -> list[str]:
    """How the search came to the winner (which prior put it early), how it stopped, and what a
    compiled winner costs at the first request after a cold start."""
    notes = []
    candidates = []
    for t in sorted(trials, key=lambda t: t.number):
        if t.candidate.key() not in candidates:
            candidates.append(t.candidate.key())
    position = candidates.index(best.candidate.key()) + 1 if best.candidate.key() in candidates else None
    prior = best.details.get("prior") if isinstance(best.details, dict) else None
    if position is not None:
        where = f"measured as candidate {position} of {len(candidates)}"
        if best.origin == "baseline":
            notes.append(f"{where}: a baseline")
        elif prior and prior.get("expectation", {}).get("effects"):
            effects = "; ".join(
                f"{_effect_label(e)} x{e['factor']:.2f} ({e['source']}: {e['reason']})" for e in prior["expectation"]["effects"]
            )
            label = "earlier studies on this kind of GPU (warm start)" if best.origin == "warm-start" else "what was known before measuring"
            notes.append(f"{where}, put early by {label}: expected x{prior['expectation']['factor']:.2f} the plain load from {effects}")
        else:
            notes.append(f"{where} ({best.origin})")
    if study.stop_reason:
        notes.append(f"the study stopped: {study.stop_reason}")
    screened = sum(1 for t in trials if t.status == "screened")
    if screened:
        notes.append(
            f"{screened} trial{'s' * (screened != 1)} {'were' if screened != 1 else 'was'} screened out after one timed run "
            f"(far behind the best; `autotune trials` marks them)"
        )
    if best.metrics.get("compile_seconds") and best.candidate.static_cache:
        same = [
            t
            for t in trials
            if t.candidate.key() == best.candidate.key()
            and t.batch_size == best.batch_size
            and t.metrics.get("compile_seconds") is not None
        ]
        cold = [t for t in same if not (t.details.get("compile_cache") or {}).get("warm")]
        if cold:
            first = min(cold, key=lambda t: t.number)
            notes.append(
                f"a cold start compiles before the first request: {first.metrics['compile_seconds']:.0f} s measured in "
                f"trial {first.number} (torch.compile's caches, kept on disk, make later starts faster)"
            )
        else:
            notes.append(f"compiling took {best.metrics['compile_seconds']:.0f} s with a warm compile cache; a cold start takes longer")
    return notes


def _effect_label(effect: dict[str, Any]) -> str:
    if effect.get("axis") == "static_cache":
        return "static cache"
    if effect.get("axis") == "memory":
        return "forecast"
    return f"{effect.get('axis')} {effect.get('value')}"


#: The reference's next-token entropy, as a share of ``log V``, above which the weights look
#: random or untrained (a trained model, even on the synthetic prompt, stays well below).
FLAT_REFERENCE = 0.95


def flat_reference_note(trials: Iterable[TrialRecord]) -> str | None:
    """A note when the quality reference's next-token distributions are nearly flat."""
    values = [t.details.get("quality_reference_flatness") for t in trials if t.ok]
    values = [v for v in values if isinstance(v, (int, float))]
    if not values or min(values) < FLAT_REFERENCE:
        return None
    return (
        f"the quality reference's next-token distributions are nearly flat (entropy {min(values):.1%} of the largest "
        f"possible): the weights look random or untrained, so token agreement reflects near-ties, not quality; "
        f"if that is expected, set the floor with --min-quality"
    )


#: Share of the machine's CPU time other processes may take while a trial is timed before its
#: timings are called busy. A quiet machine shows a few percent; two test suites beside a worker on
#: a 2-core machine showed 35-55% latency spreads (fp32 timed faster than bf16, which is 2x faster).
BUSY_CPU_SHARE = 0.25


def busy_note(trial: TrialRecord) -> str | None:
    """A warning when the machine was busy while ``trial`` was timed (other processes on its CPUs or GPU)."""
    machine = trial.details.get("machine")
    if not isinstance(machine, dict):
        return None
    what = []
    share = machine.get("other_cpu_share")
    if isinstance(share, (int, float)) and share >= BUSY_CPU_SHARE:
        load = f", load {machine['load_1m']}" if machine.get("load_1m") is not None else ""
        what.append(f"other processes took {share:.0%} of the {machine.get('cpus') or '?'} CPUs{load}")
    others = machine.get("gpu_other_processes") or []
    if others and (machine.get("gpu_own_listed", True) or len(others) > 1):
        what.append(
            f"{len(others)} other process{'es' * (len(others) != 1)} on its GPU (pid {', '.join(str(o.get('pid')) for o in others[:3])})"
        )
    if not what:
        return None
    return (
        f"the machine was busy while {trial.candidate.label()} at batch {trial.batch_size} was timed ({'; '.join(what)}): "
        f"its figures may not hold on a quiet machine"
    )


def quality_notes(trial: TrialRecord, workload: Workload) -> list[str]:
    """What the winner's quality was measured on, and whether its agreement is within the noise of the floor."""
    quality = trial.details.get("quality")
    if not isinstance(quality, dict):
        return []
    notes = []
    if quality.get("input") == "random-ids":
        notes.append(f"quality was measured on {quality.get('source') or 'seeded token ids'}, not on text")
    elif quality.get("input") == "text":
        extended = ", both halves: it was near the floor" if quality.get("extended") else ""
        notes.append(f"quality was measured on text ({quality.get('source')}{extended})")
    low, high = trial.metrics.get("quality_agreement_low"), trial.metrics.get("quality_agreement_high")
    agreement = trial.metrics.get("quality_token_agreement")
    if low is not None and high is not None and agreement is not None and low <= workload.min_quality <= high:
        notes.append(
            f"its token agreement {agreement:.1%} (95% interval {low:.1%}-{high:.1%}, "
            f"{trial.metrics.get('quality_positions') or '?'} positions) is within the noise of the floor "
            f"{workload.min_quality:.0%}: more text would settle it (--quality-prompts with more prompts)"
        )
    return notes


def generation_notes(trial: TrialRecord) -> list[str]:
    """What the winner was timed on where generation strategies are compared (text, at batch 1), and
    its tokens per forward pass."""
    generation = trial.details.get("generation")
    if not isinstance(generation, dict) or not generation.get("text"):
        return []
    strategy = generation.get("strategy") or "plain"
    per = generation.get("tokens_per_forward")
    accepted = f", {per:.2f} tokens per forward pass" if isinstance(per, (int, float)) else ""
    note = f"timed on text at batch 1 ({generation['text']}), generation {strategy}{accepted}"
    if "built-in" in str(generation["text"]):
        note += (
            "; prompt lookup and assistants gain where answers repeat the prompt, which the built-in prompts seldom ask: "
            "time them on your own (add --quality-prompts)"
        )
    return [note]


def nothing_measured(name: str) -> str:
    return (
        f"nothing measured for {name} yet: run `autotune tune {name}` to search and measure, "
        f"or measure one candidate with `autotune measure {name} --dtype bfloat16 --attn sdpa --batch 1,4,16`"
    )


def count_text(items: Iterable[str]) -> str:
    counts: dict[str, int] = {}
    for item in items:
        counts[item] = counts.get(item, 0) + 1
    return ", ".join(f"{n}x {k}" if n > 1 else k for k, n in counts.items())


def constraints_text(workload: Workload, limit_bytes: int | None) -> str:
    limit = f"memory limit {format_gib(limit_bytes)}" if limit_bytes else "no memory limit"
    return f"{limit}, quality floor {format_floor(workload.task, workload.min_quality)}"


def option_of(candidate: Candidate, axis: str) -> str | None:
    """The user's name for ``candidate``'s choice on ``axis`` (``None``: the axis does not apply),
    as the axis declares it (:attr:`autotune.axes.Axis.option`)."""
    try:
        declared = axes.axis(axis)
    except KeyError:
        raise ValueError(axis) from None
    point = candidate.to_dict()
    if declared.name not in axes.BUILT_IN and not declared.applies(point):
        return None
    return declared.option(point)


def explained_axes() -> tuple[str, ...]:
    """The options users ask about, as one-option changes of the winner, in the order they are explained."""
    return axes.explained_axes()


def _what_ifs() -> list[tuple[str, dict[str, Any]]]:
    """One-option changes of a winner to ask :func:`autotune.candidate.rejection` about, when no
    trial tried them: each explained axis's :attr:`~autotune.axes.Axis.what_ifs`."""
    return [(name, change) for name in explained_axes() for change in axes.axis(name).what_ifs]


def _what_if(winner: Candidate, change: dict[str, Any]) -> Candidate | None:
    """The winner changed by ``change``, moved to the nearest candidate the search would try, in
    canonical form (:func:`autotune.axes.canonical`, the form the space's candidates have)."""
    data = {**winner.to_dict(), **change}
    if winner.runtime == "onnxruntime":  # the what-ifs are PyTorch loading options: ask about them in PyTorch
        data.update(runtime="pytorch")
    if data["quant"] == "bnb-8bit":
        data["static_cache"] = False
        if data["dtype"] == "bfloat16":
            data["dtype"] = "float16"
    elif str(data["quant"]).startswith("bnb-4bit"):
        data["static_cache"] = False
    if change.get("static_cache"):
        data["quant"] = "none"
    if str(data["attn"]).startswith("flash_attention") and "float32" in (data["dtype"], data.get("compute_dtype")):
        # FlashAttention is only ever tried in half precision: ask about that
        data.update(dtype="float16" if data["quant"] == "bnb-8bit" else "bfloat16", compute_dtype=None)
    try:
        return Candidate.from_dict(axes.canonical(data))
    except Exception:  # noqa: BLE001 - an impossible combination is simply not asked about
        return None


def explain(
    trials: list[TrialRecord],
    study: StudyRecord,
    winner: TrialRecord | None,
    workload: Workload,
    environment: Environment,
    model: ModelRecord,
) -> list[Verdict]:
    """For each option the winner did not take, why it lost — comparing like with like.

    An option that was measured is judged by its measurements that differ from the winner in the
    fewest other ways; when even those differ in more than the option, the verdict names the other
    differences. An option nobody measured is "not available" only when the validity rules refuse
    every variant of it here; "over the memory limit" only when the forecast left out every variant
    the rules allow; otherwise "not measured yet", with the command that measures it.
    Without a winner (nothing feasible), every option that was tried is explained on its own terms.
    """
    verdicts: list[Verdict] = []
    rejected = _study_rejections(study)
    best_value = score_trial(workload, winner, environment).value if winner is not None else None
    variants = _Variants(
        environment,
        model,
        workload,
        {t.candidate.placement for t in trials} | ({winner.candidate.placement} if winner is not None else set()),
    )
    seen: set[tuple[str, str]] = set()
    for axis in explained_axes():
        mine = option_of(winner.candidate, axis) if winner is not None else None
        if winner is not None and mine is None and axis == "double_quant":
            continue  # the winner is not 4-bit: "bnb 4-bit" already says why 4-bit lost
        groups: dict[str, list[TrialRecord]] = {}
        for trial in trials:
            option = option_of(trial.candidate, axis)
            if option is None or option == mine or trial.status == "running":
                continue
            if axis == "sdpa_kernel" and mine is None and trial.candidate.sdpa_kernel is None:
                continue  # the winner is not SDPA: "sdpa" already says why; only pinned kernels are news
            groups.setdefault(option, []).append(trial)
        for option, group in groups.items():
            if winner is None and axis not in ("quant", "attn", "dtype", "static_cache"):
                continue
            verdict = _verdict(axis, option, group, workload, environment, best_value, winner, variants, model)
            if verdict is not None:
                verdicts.append(verdict)
                seen.add((axis, option))
        # options nobody measured: those the search left out, then one-option changes of the winner
        unmeasured: dict[str, Candidate] = {}
        for candidate, _reason, _kind, _pattern in rejected:
            option = option_of(candidate, axis)
            if option is not None and option != mine and option not in groups:
                unmeasured.setdefault(option, candidate)
        if winner is not None:
            for what_axis, change in _what_ifs():
                candidate = _what_if(winner.candidate, change) if what_axis == axis else None
                option = option_of(candidate, axis) if candidate is not None else None
                if option is not None and option != mine and option not in groups and candidate.key() != winner.candidate.key():
                    unmeasured[option] = candidate  # the closest variant: the one to ask about first
        for option, example in unmeasured.items():
            if (axis, option) in seen:
                continue
            verdict = _unmeasured_verdict(axis, option, example, rejected, variants, winner, model)
            if verdict is not None:
                verdicts.append(verdict)
                seen.add((axis, option))
    verdicts.append(Verdict("runtime", "BetterTransformer", "unavailable", BETTERTRANSFORMER.split(": ", 1)[1]))
    order = {axis: i for i, axis in enumerate(explained_axes())}
    return sorted(verdicts, key=lambda v: order.get(v.axis, len(order)))


class _Variants:
    """Every PyTorch loading configuration of the placements in play, and what the rules say of each."""

    def __init__(self, environment: Environment, model: ModelRecord, workload: Workload, placements: set[str]) -> None:
        self.environment, self.model, self.workload = environment, model, workload
        supported = model.capabilities.get("attn_implementations") or ["eager", "sdpa"]
        # what the search enumerates (the others are left out with their reason, in the study's rejections)
        attns = [a for a in ATTENTIONS if a in supported or a == "flash_attention_2"]
        self.all: list[tuple[Candidate, str | None]] = []
        extra = [a for a in axes.extra_axes() if a.owner in (None, "pytorch")]
        for placement in sorted(placements or {"cpu"}):
            for dtype, attn, kernel, quant, double, static, *more in product(
                DTYPES, attns, (None, *SDPA_KERNELS), QUANTS, (False, True), (False, True), *(a.values for a in extra)
            ):
                if kernel is not None and attn != "sdpa" or double and not str(quant).startswith("bnb-4bit"):
                    continue
                point = {"dtype": dtype, "attn": attn, "quant": quant, "static_cache": static, "placement": placement}
                if any(v != a.default and not a.applies(point) for a, v in zip(extra, more)):
                    continue
                try:
                    candidate = Candidate(
                        dtype=dtype,
                        attn=attn,
                        sdpa_kernel=kernel,
                        quant=quant,
                        double_quant=double,
                        static_cache=static,
                        placement=placement,
                        extra=tuple((a.name, v) for a, v in zip(extra, more)),
                    )
                except Exception:  # noqa: BLE001 - an attention name this autotune cannot describe
                    continue
                self.all.append((candidate, rejection(candidate, environment, model.capabilities, workload)))

    def of(self, axis: str, option: str) -> list[tuple[Candidate, str | None]]:
        return [(c, why) for c, why in self.all if option_of(c, axis) == option]

    def valid(self, candidate: Candidate) -> bool:
        return rejection(candidate, self.environment, self.model.capabilities, self.workload) is None


def _differences(winner: Candidate, other: Candidate, axis: str) -> list[str]:
    """How ``other`` differs from ``winner`` apart from ``axis``, in words (``dtype fp16``, ...)."""
    out = []
    for name in explained_axes():
        if name == axis or name == "double_quant" and axis == "quant":
            continue
        theirs, mine = option_of(other, name), option_of(winner, name)
        if theirs is not None and mine is not None and theirs != mine:
            out.append(theirs)
    if winner.is_4bit and other.is_4bit and axis != "quant" and winner.effective_compute_dtype != other.effective_compute_dtype:
        out.append(f"compute dtype {DTYPE_SHORT[other.effective_compute_dtype]}")
    return out


def _alone(winner: Candidate, axis: str, other: Candidate) -> Candidate | None:
    """The winner with only ``axis`` (and the fields it covers) taken from ``other`` (the
    measurement that would compare like with like)."""
    data = winner.to_dict()
    data.update({name: other.value(name) for name in axes.axis(axis).covers or (axis,)})
    if data["attn"] != "sdpa":
        data["sdpa_kernel"] = None
    try:
        return Candidate.from_dict(data)
    except Exception:  # noqa: BLE001
        return None


def _unmeasured_verdict(
    axis: str, option: str, example: Candidate, rejected: list[Any], variants: _Variants, winner: TrialRecord | None, model: ModelRecord
) -> Verdict | None:
    """Why an option nobody measured is not the winner: unavailable, over memory, or not measured yet."""
    pool = variants.of(axis, option)
    if not pool:  # not a PyTorch loading option (ONNX Runtime): what the search said of it
        for candidate, reason, kind, _pattern in rejected:
            if option_of(candidate, axis) == option:
                if kind == "memory":
                    return Verdict(axis, option, "over-memory", f"over the memory limit by the forecast (not measured): {reason}")
                return Verdict(axis, option, "unavailable", f"not available here: {reason}")
        return None
    valid = [c for c, why in pool if why is None]
    if not valid:
        reasons = dict(pool)
        why = reasons.get(example) or rejection(example, variants.environment, model.capabilities, variants.workload) or pool[0][1]
        return Verdict(axis, option, "unavailable", f"not available here: {why}")
    memory = [(c, reason, pattern) for c, reason, kind, pattern in rejected if kind == "memory"]
    left_out = [next((reason for c, reason, pattern in memory if _covers(pattern, c, v)), None) for v in valid]
    if memory and all(left_out):
        return Verdict(axis, option, "over-memory", f"over the memory limit by the forecast (not measured): {left_out[0]}")
    near = (
        example
        if variants.valid(example)
        else min(valid, key=lambda c: len(_differences(winner.candidate, c, axis)) if winner is not None else 0)
    )
    return Verdict(axis, option, "not-measured", f"not measured yet ({_measure_hint(model.name, near)})")


def _covers(pattern: dict[str, Any], example: Candidate, candidate: Candidate) -> bool:
    """Whether a rejection (its shared ``pattern``, or its one ``example``) covers ``candidate``."""
    if not pattern:
        return example.key() == candidate.key()
    return all(_value(candidate, k) == v for k, v in pattern.items())


def _value(candidate: Candidate, name: str) -> Any:
    try:
        return candidate.value(name)
    except KeyError:  # a field a later autotune wrote
        return None


#: The axes whose flags :func:`_measure_hint` leaves out: the dtype is written in full, the
#: placement and the compute dtype are the workload's and the winner's, the runtime is PyTorch's.
_HINT_SKIPS = ("dtype", "placement", "compute_dtype", "runtime", "provider", "io_binding")


def _measure_hint(name: str, c: Candidate) -> str:
    point = c.to_dict()
    flags = [a.measure_flag(point) for a in axes.in_order(axes.FLAG_ORDER) if a.name not in _HINT_SKIPS]
    return " ".join([f"autotune measure {name}", f"--dtype {c.dtype}", *(f for f in flags if f)])


def _study_rejections(study: StudyRecord) -> list[tuple[Candidate, str, str, dict[str, Any]]]:
    """``(candidate, reason, kind, pattern)`` of what the search left out; ``pattern`` holds the
    candidate fields every candidate of the rejection shares (empty: the one candidate)."""
    out = []
    for entry in study.rejected or []:
        if not isinstance(entry, dict):
            continue
        data = entry.get("candidate") or entry.get("params")
        pattern = entry.get("pattern") if isinstance(entry.get("pattern"), dict) else {}
        if not isinstance(data, dict):
            data = pattern
        if not data:
            continue
        reason = str(entry.get("reason") or "rejected by the validity rules")
        try:
            candidate = Candidate.from_dict({**data, **pattern})
        except Exception:  # noqa: BLE001 - an entry autotune cannot read is skipped, not fatal
            continue
        out.append((candidate, reason, str(entry.get("kind") or "rule"), dict(pattern) if entry.get("count", 1) != 1 else {}))
    return out


def _verdict(
    axis: str,
    option: str,
    group: list[TrialRecord],
    workload: Workload,
    environment: Environment,
    best_value: float | None,
    winner: TrialRecord | None = None,
    variants: _Variants | None = None,
    model: ModelRecord | None = None,
) -> Verdict | None:
    if winner is not None:  # like with like: the measurements closest to the winner
        distance = {t.id: len(_differences(winner.candidate, t.candidate, axis)) for t in group}
        nearest = min(distance.values())
        group = [t for t in group if distance[t.id] == nearest]
    ok = [(t, score_trial(workload, t, environment)) for t in group if t.ok]
    feasible = [(t, s.value) for t, s in ok if s.feasible and s.value is not None]
    metric, _ = metric_for(workload)

    def also(trial: TrialRecord) -> str:
        """The other differences of the measurement a verdict rests on, and how to measure the option alone."""
        if winner is None:
            return ""
        others = _differences(winner.candidate, trial.candidate, axis)
        if not others:
            return ""
        text = f"; that measurement also differs from the winner in {', '.join(others)}"
        alone = _alone(winner.candidate, axis, trial.candidate)
        if alone is not None and model is not None and variants is not None and variants.valid(alone):
            text += f"; {option} alone is not measured yet ({_measure_hint(model.name, alone)})"
        return text

    if feasible and best_value is not None:
        trial, value = best_of(feasible, workload)
        behind = behind_pct(workload, best_value, value)
        what = "more memory" if workload.objective == "memory" else "slower"
        return Verdict(
            axis,
            option,
            "slower",
            f"{behind:.1f}% {what} ({_figure(metric, value)} vs {_figure(metric, best_value)}; "
            f"its best: {trial.candidate.label()} at batch {trial.batch_size}){also(trial)}",
            trial.id,
            behind,
        )
    if feasible:  # no winner: it was feasible, so it is not why nothing was recommended
        return None
    if ok:
        trial, s = min(ok, key=lambda ts: len(ts[1].reasons))
        over = [r for r in s.reasons if "over the limit" in r]
        below = [r for r in s.reasons if "below the floor" in r]
        if over and not below:
            return Verdict(
                axis,
                option,
                "over-memory",
                f"over the memory limit: {over[0]} at batch {trial.batch_size} ({trial.candidate.label()}){also(trial)}",
                trial.id,
            )
        if below and not over:
            return Verdict(
                axis,
                option,
                "below-quality",
                f"quality below the floor: {below[0]} ({trial.candidate.label()} at batch {trial.batch_size}){also(trial)}",
                trial.id,
            )
        return Verdict(
            axis,
            option,
            "infeasible",
            f"infeasible: {'; '.join(s.reasons)} ({trial.candidate.label()} at batch {trial.batch_size}){also(trial)}",
            trial.id,
        )
    failed = [t for t in group if t.status in FAILED]
    unavailable = [t for t in group if t.status in UNAVAILABLE]
    if unavailable and not failed:
        t = unavailable[0]
        pool = variants.of(axis, option) if variants is not None else []
        if pool and all(why is not None for _, why in pool):
            return Verdict(axis, option, "unavailable", f"not available here: {t.reason or t.status}", t.id)
        return Verdict(
            axis, option, "unsupported", f"unsupported as measured ({t.candidate.label()}): {t.reason or t.status}{also(t)}", t.id
        )
    if failed:
        t = min(failed, key=lambda x: x.batch_size)
        what = "ran out of memory" if t.status == "oom" else {"crash": "crashed", "timeout": "timed out", "error": "failed"}[t.status]
        reason = f": {t.reason}" if t.reason else ""
        return Verdict(axis, option, "failed", f"{what} at batch {t.batch_size}{reason} ({t.candidate.label()}){also(t)}", t.id)
    other = group[0]
    return Verdict(axis, option, "not-measured", f"{other.status}: {other.reason or 'no result'}", other.id)


def _figure(metric: str, value: float) -> str:
    if metric == "peak_memory_bytes":
        return format_gib(value)
    unit, fmt = _METRIC_UNITS.get(metric, ("", "{:.3g}"))
    return f"{fmt.format(value)} {unit}".strip()


def describe_metrics(metrics: dict[str, Any], task: str = "text-generation") -> str:
    """The headline figures of a trial of a ``task`` model, in words."""
    m = metrics
    parts = []
    if m.get("throughput_tokens_per_s") is not None:
        parts.append(f"throughput {m['throughput_tokens_per_s']:.1f} tok/s")
    if m.get("sequences_per_s") is not None:
        parts.append(f"{m['sequences_per_s']:.1f} sequences/s")
    if m.get("latency_p50_ms") is not None:
        parts.append(
            f"latency p50 {m['latency_p50_ms']:.1f} ms"
            + (f" (p90 {m['latency_p90_ms']:.1f})" if m.get("latency_p90_ms") is not None else "")
        )
    if m.get("ttft_ms") is not None:
        parts.append(f"first token {m['ttft_ms']:.1f} ms")
    if m.get("peak_memory_bytes") is not None:
        parts.append(f"peak memory {format_gib(m['peak_memory_bytes'])}")
    if m.get("quality_token_agreement") is not None:
        text = format_quality(task, m["quality_token_agreement"])
        if m.get("quality_agreement_low") is not None and m.get("quality_agreement_high") is not None:
            text += f" ({m['quality_agreement_low']:.1%}-{m['quality_agreement_high']:.1%}"
            text += f", {m['quality_positions']} positions)" if m.get("quality_positions") else ")"
        parts.append(text)
    if m.get("quality_kl") is not None:
        parts.append(f"KL {m['quality_kl']:.3f}")
    if m.get("quality_perplexity_change") is not None:
        parts.append(f"perplexity {m['quality_perplexity_change']:+.1%}")
    if m.get("load_seconds") is not None:
        parts.append(f"load {m['load_seconds']:.1f} s")
    return ", ".join(parts)
