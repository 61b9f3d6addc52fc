"""Sizes of memory as users write them, and as autotune prints them."""

from __future__ import annotations

import re

from autotune.errors import InputError

_UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$")


def parse_size(text: str) -> int:
    """Parse ``20GiB``, ``600MB``, ``1.5GB`` or a plain byte count into bytes.

    ``MB``/``GB`` are decimal and ``MiB``/``GiB`` binary, as in accelerate's ``max_memory``.
    A lowercase ``b`` (``20Gb``) means bits there, so it is refused as ambiguous here.
    """
    match = _SIZE.match(str(text))
    if not match:
        raise InputError(f"cannot read memory size {text!r}: write e.g. 20GiB, 600MB or 0.5 (a fraction of each GPU)")
    number, unit = match.groups()
    if unit and unit[-1] == "b" and unit.upper() != "B":
        raise InputError(
            f"memory size {text!r} is ambiguous: a lowercase 'b' means bits; write {number}{unit[:-1].upper()}B or {number}{unit[:-1].upper()}iB"
        )
    factor = _UNITS.get(unit.upper())
    if factor is None:
        raise InputError(f"unknown unit {unit!r} in memory size {text!r}: use B, KB, MB, GB, TB, KiB, MiB, GiB or TiB")
    value = float(number) * factor
    if value <= 0:
        raise InputError(f"memory size {text!r} must be greater than zero")
    return int(value)


def format_size(n_bytes: float | None) -> str:
    """``13.84 GB``-style text (decimal units, as GPU vendors print them), or ``-``."""
    if n_bytes is None:
        return "-"
    value = float(n_bytes)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(value) < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def format_gib(n_bytes: float | None) -> str:
    """``12.50 GiB``-style text, for comparison with limits written in GiB, or ``-``."""
    if n_bytes is None:
        return "-"
    return f"{n_bytes / 2**30:.2f} GiB"
