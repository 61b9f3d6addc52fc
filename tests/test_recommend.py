"""The recommendation: the faster feasible trial wins, and every option that lost says why.

Trials are synthetic rows in the store (the worker is not needed to decide between results).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO

from autotune.advisor.recommend import recommend
from autotune.candidate import Candidate
from autotune.environment import Environment, Gpu, probe
from autotune.registry import ResolvedModel
from autotune.store import Store
from autotune.workload import MemoryLimit, Workload

GiB = 2**30
H100 = Gpu(0, "GPU-0000", "NVIDIA H100 80GB HBM3", 80 * GiB, 79 * GiB, (9, 0))
GPU_ENV = Environment(
    gpus=(H100,),
    versions={"torch": "2.11.0+cu130", "transformers": "5.17.0", "bitsandbytes": "0.50.2", "accelerate": "1.15.0", "flash-attn": None},
    driver_version="580.159.04",
    cuda_driver_version="13.0",
    hostname="gpu-box",
)
CAPABILITIES = {
    "architecture": "LlamaForCausalLM",
    "attn_implementations": ["eager", "sdpa", "flash_attention_2"],
    "transformers": "5.17.0",
}


def register(store: Store, name: str = "org/llama", **workload: object):  # type: ignore[no-untyped-def]
    resolved = ResolvedModel(
        name=name, source="hf-cache", path=None, revision="a" * 40, config={"model_type": "llama", "architectures": ["LlamaForCausalLM"]}
    )
    fields = {"max_memory": MemoryLimit.parse("20GiB"), **workload}
    record, _, _ = store.upsert_model(resolved, CAPABILITIES, Workload(**fields))  # type: ignore[arg-type]
    return record


def trial(
    store: Store,
    study_id: int,
    candidate: Candidate,
    batch: int,
    status: str = "ok",
    reason: str | None = None,
    *,
    tps: float | None = None,
    p50: float | None = None,
    peak: float | None = None,
    agreement: float | None = 1.0,
    flatness: float | None = None,
) -> None:
    metrics = {
        "throughput_tokens_per_s": tps,
        "latency_p50_ms": p50,
        "quality_token_agreement": agreement,
        "peak_memory_bytes": int(peak * GiB) if peak else None,
        "ttft_ms": 20.0 if status == "ok" else None,
    }
    details = {"quality_reference_flatness": flatness} if flatness is not None else {}
    store.record_trial(study_id, candidate, batch, status, reason=reason, metrics=metrics if status == "ok" else {}, details=details)


BF16 = Candidate(dtype="bfloat16", attn="sdpa")
FP16 = Candidate(dtype="float16", attn="sdpa")
EAGER = Candidate(dtype="bfloat16", attn="eager")
NF4 = Candidate(dtype="bfloat16", attn="sdpa", quant="bnb-4bit-nf4", double_quant=True)
INT8 = Candidate(dtype="float16", attn="sdpa", quant="bnb-8bit")
FLASH = Candidate(dtype="bfloat16", attn="flash_attention_2")
STATIC = Candidate(dtype="bfloat16", attn="sdpa", static_cache=True)


@pytest.fixture
def scene(store: Store):  # type: ignore[no-untyped-def]
    """A model measured on an H100: bf16 wins; the others lose, each for its own reason."""
    model = register(store)
    study = store.study_for(model, store.record_environment(GPU_ENV))
    trial(store, study.id, BF16, 16, tps=1200, p50=400, peak=15)
    trial(store, study.id, BF16, 32, tps=1500, p50=700, peak=25)  # faster, but over the 20 GiB limit
    trial(store, study.id, FP16, 16, tps=1150, p50=420, peak=15)
    trial(store, study.id, EAGER, 16, tps=1400, p50=380, peak=21)  # faster, but over the limit
    trial(store, study.id, NF4, 16, tps=1900, p50=300, peak=6, agreement=0.40)  # the fastest, and wrong
    trial(store, study.id, INT8, 16, tps=400, p50=1300, peak=9, agreement=0.97)
    trial(
        store,
        study.id,
        FLASH,
        1,
        "unsupported",
        "flash_attention_2: package flash-attn is not installed (pip install flash-attn --no-build-isolation)",
    )
    trial(store, study.id, Candidate(dtype="float32"), 8, "oom", "CUDA out of memory. Tried to allocate 2.00 GiB")
    store.update_study(
        study.id,
        rejected=[
            {
                "label": "flex_attention",
                "kind": "rule",
                "count": 4,
                "candidate": None,
                "pattern": {"attn": "flex_attention"},
                "reason": "flex_attention: LlamaForCausalLM does not support it in transformers 5.17.0",
            }
        ],
    )
    return store, model, study


def by_option(rec) -> dict[str, object]:  # type: ignore[no-untyped-def]
    return {v.option: v for v in rec.verdicts}


def test_the_faster_feasible_trial_wins_and_the_others_say_why(scene) -> None:  # type: ignore[no-untyped-def]
    store, model, study = scene
    rec = recommend(store, model, current=GPU_ENV)
    assert rec.best is not None and rec.best.candidate == BF16 and rec.best.batch_size == 16
    assert rec.best_value == 1200 and rec.limit_bytes == 20 * GiB and rec.current_environment
    assert [r.trial.candidate for r in rec.runners_up] == [FP16, INT8]
    assert rec.runners_up[0].behind_pct == pytest.approx(100 * 50 / 1200)
    why = by_option(rec)
    assert why["eager"].kind == "over-memory" and "over the memory limit" in why["eager"].reason  # type: ignore[attr-defined]
    assert why["bnb 4-bit nf4"].kind == "below-quality" and "quality below the floor" in why["bnb 4-bit nf4"].reason  # type: ignore[attr-defined]
    assert "40.0%" in why["bnb 4-bit nf4"].reason  # type: ignore[attr-defined]
    assert why["bnb 8-bit"].kind == "slower" and why["bnb 8-bit"].reason.startswith("66.7% slower")  # type: ignore[attr-defined]
    assert why["fp16"].kind == "slower" and why["fp16"].behind_pct == pytest.approx(100 * 50 / 1200)  # type: ignore[attr-defined]
    assert why["flash_attention_2"].kind == "unavailable" and "flash-attn is not installed" in why["flash_attention_2"].reason  # type: ignore[attr-defined]
    assert why["flex_attention"].kind == "unavailable" and "does not support it" in why["flex_attention"].reason  # type: ignore[attr-defined]
    assert why["fp32"].kind == "failed" and why["fp32"].reason.startswith("ran out of memory at batch 8")  # type: ignore[attr-defined]
    # never measured, but possible here: said so, with the command that measures it
    assert why["static cache (torch.compile)"].kind == "not-measured"  # type: ignore[attr-defined]
    assert "autotune measure org/llama --dtype bfloat16 --attn sdpa --static-cache" in why["static cache (torch.compile)"].reason  # type: ignore[attr-defined]
    assert why["BetterTransformer"].kind == "unavailable"  # type: ignore[attr-defined]


def test_a_fast_4bit_with_low_agreement_never_wins(store) -> None:  # type: ignore[no-untyped-def]
    model = register(store)
    study = store.study_for(model, store.record_environment(GPU_ENV))
    for batch in (1, 4, 16, 64):
        trial(store, study.id, NF4, batch, tps=5000 * batch, p50=10, peak=5, agreement=0.5)
    trial(store, study.id, BF16, 1, tps=100, p50=200, peak=15)
    rec = recommend(store, model, current=GPU_ENV, objective="latency", max_memory="none")
    assert rec.best.candidate == BF16  # type: ignore[union-attr]
    assert by_option(rec)["bnb 4-bit nf4"].kind == "below-quality"  # type: ignore[attr-defined]
    assert recommend(store, model, current=GPU_ENV, min_quality=0.4).best.candidate == NF4  # type: ignore[union-attr]


def test_random_weights_are_named_when_the_reference_is_flat(store) -> None:  # type: ignore[no-untyped-def]
    model = register(store)
    study = store.study_for(model, store.record_environment(GPU_ENV))
    trial(store, study.id, BF16, 1, tps=100, p50=200, peak=15, agreement=0.85, flatness=0.997)
    trial(store, study.id, NF4, 1, tps=90, p50=220, peak=6, agreement=0.01, flatness=0.997)
    rec = recommend(store, model, current=GPU_ENV, max_memory="none")
    assert rec.best is None and "token agreement 85.0% below the floor 90%" in rec.message
    assert any("nearly flat (entropy 99.7%" in n and "random or untrained" in n and "--min-quality" in n for n in rec.notes)
    trained = register(store, name="org/trained")
    study = store.study_for(trained, store.record_environment(GPU_ENV))
    trial(store, study.id, BF16, 1, tps=100, p50=200, peak=15, agreement=0.99, flatness=0.41)
    assert not any("flat" in n for n in recommend(store, trained, current=GPU_ENV).notes)


def test_flags_override_the_stored_constraints(scene) -> None:  # type: ignore[no-untyped-def]
    store, model, _ = scene
    roomy = recommend(store, model, current=GPU_ENV, max_memory="30GiB")
    assert roomy.best.candidate == BF16 and roomy.best.batch_size == 32  # type: ignore[union-attr]
    fast = recommend(store, model, current=GPU_ENV, objective="latency")
    assert fast.best.candidate == BF16 and fast.metric == "latency_p50_ms"  # type: ignore[union-attr]  # eager (380 ms) is over the limit
    assert "slower" in by_option(fast)["fp16"].reason  # type: ignore[attr-defined]
    lean = recommend(store, model, current=GPU_ENV, objective="memory")
    assert lean.best.candidate == INT8  # type: ignore[union-attr]  # 4-bit is smaller but below the floor
    assert "more memory" in by_option(lean)["no quantization"].reason  # type: ignore[attr-defined]
    tight = recommend(store, model, current=GPU_ENV, max_memory="8GiB")
    assert tight.best is None and "no measured trial" in tight.message and "8.00 GiB" in tight.message  # type: ignore[operator]


def test_prefers_this_environment_and_says_where_trials_ran(store) -> None:  # type: ignore[no-untyped-def]
    model = register(store)
    here = probe()
    elsewhere = store.study_for(model, store.record_environment(GPU_ENV))
    trial(store, elsewhere.id, BF16, 16, tps=1200, p50=400, peak=15)
    rec = recommend(store, model, current=here)
    assert rec.best is not None and not rec.current_environment
    assert "NVIDIA H100" in rec.where() and "transformers 5.17.0" in rec.where()
    assert any("not on this machine's current environment" in note for note in rec.notes)
    local = store.study_for(model, store.record_environment(here))
    trial(store, local.id, Candidate(dtype="float32", placement="cpu"), 2, tps=30, p50=500, peak=0.5)
    rec = recommend(store, model, current=here)
    assert rec.current_environment and rec.best.candidate.placement == "cpu"  # type: ignore[union-attr]
    assert rec.other_environments and "NVIDIA H100" in rec.other_environments[0]


def test_nothing_measured(cli, store_url, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("AUTOTUNE_DB", store_url)
    result = cli("recommend")
    assert result.code == 0 and "no models registered" in result.out
    with Store.open(store_url) as store:
        register(store)
    result = cli("recommend", "org/llama")
    assert result.code == 1 and "nothing measured for org/llama yet" in result.out and "autotune tune org/llama" in result.out
    assert result.err.startswith("autotune: no recommendation for org/llama: nothing measured") and result.err.count("\n") == 1
    assert "autotune measure org/llama" in result.out
    doc = json.loads(cli("recommend", "org/llama", "--json").out)
    assert doc["recommendation"] is None and "nothing measured" in doc["message"]
    result = cli("recommend", "org/unknown")
    assert result.code == 2 and "not registered" in result.err


def test_cli_prints_records_and_writes(cli, store_url, monkeypatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("AUTOTUNE_DB", store_url)
    with Store.open(store_url) as store:
        model = register(store)
        study = store.study_for(model, store.record_environment(GPU_ENV))
        trial(store, study.id, BF16, 16, tps=1200, p50=400, peak=15)
        trial(store, study.id, EAGER, 16, tps=1400, p50=380, peak=21)
        register(store, "org/other")
    result = cli("recommend")
    assert result.code == 1 and result.err == "autotune: no recommendation for 1 of 2 models (org/other); the reasons are above\n"
    out = result.out
    assert "org/llama: bf16 sdpa cuda at batch 16" in out and "org/other: no recommendation" in out
    assert "why not the others:" in out and "over the memory limit" in out
    assert "1x NVIDIA H100 80GB HBM3 (driver 580.159.04)" in out and "torch 2.11.0+cu130, transformers 5.17.0" in out
    assert "dtype=torch.bfloat16," in out and "device_map='cuda:0'" in out and "revision=REVISION" in out

    target = tmp_path / "app" / "loaders" / "llama_loader.py"
    result = cli("recommend", "org/llama", "--write", target, "--json")
    assert result.code == 0, result.err
    doc = json.loads(result.out)
    assert doc["written"] == str(target) and doc["recommendation"]["label"] == "bf16 sdpa cuda"
    assert target.read_text() == doc["code"]
    compile(doc["code"], str(target), "exec")
    with Store.open(store_url) as store, store.session() as s:
        from sqlalchemy import text

        rows = s.execute(text("SELECT objective, code, constraints, explanation FROM autotune_recommendations")).all()
    assert len(rows) == 2 and rows[-1][1] == doc["code"]
    constraints = rows[-1][2] if isinstance(rows[-1][2], dict) else json.loads(rows[-1][2])
    assert constraints["limit_bytes"] == 20 * GiB

    assert "one model's loader" in cli("recommend", "--write", tmp_path / "x.py").err
    assert "must end in .py" in cli("recommend", "org/llama", "--write", tmp_path / "x.txt").err
    assert "cannot be imported" in cli("recommend", "org/llama", "--write", tmp_path / "my-loader.py").err
    assert cli("recommend", "org/llama", "--max-memory", "lots").code == 2
    assert cli("recommend", "org/llama", "--min-quality", "2").code == 2


def test_recommend_starts_without_torch_or_transformers(tmp_path) -> None:
    db = tmp_path / "r.db"
    with Store.open(str(db)) as store:
        model = register(store)
        study = store.study_for(model, store.record_environment(GPU_ENV))
        trial(store, study.id, BF16, 16, tps=1200, p50=400, peak=15)
        trial(store, study.id, NF4, 16, tps=1900, p50=300, peak=6, agreement=0.4)
    script = (
        "import sys\n"
        "from autotune.cli import main\n"
        "for argv in (['recommend'], ['recommend', 'org/llama', '--json'], ['models']):\n"
        "    assert main(['--db', sys.argv[1], *argv]) == 0\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers'))\n"
        "print('HEAVY', heavy)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", script, str(db)], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout
    assert "bf16 sdpa cuda at batch 16" in proc.stdout


def test_explanation_without_a_winner(store) -> None:  # type: ignore[no-untyped-def]
    model = register(store)
    study = store.study_for(model, store.record_environment(GPU_ENV))
    trial(store, study.id, NF4, 16, tps=1900, p50=300, peak=6, agreement=0.4)
    trial(store, study.id, BF16, 64, tps=2000, p50=900, peak=40)
    rec = recommend(store, model, current=GPU_ENV)
    assert rec.best is None and "no measured trial" in rec.message  # type: ignore[operator]
    assert "over the limit" in rec.message and "below the floor" in rec.message  # type: ignore[operator]
    kinds = {v.option: v.kind for v in rec.verdicts}
    assert kinds["bnb 4-bit nf4"] == "below-quality" and kinds["no quantization"] == "over-memory"
    crashed = register(store, "org/broken")
    study = store.study_for(crashed, store.record_environment(GPU_ENV))
    trial(store, study.id, BF16, 1, "crash", "segmentation fault")
    rec = recommend(store, crashed, current=GPU_ENV)
    assert rec.best is None and "none of the 1 trials of org/broken succeeded (crash)" in rec.message  # type: ignore[operator]


def test_no_fit_exits_1_and_encoders_say_cosine_similarity(cli, store_url, monkeypatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("AUTOTUNE_DB", store_url)
    with Store.open(store_url) as store:
        resolved = ResolvedModel(
            name="org/bert", source="hf-cache", path=None, revision="b" * 40, config={"model_type": "bert", "architectures": ["BertModel"]}
        )
        model, _, _ = store.upsert_model(
            resolved,
            {"architecture": "BertModel", "attn_implementations": ["eager", "sdpa"]},
            Workload(task="feature-extraction", prompt_tokens=128, max_memory=MemoryLimit.parse("20GiB")),
        )
        study = store.study_for(model, store.record_environment(GPU_ENV))
        for candidate, cosine, peak in ((BF16, 0.9993, 3), (Candidate(dtype="float32", attn="sdpa"), 1.0, 30)):
            store.record_trial(
                study.id,
                candidate,
                8,
                "ok",
                metrics={
                    "sequences_per_s": 900.0,
                    "latency_p50_ms": 8.0,
                    "quality_token_agreement": cosine,
                    "peak_memory_bytes": peak * GiB,
                },
            )
    result = cli("recommend", "org/bert")
    assert result.code == 0, result.err
    assert "cosine similarity 0.9993" in result.out and "quality floor 0.90 cosine similarity" in result.out
    assert "token agreement" not in result.out
    tight = cli("recommend", "org/bert", "--max-memory", "1GiB")
    assert tight.code == 1 and len(tight.err.splitlines()) == 1
    assert tight.err.startswith("autotune: no recommendation for org/bert: no measured trial of org/bert meets the constraints")
    assert "quality floor 0.90 cosine similarity" in tight.err
    assert json.loads(cli("recommend", "org/bert", "--max-memory", "1GiB", "--json").out)["recommendation"] is None
    assert cli("recommend", "org/bert", "--max-memory", "1GiB", "--json").code == 1
    nothing = cli("recommend", "org/bert", "--max-memory", "1GiB", "--write", tmp_path / "bert_loader.py")
    assert nothing.code == 1 and nothing.err.startswith("autotune: nothing to write for org/bert: no measured trial")
    assert not (tmp_path / "bert_loader.py").exists()
    assert "COSINE SIMILARITY" in cli("trials", "org/bert", "--all").out


# -- explanations that compare like with like (issue 13's two misleading examples) -----------------

CPU_ENV = Environment(
    gpus=(), versions={"torch": "2.13.0+cpu", "transformers": "5.24.0", "bitsandbytes": "0.50.2", "accelerate": "1.15.0"}, hostname="ci"
)
CPU_CAPS = {"architecture": "LlamaForCausalLM", "attn_implementations": ["eager", "sdpa"], "transformers": "5.24.0"}


def cpu_trial(
    store: Store,
    study_id: int,
    candidate: Candidate,
    tps: float,
    *,
    spread: float = 0.02,
    repeats: int = 5,
    details: dict | None = None,
    origin: str = "search",
    agreement: float = 1.0,
) -> None:
    metrics = {
        "throughput_tokens_per_s": tps,
        "latency_p50_ms": 1000 / tps,
        "latency_spread": spread,
        "repeats": repeats,
        "quality_token_agreement": agreement,
        "peak_memory_bytes": GiB,
    }
    store.record_trial(
        study_id, candidate, 1, "ok", metrics=metrics, details=details or {}, origin=origin, feasible=agreement >= 0.9, objective_value=tps
    )


def test_bnb_never_measured_is_not_measured_yet_not_unavailable(store) -> None:  # type: ignore[no-untyped-def]
    """After a CPU study that measured no bitsandbytes, its static-cache variants' rejection was
    reported as the whole option ("bnb 8-bit: not available here: bnb-8bit with a static cache")."""
    from autotune.search.space import build_space

    # SmolLM2-135M's shape: the forecast admits every load of it on the CPU
    smol = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": 576,
        "intermediate_size": 1536,
        "num_hidden_layers": 30,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "vocab_size": 49152,
        "max_position_embeddings": 8192,
        "tie_word_embeddings": True,
    }
    resolved = ResolvedModel(name="/m/smol", source="local", path=None, revision=None, config=smol)
    model, _, _ = store.upsert_model(resolved, CPU_CAPS, Workload(device="cpu", max_batch=1))
    study = store.study_for(model, store.record_environment(CPU_ENV))
    space = build_space(model.config, CPU_CAPS, model.workload, CPU_ENV)
    assert any("bnb-8bit with a static cache" in r.reason for r in space.rejected)  # the rejection that misled
    store.update_study(study.id, rejected=[r.to_dict() for r in space.rejected])
    cpu_trial(store, study.id, Candidate(dtype="float32", attn="sdpa", placement="cpu"), 40)
    cpu_trial(store, study.id, Candidate(dtype="bfloat16", attn="sdpa", placement="cpu"), 80)
    rec = recommend(store, model, current=CPU_ENV)
    why = by_option(rec)
    assert rec.best.candidate.dtype == "bfloat16"  # type: ignore[union-attr]
    for option, flag in (("bnb 8-bit", "--quant bnb-8bit"), ("bnb 4-bit nf4", "--quant bnb-4bit-nf4")):
        assert why[option].kind == "not-measured", why[option]  # type: ignore[attr-defined]
        assert "static cache" not in why[option].reason and flag in why[option].reason  # type: ignore[attr-defined]
    assert "--dtype float16" in why["bnb 8-bit"].reason  # type: ignore[attr-defined]  # int8 loads in fp16
    # every variant of these is refused on the CPU: "not available", with the rule's reason
    assert why["static cache (torch.compile)"].kind == "unavailable"  # type: ignore[attr-defined]
    assert "only on CUDA" in why["static cache (torch.compile)"].reason  # type: ignore[attr-defined]
    assert why["flash_attention_2"].kind == "unavailable"  # type: ignore[attr-defined]


def test_a_loss_measured_with_another_difference_says_which(store) -> None:  # type: ignore[no-untyped-def]
    """On a GPU, "fp16 87.7% slower (its best: fp16 sdpa int8)" blamed fp16 for what int8 cost."""
    model = register(store)
    study = store.study_for(model, store.record_environment(GPU_ENV))
    trial(store, study.id, BF16, 16, tps=1200, p50=400, peak=15)
    trial(store, study.id, INT8, 16, tps=148, p50=3000, peak=9, agreement=0.95)
    rec = recommend(store, model, current=GPU_ENV)
    fp16 = by_option(rec)["fp16"]
    assert fp16.kind == "slower" and fp16.reason.startswith("87.7% slower")  # type: ignore[attr-defined]
    assert "also differs from the winner in bnb 8-bit" in fp16.reason  # type: ignore[attr-defined]
    alone = "fp16 alone is not measured yet (autotune measure org/llama --dtype float16 --attn sdpa)"
    assert alone in fp16.reason  # type: ignore[attr-defined]
    # once plain fp16 is measured, fp16 is judged by it alone
    trial(store, study.id, FP16, 16, tps=1150, p50=420, peak=15)
    fp16 = by_option(recommend(store, model, current=GPU_ENV))["fp16"]
    assert fp16.reason.startswith("4.2% slower") and "also differs" not in fp16.reason  # type: ignore[attr-defined]
    # an 8-bit load is fp16 by necessity: said, as the other difference of its measurement
    assert "also differs from the winner in fp16" in by_option(rec)["bnb 8-bit"].reason  # type: ignore[attr-defined]


def test_unsupported_as_measured_is_not_unavailable(store) -> None:  # type: ignore[no-untyped-def]
    model = register(store)
    study = store.study_for(model, store.record_environment(GPU_ENV))
    trial(store, study.id, BF16, 16, tps=1200, p50=400, peak=15)
    trial(store, study.id, NF4, 16, "unsupported", "bnb-4bit-nf4 did not take effect: 4 of the 14 linear layers were left as they were")
    why = by_option(recommend(store, model, current=GPU_ENV))["bnb 4-bit nf4"]
    assert why.kind == "unsupported"  # type: ignore[attr-defined]
    assert why.reason.startswith("unsupported as measured (bf16 sdpa nf4+dq cuda)")  # type: ignore[attr-defined]


# -- how sure: the margin against the timing noise, a busy machine, re-measured pairs --------------


def test_margin_against_timing_noise_and_busy_machine(store, store_url, cli, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    model, _, _ = store.upsert_model(
        ResolvedModel(
            name="/m/smol", source="local", path=None, revision=None, config={"model_type": "llama", "architectures": ["LlamaForCausalLM"]}
        ),
        CPU_CAPS,
        Workload(device="cpu", max_batch=1),
    )
    study = store.study_for(model, store.record_environment(CPU_ENV))
    busy = {"machine": {"cpus": 2, "other_cpu_share": 0.62, "load_1m": 6.1}}
    cpu_trial(store, study.id, Candidate(dtype="float32", attn="sdpa", placement="cpu"), 100, spread=0.45, repeats=10, details=busy)
    cpu_trial(store, study.id, Candidate(dtype="bfloat16", attn="sdpa", placement="cpu"), 93, spread=0.40, repeats=10)
    rec = recommend(store, model, current=CPU_ENV)
    # median errors: 0.489 x 0.45 / sqrt(10) and 0.489 x 0.40 / sqrt(10); 1.96 x their root sum of squares
    assert rec.margin is not None and rec.margin.margin == pytest.approx(0.07)
    assert rec.margin.noise == pytest.approx(1.96 * 0.489 * (0.45**2 + 0.40**2) ** 0.5 / 10**0.5, rel=1e-3)
    assert not rec.margin.clear and rec.margin.describe().startswith("uncertain: 7.0% ahead")
    assert len(rec.busy) == 1 and "other processes took 62% of the 2 CPUs, load 6.1" in rec.busy[0]
    assert "fp32 sdpa cpu at batch 1" in rec.busy[0]
    lean = recommend(store, model, current=CPU_ENV, objective="memory")
    assert lean.busy == () and lean.margin is None  # a busy machine moves timings, not peaks
    doc = rec.to_dict()
    assert doc["confidence"]["clear"] is False and doc["busy"] == list(rec.busy)
    monkeypatch.setenv("AUTOTUNE_DB", store_url)
    out = cli("recommend", "/m/smol", "--no-code").out
    assert "confidence: uncertain: 7.0% ahead of the runner-up, timing noise ±" in out
    assert "could trade places: `autotune tune /m/smol` measures a close finish again, interleaved" in out
    assert "warning: the machine was busy while fp32 sdpa cpu at batch 1 was timed" in out
    # precise timings make the same lead clear
    cpu_trial(store, study.id, Candidate(dtype="float32", attn="eager", placement="cpu"), 130, spread=0.03, repeats=10)
    cpu_trial(store, study.id, Candidate(dtype="bfloat16", attn="eager", placement="cpu"), 121, spread=0.03, repeats=10)
    rec = recommend(store, model, current=CPU_ENV)
    assert rec.best.candidate.attn == "eager" and rec.margin.clear and rec.busy == ()  # type: ignore[union-attr]


def test_a_re_measured_pair_is_judged_by_its_interleaved_medians(store) -> None:  # type: ignore[no-untyped-def]
    model, _, _ = store.upsert_model(
        ResolvedModel(
            name="/m/smol", source="local", path=None, revision=None, config={"model_type": "llama", "architectures": ["LlamaForCausalLM"]}
        ),
        CPU_CAPS,
        Workload(device="cpu", max_batch=1),
    )
    study = store.study_for(model, store.record_environment(CPU_ENV))
    fp32, bf16 = Candidate(dtype="float32", attn="sdpa", placement="cpu"), Candidate(dtype="bfloat16", attn="sdpa", placement="cpu")
    cpu_trial(store, study.id, fp32, 100, spread=0.4, repeats=10)  # timed while the machine was busy with something else
    cpu_trial(store, study.id, bf16, 95, spread=0.4, repeats=10)
    assert recommend(store, model, current=CPU_ENV).best.candidate == fp32  # type: ignore[union-attr]
    for fp32_value, bf16_value in ((90, 180), (95, 170)):  # interleaved: bf16 is twice as fast
        cpu_trial(store, study.id, fp32, fp32_value, origin="confirm")
        cpu_trial(store, study.id, bf16, bf16_value, origin="confirm")
    rec = recommend(store, model, current=CPU_ENV)
    assert rec.best.candidate == bf16 and rec.best_value == 170 and rec.best.origin == "confirm"  # type: ignore[union-attr]
    assert rec.runners_up[0].value == 90 and len(rec.confirmed) == 2  # the less flattering median of two
    assert rec.margin.rounds == pytest.approx((90 / 180, 75 / 170)) and rec.margin.clear  # type: ignore[union-attr]
    assert "ahead in 2 of 2 interleaved rounds (+50.0%, +44.1%)" in rec.margin.describe()  # type: ignore[union-attr]
    fast = recommend(store, model, current=CPU_ENV, objective="latency")  # the re-measurements read in another objective
    assert fast.best.candidate == bf16 and fast.margin.rounds == pytest.approx((1.0, 75 / 95))  # type: ignore[union-attr]
    # a third round the other way: the lead is no longer clear, whatever the medians say
    cpu_trial(store, study.id, fp32, 200, origin="confirm")
    cpu_trial(store, study.id, bf16, 175, origin="confirm")
    rec = recommend(store, model, current=CPU_ENV)
    assert rec.best.candidate == bf16 and not rec.margin.clear  # type: ignore[union-attr]
    assert "ahead in 2 of 3 interleaved rounds" in rec.margin.describe()  # type: ignore[union-attr]
