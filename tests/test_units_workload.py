from __future__ import annotations

import pytest

from autotune.errors import InputError
from autotune.units import format_gib, format_size, parse_size
from autotune.workload import MemoryLimit, Workload


@pytest.mark.parametrize(
    "text, expected",
    [
        ("20GiB", 20 * 2**30),
        ("600MB", 600_000_000),
        ("1.5GB", 1_500_000_000),
        ("512 MiB", 512 * 2**20),
        ("4096", 4096),
        ("2TiB", 2 * 2**40),
        ("10kb".upper(), 10_000),
    ],
)
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    "text, words",
    [
        ("lots", "cannot read"),
        ("20Gb", "bits"),
        ("20XB", "unknown unit"),
        ("0GB", "greater than zero"),
        ("-1GB", "cannot read"),
    ],
)
def test_parse_size_refuses(text: str, words: str) -> None:
    with pytest.raises(InputError, match=words):
        parse_size(text)


def test_memory_limit_fraction_and_bytes() -> None:
    half = MemoryLimit.parse("0.5")
    assert half.fraction == 0.5 and half.for_device(80 * 10**9) == 40 * 10**9
    fixed = MemoryLimit.parse("12GiB")
    assert fixed.bytes == 12 * 2**30 and fixed.for_device(8 * 2**30) == 8 * 2**30
    with pytest.raises(InputError):
        MemoryLimit.parse("1.5")  # neither a fraction nor a whole byte count


def test_format() -> None:
    assert format_size(13_840_000_000) == "13.84 GB"
    assert format_gib(2**31) == "2.00 GiB"
    assert format_size(None) == "-"


def test_workload_validation_and_round_trip() -> None:
    w = Workload(prompt_tokens=64, new_tokens=8, max_memory=MemoryLimit.parse("20GiB"), objective="latency")
    again = Workload.from_dict(w.to_dict())
    assert again == w and again.key() == w.key()
    assert w.with_changes(new_tokens=9).key() != w.key()
    for bad in (
        {"prompt_tokens": 0},
        {"new_tokens": -1},
        {"objective": "speed"},
        {"task": "translation"},
        {"device": "tpu"},
        {"padding_share": 1.0},
        {"min_quality": 2},
    ):
        with pytest.raises(InputError):
            Workload(**bad)
