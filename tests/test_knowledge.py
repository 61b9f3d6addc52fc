"""Knowledge first: the search orders candidates by what is known before they run, screens clear
losers, measures throughput ladders largest first, and stops when nothing left could win."""

from __future__ import annotations

import math

import pytest
from search_fakes import TINY_LLAMA, FakeMeasure, add_model, gpu_env

from autotune.candidate import Candidate
from autotune.search.prior import Knowledge
from autotune.search.results import candidate_results
from autotune.search.space import parse_restriction
from autotune.search.study import SearchSettings, StudySearch
from autotune.store import Store
from autotune.worker.ladder import Ladder
from autotune.worker.protocol import Screen
from autotune.workload import Workload

FALCON = {
    "model_type": "falcon",
    "architectures": ["FalconForCausalLM"],
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 8,
    "multi_query": True,
    "new_decoder_architecture": False,
    "parallel_attn": True,
    "vocab_size": 512,
    "bias": False,
    "alibi": False,
    "dtype": "bfloat16",
}
FALCON_CAPS = {"architecture": "FalconForCausalLM", "attn_implementations": ["eager", "sdpa"]}
SPACE = "dtype=bf16,fp16 attn=sdpa,eager quant=none,nf4,int8 static_cache=false,true placement=cuda"


def falcon_speed(c: Candidate, batch: int) -> float:
    """Falcon-7B on an H200, roughly (issue 12's table): eager beats SDPA's math fallback, a
    compiled static cache is the largest lever, fp16 runs at bf16's speed, 4-bit is slower."""
    base = 30.0 * (1.37 if c.attn == "eager" else 1.0)
    if c.static_cache:
        base *= 3.6 if batch == 1 else 1.8
    base *= {"none": 1.0, "bnb-4bit-nf4": 0.7, "bnb-8bit": 0.3}[c.quant]
    base *= 0.995 if c.dtype == "float16" else 1.0
    return base * batch**0.8


def study(store: Store, workload: Workload, measure: FakeMeasure, name: str = "org/falcon", **settings) -> StudySearch:
    model = add_model(store, name, workload, config=FALCON, caps=FALCON_CAPS)
    env = gpu_env()
    options = {"seed": 0, "restrict": parse_restriction(SPACE), **settings}
    return StudySearch(store, model, env, store.record_environment(env), SearchSettings(**options), measure=measure)


def run(s: StudySearch) -> list:
    steps = []
    for _ in range(200):
        step = s.step()
        steps.append(step)
        if step.finished:
            return steps
    raise AssertionError("the study did not finish")


def exhaustive_best(s: StudySearch, landscape, batch_sizes) -> float:
    return max(landscape(c, b) for c in s.space.candidates for b in batch_sizes)


def test_knowledge_puts_the_falcon_winner_second_and_stops_early(store: Store) -> None:
    """The forecast knows Falcon's SDPA call falls back to the math kernel: eager + static cache comes first."""
    measure = FakeMeasure(landscape=falcon_speed)
    latency = Workload(objective="latency", prompt_tokens=512, new_tokens=128, max_batch=1, min_quality=0.5)
    s = study(store, latency, measure)
    steps = run(s)
    labels = [c.label() for c, _, _ in measure.calls]
    assert labels[:2] == ["bf16 sdpa cuda", "bf16 eager cuda static"]
    assert [o for _, _, o in measure.calls][:2] == ["baseline", "prior"]
    assert len(measure.calls) <= 4 < len(s.space.candidates)
    assert steps[-1].study.stop_reason.startswith("knowledge exhausted")
    best = s.progress().best
    assert best.candidate.label() == "bf16 eager cuda static"
    assert 1000 / best.value >= exhaustive_best(s, falcon_speed, (1,)) * 0.97  # regret under 3%
    # why it came early is kept with its rows: the forecast's fact and the rule
    prior = best.best.details["prior"]
    sources = {e["source"] for e in prior["expectation"]["effects"]}
    assert sources == {"rule", "forecast"} and prior["predicted_from"] == "bf16 sdpa cuda"


def test_throughput_ladders_go_down_from_the_largest_batch_only_for_contenders(store: Store) -> None:
    measure = FakeMeasure(landscape=falcon_speed)
    throughput = Workload(prompt_tokens=512, new_tokens=128, max_batch=16, min_quality=0.5)
    s = study(store, throughput, measure, restrict=parse_restriction(SPACE + " batch=1,4,16"))
    run(s)
    assert all(kw["ladder"] == "falling" for kw in measure.kwargs)
    rows = store.trials(study_id=s.study.id)
    measured = {(t.candidate.label(), t.batch_size) for t in rows if t.status in ("ok", "screened")}
    assert ("bf16 sdpa cuda", 16) in measured and ("bf16 eager cuda static", 16) in measured
    # the winner was checked one size down; a size that lost ended its ladder, and no batch 1 was measured
    assert ("bf16 eager cuda static", 4) in measured
    assert not any(b == 1 for _, b in measured)
    skipped = [t for t in rows if t.status == "skipped"]
    assert skipped and all(t.reason.startswith("not measured:") for t in skipped)
    best = s.progress().best
    assert best.candidate.label() == "bf16 eager cuda static" and best.best.batch_size == 16
    assert best.value >= exhaustive_best(s, falcon_speed, (1, 4, 16)) * 0.97


def test_clear_losers_are_screened_never_recommended(store: Store) -> None:
    measure = FakeMeasure(landscape=falcon_speed)
    latency = Workload(objective="latency", prompt_tokens=512, new_tokens=128, max_batch=1, min_quality=0.5)
    s = study(store, latency, measure, explore=True, patience=6)
    run(s)
    rows = store.trials(study_id=s.study.id)
    screened = [t for t in rows if t.status == "screened"]
    assert screened and all(not t.feasible and t.metrics["repeats"] == 1 for t in screened)
    best = s.progress().best
    assert best.best.status == "ok" and all(best.best.id != t.id for t in screened)
    results = {r.candidate.key(): r for r in candidate_results(rows, s.workload)}
    assert all(results[t.candidate.key()].status == "screened" and results[t.candidate.key()].screen_value for t in screened)


def test_earlier_studies_on_the_same_gpu_warm_start_the_next(store: Store) -> None:
    """A past study measured eager + static cache far ahead of its SDPA twin on this GPU kind: a Llama
    study (whose SDPA has fused kernels, so the rules expect eager to lose) now tries eager early."""
    llama_speed = lambda c, b: falcon_speed(c, b) * (1.0 if c.attn == "eager" else 0.9)  # noqa: E731
    latency = Workload(objective="latency", prompt_tokens=512, new_tokens=128, max_batch=1, min_quality=0.5)
    past = study(store, latency, FakeMeasure(landscape=llama_speed), explore=True, patience=20)
    run(past)
    llama = {**TINY_LLAMA, "dtype": "bfloat16"}
    caps = {"architecture": "LlamaForCausalLM", "attn_implementations": ["eager", "sdpa"]}
    model = add_model(store, "org/llama", latency, config=llama, caps=caps)
    env = gpu_env()
    measure = FakeMeasure(landscape=llama_speed)
    s = StudySearch(
        store, model, env, store.record_environment(env), SearchSettings(seed=0, restrict=parse_restriction(SPACE)), measure=measure
    )
    expectation = s.knowledge.expect(Candidate(dtype="bfloat16", attn="eager", static_cache=True))
    assert "warm start" in expectation.sources
    run(s)
    assert measure.calls[1][0].label() == "bf16 eager cuda static" and measure.calls[1][2] == "warm-start"


def test_an_attention_measured_on_short_prompts_does_not_warm_start_a_long_prompt_study(store: Store) -> None:
    """As on one H100 (Llama-3-8B shape, BENCHMARKS.md §9): FlashAttention-4 lost to SDPA at 512 + 128
    tokens and won prefilling 32,768. A long-prompt study on the same GPU kind must not take the
    short study's loss as its own: it expects FlashAttention-4 by the long-prompt rule, measures it
    and picks it. A study of the short study's class still warm-starts from it."""
    llama = {**TINY_LLAMA, "dtype": "bfloat16", "max_position_embeddings": 131072}
    caps = {"architecture": "LlamaForCausalLM", "attn_implementations": ["eager", "sdpa", "flash_attention_4"]}
    env = gpu_env(**{"flash-attn-4": "4.0.0b36", "nvidia-cutlass-dsl": "4.8.1"})
    restrict = parse_restriction("dtype=bf16 attn=sdpa,flash_attention_4 quant=none static_cache=false placement=cuda")

    def latency(fa4: float, sdpa: float):
        return lambda c, workload: fa4 if c.attn == "flash_attention_4" else sdpa

    def search(name: str, workload: Workload, measure: FakeMeasure, **settings) -> StudySearch:
        model = add_model(store, name, workload, config=llama, caps=caps)
        options = {"seed": 0, "restrict": restrict, **settings}
        return StudySearch(store, model, env, store.record_environment(env), SearchSettings(**options), measure=measure)

    short = Workload(objective="latency", prompt_tokens=512, new_tokens=128, max_batch=1, min_quality=0.0)
    run(search("org/llama-short", short, FakeMeasure(latency=latency(7164.0, 5185.0)), exhaustive=True))

    long = Workload(objective="latency", prompt_tokens=32768, new_tokens=1, max_batch=1, min_quality=0.0)
    measure = FakeMeasure(latency=latency(1375.6, 1405.5))
    s = search("org/llama-long", long, measure)
    fa4 = Candidate(dtype="bfloat16", attn="flash_attention_4")
    assert s.knowledge.expect(fa4).sources == {"rule"} and s.knowledge.expect(fa4).factor > 1
    run(s)
    assert [(c.attn, origin) for c, _, origin in measure.calls][:2] == [("sdpa", "baseline"), ("flash_attention_4", "prior")]
    assert s.progress().best.candidate.attn == "flash_attention_4"

    # the same class as the short study (a short prompt, many new tokens): its loss is evidence here
    again = search("org/llama-short-2", Workload(objective="latency", prompt_tokens=1024, new_tokens=64, max_batch=1), FakeMeasure())
    expectation = again.knowledge.expect(fa4)
    assert "warm start" in expectation.sources and expectation.factor < 0.8


def test_expectations_multiply_their_effects() -> None:
    env = gpu_env()
    k = Knowledge(Workload(objective="latency", max_batch=1), env, sdpa_fallback="one K/V head")
    plain = k.expect(Candidate(dtype="bfloat16"))
    assert plain.factor == 1.0 and not plain.effects
    both = k.expect(Candidate(dtype="bfloat16", attn="eager", static_cache=True))
    assert math.isclose(both.factor, 3.5 * 1.15) and {e.source for e in both.effects} == {"rule", "forecast"}
    assert "static cache x3.50" in both.describe()
    cpu = Knowledge(Workload(device="cpu"), gpu_env(0))
    assert cpu.expect(Candidate(dtype="bfloat16", quant="bnb-4bit-nf4", placement="cpu")).factor < 0.5


# -- the worker's ladder (pure) --------------------------------------------------------------------


def test_a_falling_ladder_goes_on_past_an_oom_and_down_while_it_gains() -> None:
    screen = Screen("throughput_tokens_per_s", beat=100.0, margin=0.15, contend=0.03)
    ladder = Ladder((1, 2, 4, 8), "falling", screen)
    assert ladder.next() == 8
    ladder.record(8, "oom")
    assert ladder.next() == 4
    ladder.record(4, "ok", 120.0)  # ahead of the best: a contender
    assert ladder.next() == 2
    ladder.record(2, "ok", 110.0)  # slower than batch 4: stop
    assert ladder.next() is None
    [left] = ladder.leftover()
    assert left.batch_size == 1 and left.status == "skipped" and "no faster than batch size 4" in left.reason


def test_a_falling_ladder_stops_for_non_contenders_and_screens() -> None:
    screen = Screen("throughput_tokens_per_s", beat=100.0)
    behind = Ladder((1, 4, 16), "falling", screen)
    behind.record(16, "ok", 90.0)  # 10% behind: measured, but not a contender
    assert behind.next() is None and "not a contender" in behind.leftover()[0].reason
    screened = Ladder((1, 4, 16), "falling", screen)
    screened.record(16, "screened", 50.0)
    assert [(x.batch_size, x.status) for x in screened.leftover()] == [(1, "skipped"), (4, "skipped")]
    rising = Ladder((1, 4, 16), "rising")
    rising.record(1, "ok", 5.0)
    rising.record(4, "oom")
    assert rising.next() is None and [x.batch_size for x in rising.leftover()] == [16]
    unsupported = Ladder((1, 4), "falling", screen)
    unsupported.record(4, "unsupported", reason="bnb did not take effect")
    assert [(x.status, x.reason) for x in unsupported.leftover()] == [("unsupported", "bnb did not take effect")]


def test_screen_is_validated_and_reads_both_directions() -> None:
    latency = Screen("latency_p50_ms", beat=100.0, margin=0.2)
    assert latency.hopeless(130.0) and not latency.hopeless(110.0) and latency.behind(90.0) < 0
    assert Screen("throughput_tokens_per_s", beat=100.0).hopeless(80.0)
    assert not Screen("throughput_tokens_per_s").hopeless(1.0)  # nothing to beat yet
    with pytest.raises(Exception, match="cannot screen on"):
        Screen("quality_kl")
    with pytest.raises(Exception, match="screening margin"):
        Screen("latency_p50_ms", margin=0)


def test_exhaustive_measures_the_whole_space_fully(store: Store) -> None:
    measure = FakeMeasure(landscape=falcon_speed)
    throughput = Workload(prompt_tokens=512, new_tokens=128, max_batch=16, min_quality=0.5)
    s = study(store, throughput, measure, exhaustive=True, restrict=parse_restriction(SPACE + " batch=1,4,16"))
    steps = run(s)
    assert steps[-1].study.stop_reason.startswith("space exhausted")
    assert all(kw["ladder"] == "rising" and kw["screen"] is None for kw in measure.kwargs)
    rows = store.trials(study_id=s.study.id)
    assert {t.status for t in rows} <= {"ok", "skipped", "oom", "unsupported"}
