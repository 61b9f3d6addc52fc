"""The axes of a candidate, declared once (:mod:`autotune.axes`): one canonical form for the space
and the what-ifs, labels and flags from the table, and a lever added in one place reaching the
space, ``autotune measure``, the what-ifs, the loader and the report."""

from __future__ import annotations

from pathlib import Path

import pytest
from search_fakes import CPU_WORKLOAD, LLAMA_CAPS, TINY_LLAMA, FakeMeasure, add_model, cpu_env

from autotune import axes
from autotune.advisor.recommend import recommend
from autotune.candidate import RUNTIMES, Candidate
from autotune.search.space import build_space, candidate_from, params_of, parse_restriction
from autotune.search.study import SearchSettings, StudySearch
from autotune.store import Store

#: A made-up lever: fused kernels, a PyTorch loading option that applies only on the CPU.
TOY = axes.Axis(
    "toy_fuse",
    False,
    (False, True),
    owner="pytorch",
    why_not=lambda p: None if p.get("placement") == "cpu" else "fused kernels: only on the CPU",
    label=lambda p: "fused" if p.get("toy_fuse") else None,
    option=lambda p: "fused kernels" if p.get("toy_fuse") else "unfused kernels",
    what_ifs=({"toy_fuse": True},),
    flag=axes.Flag("--toy-fuse", {"action": "store_true", "help": "fuse the kernels (a test's lever)"}),
    measure_flag=lambda p: "--toy-fuse" if p.get("toy_fuse") else None,
    loader=lambda p: {"toy_fuse": True} if p.get("toy_fuse") else {},
)


@pytest.fixture
def toy(monkeypatch: pytest.MonkeyPatch) -> axes.Axis:
    monkeypatch.setattr(axes, "AXES", (*axes.AXES, TOY))
    return TOY


def test_runtimes_are_declared_once() -> None:
    from autotune.worker import backends

    assert RUNTIMES is axes.RUNTIMES and backends.RUNTIMES is axes.RUNTIMES
    assert axes.axis("runtime").values == RUNTIMES


def test_one_canonical_form_for_the_space_and_the_what_ifs() -> None:
    # 8-bit drops the 4-bit options; a compute dtype equal to the dtype is the default; no kernel without SDPA
    assert axes.canonical({"quant": "bnb-8bit", "double_quant": True, "compute_dtype": "float16", "dtype": "float16"}) == {
        **{a.name: a.default for a in axes.extra_axes()},
        **Candidate(quant="bnb-8bit", dtype="float16").to_dict(),
    }
    assert axes.canonical({"quant": "bnb-4bit-nf4", "dtype": "float16", "compute_dtype": "float16"})["compute_dtype"] is None
    assert axes.canonical({"attn": "eager", "sdpa_kernel": "flash"})["sdpa_kernel"] is None
    # ONNX Runtime holds every PyTorch loading option at its default, and PyTorch ONNX Runtime's
    ort = axes.canonical({"runtime": "onnxruntime", "provider": "CPUExecutionProvider", "attn": "eager", "static_cache": True})
    assert ort["attn"] == "sdpa" and ort["static_cache"] is False and ort["provider"] == "CPUExecutionProvider"
    assert axes.canonical({"provider": "CPUExecutionProvider", "io_binding": True})["provider"] is None
    # the sampler's points go through it
    point = {**params_of(Candidate(quant="bnb-8bit", dtype="float16")), "double_quant": True, "compute_dtype": "bfloat16"}
    assert candidate_from(point) == Candidate(quant="bnb-8bit", dtype="float16")


def test_labels_and_flags_come_from_the_table() -> None:
    c = Candidate(
        dtype="bfloat16", sdpa_kernel="flash", quant="bnb-4bit-nf4", double_quant=True, compute_dtype="float16", static_cache=True
    )
    assert c.label() == "bf16 sdpa[flash] nf4+dq(fp16) cuda static"
    assert c.measure_args() == (
        "--dtype bf16 --placement cuda --attn sdpa --sdpa-kernel flash --quant bnb-4bit-nf4 --double-quant --compute-dtype fp16 --static-cache"
    )
    ort = Candidate(dtype="float32", placement="cpu", runtime="onnxruntime", provider="CPUExecutionProvider", io_binding=True)
    assert ort.label() == "fp32 onnxruntime[CPU] io-binding cpu"
    assert ort.measure_args() == "--dtype fp32 --placement cpu --runtime onnxruntime --provider CPUExecutionProvider --io-binding"


def test_a_lever_added_in_one_place_reaches_every_reader(toy: axes.Axis, tmp_path: Path) -> None:
    from autotune.cli import build_parser, subcommands

    # the candidate: the lever is a value of its own, and left out of the key at its default
    plain = Candidate(placement="cpu")
    fused = Candidate.from_dict({**plain.to_dict(), "toy_fuse": True})
    assert fused.value("toy_fuse") is True and plain.value("toy_fuse") is False
    assert "toy_fuse" not in plain.to_dict() and plain.key() == Candidate(placement="cpu").key() != fused.key()
    assert fused.label() == "bf16 sdpa cpu fused" and fused.measure_args().endswith("--toy-fuse")
    assert Candidate.from_dict(fused.to_dict()) == fused

    # the space enumerates it where it applies, the sampler sees it, --space restricts it
    space = build_space(TINY_LLAMA, LLAMA_CAPS, CPU_WORKLOAD, cpu_env())
    assert space.choices["toy_fuse"] == (False, True) and fused in space
    assert all(candidate_from(params_of(c)) == c for c in space.candidates)
    only = build_space(TINY_LLAMA, LLAMA_CAPS, CPU_WORKLOAD, cpu_env(), restrict=parse_restriction("toy_fuse=true quant=none"))
    assert only.candidates and all(c.value("toy_fuse") for c in only.candidates)
    assert axes.canonical({"placement": "cuda", "toy_fuse": True})["toy_fuse"] is False  # where it does not apply

    # autotune measure has its flag, and builds the candidate from it
    measure = subcommands(build_parser())["measure"]
    assert "--toy-fuse" in measure.format_help()
    args = build_parser().parse_args(["measure", "org/tiny", "--toy-fuse"])
    assert args.toy_fuse is True

    # the loader passes its keyword arguments to from_pretrained
    from autotune.worker.loading import from_pretrained_kwargs
    from autotune.worker.protocol import WorkerRequest

    request = WorkerRequest("/models/tiny", "org/tiny", "text-generation", fused, CPU_WORKLOAD, (1,))
    assert from_pretrained_kwargs(request)["toy_fuse"] is True
    assert "toy_fuse" not in from_pretrained_kwargs(WorkerRequest("/models/tiny", "org/tiny", "text-generation", plain, CPU_WORKLOAD, (1,)))

    # a study that never tried it: the recommendation explains it as a what-if, and so does the report
    with Store.open(f"sqlite:///{tmp_path / 'toy.db'}") as store:
        model = add_model(store)
        settings = SearchSettings(seed=1, restrict=parse_restriction("dtype=bf16,fp32 attn=sdpa quant=none toy_fuse=false"))
        search = StudySearch(store, model, cpu_env(), store.record_environment(cpu_env()), settings, measure=FakeMeasure())
        while not search.step().finished:
            pass
        rec = recommend(store, model, current=cpu_env())
        verdict = next(v for v in rec.verdicts if v.axis == "toy_fuse")
        assert verdict.option == "fused kernels" and verdict.kind == "not-measured" and "--toy-fuse" in verdict.reason

        from autotune.report import write_report

        html = write_report(store, tmp_path / "report.html", model.name, current=cpu_env()).read_text()
        assert "fused kernels" in html
