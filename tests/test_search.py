"""The search: its space and rejections, baselines first, constraints, stopping, resuming."""

from __future__ import annotations

import socket

import pytest
from search_fakes import CPU_WORKLOAD, LLAMA_CAPS, TINY_LLAMA, FakeMeasure, add_model, cpu_env, gpu_env

from autotune.axes import sampler_axes
from autotune.candidate import Candidate
from autotune.errors import InputError
from autotune.memory import DeviceLimits
from autotune.registry import ResolvedModel
from autotune.search.results import INTERRUPTED, candidate_results, progress
from autotune.search.space import batch_ladder, build_space, candidate_from, forecast_peaks, params_of, parse_restriction
from autotune.search.study import SearchSettings, StudySearch
from autotune.service.recovery import recover_interrupted
from autotune.store import Store
from autotune.workload import MemoryLimit, Workload

LLAMA_8B = {
    **TINY_LLAMA,
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
    "dtype": "bfloat16",
    "hidden_act": "silu",
}


def search(store: Store, measure: FakeMeasure, settings: SearchSettings | None = None, model=None, env=None) -> StudySearch:
    model = model or add_model(store)
    env = env or cpu_env()
    return StudySearch(store, model, env, store.record_environment(env), settings or SearchSettings(seed=3), measure=measure)


def run_to_end(s: StudySearch, limit: int = 500) -> list:
    steps = []
    for _ in range(limit):
        step = s.step()
        steps.append(step)
        if step.finished:
            return steps
    raise AssertionError("the study did not finish")


# -- the space ------------------------------------------------------------------------------------


def test_space_keeps_rules_rejections_with_reasons() -> None:
    space = build_space(TINY_LLAMA, LLAMA_CAPS, CPU_WORKLOAD, cpu_env())
    reasons = {r.reason: r for r in space.rejected}
    assert any("FlashAttention runs only on NVIDIA GPUs" in r for r in reasons)
    assert any("SDPA kernel efficient: runs only on CUDA" in r for r in reasons)
    assert any(r.startswith("placement cuda:") and "pinned to the CPU" in r for r in reasons)
    assert all(r.label and r.count >= 1 and r.kind in ("rule", "memory", "placement") for r in space.rejected)
    assert space.rejected_count == sum(r.count for r in space.rejected) > 100
    # nothing rejected is in the space; every candidate is on the CPU
    assert all(c.placement == "cpu" and c.attn != "flash_attention_2" for c in space.candidates)
    assert not any(c.static_cache and c.quant != "none" for c in space.candidates)
    entry = next(r for r in space.rejected if "SDPA kernel efficient" in r.reason).to_dict()
    assert entry["candidate"]["sdpa_kernel"] == "efficient"
    assert entry["pattern"] == {"attn": "sdpa", "sdpa_kernel": "efficient", "placement": "cpu"}
    assert entry["label"] == "sdpa[efficient] cpu (84 candidates)"
    # every pattern reads back as a candidate (the advisor explains rejections with them)
    for r in space.rejected:
        assert Candidate.from_dict({**(r.candidate.to_dict() if r.candidate else {}), **r.pattern})
    assert len(space.candidates) == len({c.key() for c in space.candidates})


def test_space_axes_round_trip() -> None:
    space = build_space(TINY_LLAMA, LLAMA_CAPS, CPU_WORKLOAD, cpu_env())
    for candidate in space.candidates:
        params = params_of(candidate)
        assert set(params) == set(sampler_axes())
        assert all(params[a] in space.choices[a] for a in sampler_axes())
        assert candidate_from(params) == candidate
    # a point with options that do not apply stands for the plain candidate
    assert candidate_from(
        {
            "dtype": "float16",
            "attn": "sdpa",
            "quant": "none",
            "double_quant": True,
            "compute_dtype": "bfloat16",
            "placement": "cpu",
            "static_cache": False,
        }
    ) == Candidate(dtype="float16", placement="cpu")


def test_memory_forecast_rejects_what_cannot_fit_and_shortens_ladders() -> None:
    workload = Workload(max_memory=MemoryLimit.parse("10GiB"), prompt_tokens=512, new_tokens=128, max_batch=64)
    space = build_space(LLAMA_8B, LLAMA_CAPS, workload, gpu_env())
    memory = [r for r in space.rejected if r.kind == "memory"]
    assert memory and all("over the limit 10.00 GiB" in r.reason for r in memory)
    assert not any(c.quant == "none" for c in space.candidates)  # 16 GB of bf16 weights never fit 10 GiB
    nf4 = Candidate(dtype="bfloat16", quant="bnb-4bit-nf4")
    assert nf4 in space and space.ladder(nf4)[0] == 1 and space.ladder(nf4)[-1] < 64
    names = [b.name for b in space.baselines]
    assert names == ["4-bit nf4, bf16 compute"]
    # LLM.int8 peaked at 11.27 GiB at batch 1 on an H200 (results/e2e_llama8b_h200.db): not admitted under 10 GiB
    assert not any(c.quant == "bnb-8bit" for c in space.candidates)


def test_bitsandbytes_without_effect_is_not_tried_again(store: Store) -> None:
    """Once a bitsandbytes load converted no layer (Falcon on Transformers 5), no other variant is measured."""

    class NoEffect(FakeMeasure):
        def __call__(self, store, model, candidate, batch_sizes, **kwargs):  # type: ignore[no-untyped-def]
            if candidate.quant == "none":
                return super().__call__(store, model, candidate, batch_sizes, **kwargs)
            self.calls.append((candidate, tuple(batch_sizes), kwargs.get("origin", "search")))
            return [
                store.record_trial(
                    kwargs["study"].id,
                    candidate,
                    b,
                    "unsupported",
                    feasible=False,
                    reason=f"{candidate.quant} did not take effect: none of the linear layers was converted",
                    effective={"quantized_layers": 0, "linear_layers": 8},
                )
                for b in batch_sizes
            ]

    measure = NoEffect()
    gpu = Workload(prompt_tokens=16, new_tokens=8, max_batch=2)
    s = search(store, measure, SearchSettings(seed=1, patience=50, knowledge=False), model=add_model(store, workload=gpu), env=gpu_env())
    run_to_end(s)
    quantized = [c for c, _, _ in measure.calls if c.quant != "none"]
    assert len(quantized) == 1 and quantized[0].quant == "bnb-4bit-nf4"  # the nf4 baseline found it; nothing after
    assert any(c.quant != "none" for c in s.space.candidates if c.key() not in {q.key() for q in quantized})


def test_baselines_on_a_gpu_follow_the_guide() -> None:
    space = build_space(LLAMA_8B, LLAMA_CAPS, Workload(), gpu_env(**{"flash-attn": "2.8.3"}))
    assert [(b.name, b.candidate.label()) for b in space.baselines] == [
        ("transformers defaults", "bf16 sdpa cuda"),
        ("static cache, compiled", "bf16 sdpa cuda static"),
        ("bf16 + FlashAttention-2", "bf16 flash_attention_2 cuda"),
        ("bf16 + SDPA flash kernel", "bf16 sdpa[flash] cuda"),
        ("4-bit nf4, bf16 compute", "bf16 sdpa nf4 cuda"),
        ("8-bit, fp16", "fp16 sdpa int8 cuda"),
    ]
    two = build_space(LLAMA_8B, LLAMA_CAPS, Workload(), gpu_env(2))
    assert {c.placement for c in two.candidates} == {"cuda", "multi-gpu"}
    assert all(b.candidate.placement == "cuda" for b in two.baselines)


def test_a_default_one_gpu_cannot_hold_is_measured_spread_over_two() -> None:
    limited = Workload(max_memory=MemoryLimit.parse("10GiB"), prompt_tokens=512, new_tokens=128, max_batch=4)
    space = build_space(LLAMA_8B, LLAMA_CAPS, limited, gpu_env(2))
    names = [(b.name, b.candidate.label()) for b in space.baselines]
    assert names[0] == ("transformers defaults", "bf16 sdpa multi-gpu")  # 16 GB of bf16 does not fit one 10 GiB share
    assert ("4-bit nf4, bf16 compute", "bf16 sdpa nf4 cuda") in names  # but 4-bit fits one GPU


def test_batch_ladder_by_objective() -> None:
    assert batch_ladder(Workload(max_batch=12)) == (1, 2, 4, 8)
    assert batch_ladder(Workload(objective="latency", max_batch=64)) == (1,)
    assert batch_ladder(Workload(objective="memory")) == (1,)


def test_batch_restriction_picks_the_measured_sizes() -> None:
    assert parse_restriction("batch=16,1,4") == {"batch": (1, 4, 16)}
    assert batch_ladder(Workload(max_batch=16), (16, 1, 4)) == (1, 4, 16)
    assert batch_ladder(Workload(max_batch=16), (1, 12, 32)) == (1, 12)  # any size, up to --max-batch
    assert batch_ladder(Workload(objective="latency"), (1, 8)) == (1,)
    restrict = parse_restriction("batch=2,8 quant=none attn=sdpa")
    space = build_space(TINY_LLAMA, LLAMA_CAPS, Workload(device="cpu", max_batch=8), cpu_env(), restrict=restrict)
    assert space.candidates and all(space.ladder(c) == (2, 8) for c in space.candidates)
    assert restrict["batch"] == (2, 8)  # the caller's restriction is left as it was
    with pytest.raises(InputError, match="leaves no batch size to measure: the latency objective measures batch 1"):
        batch_ladder(Workload(objective="latency"), (4,))
    with pytest.raises(InputError, match="up to 8 \\(--max-batch\\)"):
        batch_ladder(Workload(max_batch=8), (16,))
    for bad in ("batch=0", "batch=two", "batch=-4"):
        with pytest.raises(InputError, match="whole numbers of at least 1"):
            parse_restriction(bad)


def test_restriction() -> None:
    allowed = parse_restriction("dtype=fp32,bf16; attn=sdpa quant=none static_cache=false")
    assert allowed == {"dtype": ("float32", "bfloat16"), "attn": ("sdpa",), "quant": ("none",), "static_cache": (False,)}
    space = build_space(TINY_LLAMA, LLAMA_CAPS, CPU_WORKLOAD, cpu_env(), restrict=allowed)
    assert sorted(c.label() for c in space.candidates) == ["bf16 sdpa cpu", "fp32 sdpa cpu"]
    assert [b.name for b in space.baselines] == ["transformers defaults"]
    with pytest.raises(InputError, match="AXIS=V1,V2"):
        parse_restriction("colour=red")
    with pytest.raises(InputError, match="unknown dtype"):
        parse_restriction("dtype=int3")


# -- the study ------------------------------------------------------------------------------------


def test_baselines_first_then_never_the_same_candidate_twice(store: Store) -> None:
    measure = FakeMeasure()
    s = search(store, measure, SearchSettings(seed=1, patience=6, knowledge=False))
    steps = run_to_end(s)
    origins = [origin for _, _, origin in measure.calls]
    names = [b.name for b in s.space.baselines]
    assert names == ["transformers defaults", "bf16 + SDPA flash kernel"]  # the quantized suggestions are for GPUs
    assert origins[:2] == ["baseline"] * 2 and set(origins[2:]) == {"search"}
    assert [c for c, _, _ in measure.calls[:2]] == [b.candidate for b in s.space.baselines]
    assert len(measure.keys) == len(set(measure.keys))
    assert steps[-1].study.state == "finished" and "no improvement in the last 6 candidates" in steps[-1].study.stop_reason
    # the study row names the best trial, which is the best feasible measured value
    study = store.get_study(s.study.id)
    best = store.get_trial(study.best_trial_id)
    feasible = [t.objective_value for t in store.trials(study_id=study.id) if t.feasible]
    assert best.objective_value == max(feasible)
    assert study.rejected and all({"label", "reason", "candidate"} <= set(r) for r in study.rejected)
    # each measured trial keeps the memory forecast beside its measured peak
    measured = [t for t in store.trials(study_id=study.id) if t.status in ("ok", "oom")]
    assert measured and all(t.metrics["forecast_bytes"] and t.metrics["forecast_bytes"] > 0 for t in measured)


def test_oom_and_infeasible_are_data_not_errors(store: Store) -> None:
    measure = FakeMeasure()
    # a screening margin this wide screens nothing: every fp4 ladder is measured and found below the floor
    s = search(store, measure, SearchSettings(seed=2, patience=30, max_trials=40, knowledge=False, screen_margin=0.99))
    run_to_end(s)
    results = {r.candidate.label(): r for r in candidate_results(store.trials(study_id=s.study.id), s.workload)}
    defaults = results["fp32 sdpa cpu"]
    assert defaults.feasible and defaults.best.batch_size == 4  # batch 8 ran out of memory
    # largest first: 8 ran out of memory, 4 and then 2 were measured, 2 was slower, so 1 was not measured
    assert [t.status for t in sorted(defaults.trials, key=lambda t: t.batch_size)] == ["skipped", "ok", "ok", "oom"]
    fp4 = [r for label, r in results.items() if " fp4" in label]
    assert fp4 and all(not r.feasible and r.status == "infeasible" and 0 < r.violation < 1 for r in fp4)


def test_stops_at_trial_and_time_budgets(store: Store) -> None:
    s = search(store, FakeMeasure(), SearchSettings(seed=1, max_trials=5, knowledge=False))
    steps = run_to_end(s)
    assert steps[-1].progress.measured == 5
    assert steps[-1].study.stop_reason == "candidate budget reached: 5 candidates measured (--trials 5)"
    # a finished study stays finished for the same settings, and reopens for a larger budget
    again = search(store, FakeMeasure(), SearchSettings(seed=1, max_trials=5, knowledge=False))
    assert not again.reopen() and again.step().result is None
    more = search(store, FakeMeasure(), SearchSettings(seed=1, max_trials=7, knowledge=False))
    assert more.reopen()
    assert run_to_end(more)[-1].progress.measured == 7

    timed = search(store, FakeMeasure(), SearchSettings(seed=1, budget_minutes=1e-9), model=add_model(store, "org/other"))
    steps = run_to_end(timed)
    assert len(steps) == 1 and steps[0].study.stop_reason.startswith("time budget reached")


def test_a_larger_budget_continues_a_study_that_stopped_improving(store: Store) -> None:
    initial = FakeMeasure()
    done = run_to_end(search(store, initial, SearchSettings(seed=4, patience=2)))[-1]
    measured = done.progress.measured
    assert done.study.stop_reason.startswith("no improvement in the last 2 candidates")
    # the same settings: it stays finished, and says what would continue it, with the numbers
    same = search(store, FakeMeasure(), SearchSettings(seed=4, patience=2))
    assert not same.reopen() and same.step().result is None
    hint = same.how_to_continue()
    assert f"--trials above {measured} or --budget-minutes above " in hint and "--patience above 2" in hint
    # a larger --trials: measured up to it (patience counts again from the reopening)
    more = FakeMeasure()
    larger = search(store, more, SearchSettings(seed=4, patience=2, max_trials=measured + 2))
    assert larger.reopen() and larger.study.state == "running"
    end = run_to_end(larger)[-1]
    assert len(more.calls) == 2 and end.progress.measured == measured + 2
    assert end.study.stop_reason == f"candidate budget reached: {measured + 2} candidates measured (--trials {measured + 2})"
    assert not set(more.keys) & set(initial.keys)  # nothing measured twice
    assert "--trials above" in search(store, FakeMeasure(), SearchSettings(seed=4, patience=2, max_trials=measured + 2)).how_to_continue()
    # a larger --budget-minutes does the same, and a study reopened and cut short goes on the next time
    timed = FakeMeasure()
    cut = search(store, timed, SearchSettings(seed=4, patience=2, budget_minutes=60))
    assert cut.reopen() and cut.step().result is not None
    resumed = search(store, timed, SearchSettings(seed=4, patience=2, budget_minutes=60))
    assert resumed.reopen() and resumed.step().result is not None and len(timed.calls) == 2


def test_space_exhausted(store: Store) -> None:
    settings = SearchSettings(
        seed=1, patience=50, explore=True, restrict=parse_restriction("dtype=fp32,bf16,fp16 attn=sdpa,eager quant=none static_cache=false")
    )
    measure = FakeMeasure()
    steps = run_to_end(search(store, measure, settings))
    assert len(measure.calls) == 6 and steps[-1].study.stop_reason == "space exhausted: all 6 candidates measured"


def test_resume_after_restart_asks_what_an_uninterrupted_study_would(store: Store, tmp_path) -> None:
    straight = FakeMeasure()
    run_to_end(search(store, straight, SearchSettings(seed=11, max_trials=12, patience=50, explore=True)))

    with Store.open(f"sqlite:///{tmp_path / 'resumed.db'}") as other:
        first = FakeMeasure()
        run_to_end(search(other, first, SearchSettings(seed=11, max_trials=7, patience=50, explore=True)))
        second = FakeMeasure()
        resumed = search(other, second, SearchSettings(seed=11, max_trials=12, patience=50, explore=True))
        assert resumed.study.sampler_seed == 11 and resumed.reopen()
        run_to_end(resumed)
        assert first.keys + second.keys == straight.keys
        assert not set(first.keys) & set(second.keys)  # nothing measured again


def test_interrupted_trials_are_kept_and_measured_again(store: Store) -> None:
    measure = FakeMeasure()
    s = search(store, measure, SearchSettings(seed=1, max_trials=3, knowledge=False))
    s.step()
    # a tuner dies in the middle of the second candidate: its rows stay running
    second = s.space.baselines[1].candidate
    rows = [store.start_trial(s.study.id, second, b) for b in (1, 2)]
    assert s.progress().measured == 1  # running, not measured
    recovered = recover_interrupted(store, socket.gethostname())
    assert sorted(t.id for t in recovered) == sorted(r.id for r in rows)
    for trial in recovered:
        assert trial.status == "crash" and "died during the trial" in trial.reason and trial.details[INTERRUPTED]
    run_to_end(s)
    assert measure.keys.count(second.key()) == 1  # measured (again) once the rows were marked
    kept = store.trials(study_id=s.study.id)
    assert {r.id for r in rows} <= {t.id for t in kept}
    assert progress(kept, s.workload).measured == 3


def test_recovery_of_a_shared_store_leaves_other_hosts_alone(store: Store) -> None:
    s = search(store, FakeMeasure(), SearchSettings(seed=1))
    store.start_trial(s.study.id, s.space.baselines[0].candidate, 1)
    if store.sqlite_path is not None:  # a SQLite file is one machine's: every running trial is ours
        assert len(recover_interrupted(store, "a-container-renamed")) == 1
        return
    assert recover_interrupted(store, "some-other-host") == []
    assert len(recover_interrupted(store, socket.gethostname())) == 1


def test_a_broken_measurement_is_recorded_and_the_search_goes_on(store: Store) -> None:
    measure = FakeMeasure(fail="bf16 sdpa[flash] cpu")
    s = search(store, measure, SearchSettings(seed=1, max_trials=6, knowledge=False))
    steps = run_to_end(s)
    broken = [st for st in steps if st.error]
    assert len(broken) == 1 and "the worker launcher broke" in broken[0].error
    rows = [t for t in store.trials(study_id=s.study.id) if t.candidate.label() == "bf16 sdpa[flash] cpu"]
    assert rows and all(t.status == "error" and "measuring failed" in t.reason for t in rows)
    assert steps[-1].progress.measured == 6


def test_latency_objective_measures_batch_one_and_minimises(store: Store) -> None:
    model = add_model(store, "org/latency", CPU_WORKLOAD.with_changes(objective="latency"))
    measure = FakeMeasure()
    s = search(store, measure, SearchSettings(seed=4, max_trials=6), model=model)
    run_to_end(s)
    assert {sizes for _, sizes, _ in measure.calls} == {(1,)}
    state = s.progress()
    assert state.best.value == min(r.value for r in state.results if r.value is not None)


def test_settings_are_validated() -> None:
    with pytest.raises(InputError, match="--patience"):
        SearchSettings(patience=0)
    with pytest.raises(InputError, match="--trials"):
        SearchSettings(max_trials=0)
    with pytest.raises(InputError, match="--budget-minutes"):
        SearchSettings(budget_minutes=0)


def test_over_several_gpus_each_gpu_is_held_against_its_own_limit() -> None:
    limited = Workload(max_memory=MemoryLimit.parse("10GiB"), prompt_tokens=512, new_tokens=128, max_batch=4)
    env = gpu_env(2)
    spread = DeviceLimits.resolve(limited.max_memory, env, "multi-gpu")
    assert spread.to_dict() == {"cuda:0": 10 * 2**30, "cuda:1": 10 * 2**30} and spread.max_memory() == {0: 10 * 2**30, 1: 10 * 2**30}
    assert DeviceLimits.resolve(limited.max_memory, env, "cuda").to_dict() == {"cuda:0": 10 * 2**30}
    space = build_space(LLAMA_8B, LLAMA_CAPS, limited, env)  # the split as Transformers places it
    bf16 = Candidate(dtype="bfloat16", placement="multi-gpu")
    assert bf16 in space
    peaks = forecast_peaks(LLAMA_8B, bf16, limited, 1, spread, env)
    assert len(peaks) == 2 and 8 * 2**30 < max(peaks) < 10 * 2**30  # 16 GB of bf16 weights over two 10 GiB shares
    fp32 = [
        r for r in space.rejected if r.candidate is not None and r.candidate.placement == "multi-gpu" and r.candidate.dtype == "float32"
    ]
    assert fp32 and "on cuda:" in fp32[0].reason and "over the limit 10.00 GiB" in fp32[0].reason


def test_admission_holds_the_forecast_raised_by_its_safety_margin() -> None:
    from autotune.memory import Correction, Margins

    limited = Workload(max_memory=MemoryLimit.parse("20GiB"), prompt_tokens=512, new_tokens=128, max_batch=1)
    bf16 = Candidate(dtype="bfloat16")
    assert bf16 in build_space(LLAMA_8B, LLAMA_CAPS, limited, gpu_env())  # about 16 GiB, +10% by default: fits 20 GiB
    wary = build_space(LLAMA_8B, LLAMA_CAPS, limited, gpu_env(), correction=Correction(margins=Margins(default=0.5)))
    assert bf16 not in wary
    memory = [r.reason for r in wary.rejected if r.kind == "memory"]
    assert memory and all("with its +50% safety margin" in r and "over the limit 20.00 GiB" in r for r in memory)


def test_the_winner_can_change_with_the_prompt_length(store: Store) -> None:
    """One study per workload: short prompts and long prefill-only ones on the same model and GPU."""

    def latency(c: Candidate, workload: Workload) -> float:  # a made-up landscape: attention matters with the prompt
        prefill = {"sdpa": 10.0, "flash_attention_4": 9.2, "eager": 14.0}[c.attn] * workload.prompt_tokens / 1000
        return prefill + {"sdpa": 12.0, "flash_attention_4": 19.0, "eager": 12.5}[c.attn] * workload.new_tokens

    h200 = gpu_env(memory=141 * 2**30, **{"flash-attn-4": "4.0.0b36"})
    caps = {**LLAMA_CAPS, "attn_implementations": ["eager", "sdpa", "flash_attention_2", "flash_attention_4", "flex_attention"]}
    config = {**LLAMA_8B, "max_position_embeddings": 131072}
    settings = SearchSettings(
        seed=2,
        patience=50,
        restrict=parse_restriction("dtype=bf16 attn=sdpa,eager,flash_attention_4 quant=none static_cache=false placement=cuda"),
    )
    short = Workload(prompt_tokens=512, new_tokens=128, objective="latency")
    model = add_model(store, "org/llama-8b", short, config=config, caps=caps)
    winners, studies = {}, set()
    for workload in (short, short.with_changes(prompt_tokens=32768, new_tokens=1)):
        if workload is not short:
            model, _, _ = store.upsert_model(
                ResolvedModel(name=model.name, source="local", path=model.path, revision=None, config=config), caps, workload
            )
        s = search(store, FakeMeasure(latency=latency), settings, model=model, env=h200)
        run_to_end(s)
        winners[workload.prompt_tokens] = s.progress().best.candidate.attn
        studies.add(s.study.id)
        if workload.prompt_tokens == 32768:  # eager's score matrices at 32k do not fit an H200: never measured
            assert any(r.kind == "memory" and r.candidate.attn == "eager" for r in s.space.rejected)
    assert winners == {512: "sdpa", 32768: "flash_attention_4"} and len(studies) == 2
