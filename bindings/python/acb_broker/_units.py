"""Sizes and durations as people write them (``80GiB``, ``512M``, ``1.5s``): the grammar of
acb-core/src/units.rs, which states it in full. Both follow the vectors in
tests/vectors/units.json (this package's tests/test_units.py and acb-core/tests/units.rs read
them), so Python and Rust accept and refuse the same inputs.

In short: a number (ASCII digits, optionally a point and at most 9 more digits), optional
whitespace, a case-sensitive unit; ASCII whitespace around it is ignored. Sizes: B (or none),
K/KiB, M/MiB, G/GiB, T/TiB (powers of 1024), kB/KB, MB, GB, TB (powers of 1000). Durations: ms,
s (or none), m, h. Fractions are exact, rounded to the nearest byte or nanosecond, halves up.
At most 2**64 - 1 bytes or nanoseconds.

This module imports nothing from the package, so it loads without libacb.
"""
from typing import Dict, Union

# Rust's `str::trim_ascii`: the bytes `u8::is_ascii_whitespace` accepts.
_WHITESPACE = " \t\n\r\f"
_DIGITS = "0123456789"
_MAX_DECIMALS = 9
_U64_MAX = 2**64 - 1

SIZE_UNITS: Dict[str, int] = {
    "": 1, "B": 1,
    "K": 1 << 10, "KiB": 1 << 10, "M": 1 << 20, "MiB": 1 << 20,
    "G": 1 << 30, "GiB": 1 << 30, "T": 1 << 40, "TiB": 1 << 40,
    "kB": 10**3, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
}

_SECOND = 10**9
DURATION_UNITS: Dict[str, int] = {"": _SECOND, "ms": 10**6, "s": _SECOND, "m": 60 * _SECOND, "h": 3600 * _SECOND}

_WORDS = {
    "size": ("80GiB, 512M, 1.5GiB, 40GB, 1024", "B, KiB, MiB, GiB, TiB (or K, M, G, T), kB, MB, GB or TB",
             "2^64 - 1 bytes"),
    "duration": ("500ms, 30s, 1.5m, 2h", "ms, s, m or h", "about 584 years"),
}


class UnitError(ValueError):
    """An input that is not a size or a duration. ``reason`` is one of the names the shared
    vectors use: empty, negative, bad-number, too-precise, unknown-unit, out-of-range."""

    def __init__(self, quantity: str, text: str, reason: str, unit: str = ""):
        example, units, most = _WORDS[quantity]
        message = {
            "empty": f"empty; expected a {quantity} (e.g. {example})",
            "negative": f"a {quantity} cannot be negative",
            "bad-number": f"not a {quantity} (e.g. {example})",
            "too-precise": f"at most {_MAX_DECIMALS} digits after the point",
            "unknown-unit": f"unknown unit {unit!r}; use {units}",
            "out-of-range": f"out of range (at most {most})",
        }[reason]
        super().__init__(f"{text!r}: {message}")
        self.quantity = quantity
        self.input = text
        self.reason = reason


def _parse(text: str, quantity: str, units: Dict[str, int]) -> int:
    if not isinstance(text, str):
        raise TypeError(f"a {quantity} is a string like '20GiB' or '500ms', not {type(text).__name__}")
    s = text.strip(_WHITESPACE)
    if not s:
        raise UnitError(quantity, text, "empty")
    if s.startswith("-"):
        raise UnitError(quantity, text, "negative")
    end = 0
    while end < len(s) and (s[end] in _DIGITS or s[end] == "."):
        end += 1
    whole, point, fraction = s[:end].partition(".")
    if not whole or "." in fraction or (point and not fraction):
        raise UnitError(quantity, text, "bad-number")
    if len(fraction) > _MAX_DECIMALS:
        raise UnitError(quantity, text, "too-precise")
    unit = s[end:].lstrip(_WHITESPACE)
    if unit not in units:
        raise UnitError(quantity, text, "unknown-unit", unit)
    multiplier = units[unit]
    denominator = 10 ** len(fraction)
    # Exact: the same integer arithmetic as the Rust side, never floating point.
    value = int(whole) * multiplier + (int(fraction or "0") * multiplier * 2 + denominator) // (2 * denominator)
    if value > _U64_MAX:
        raise UnitError(quantity, text, "out-of-range")
    return value


def parse_size(size: Union[int, str]) -> int:
    """Bytes from an int or a string like '20GiB', '512M', '40GB', '1.5 GiB'."""
    if isinstance(size, bool) or not isinstance(size, (int, str)):
        raise TypeError(f"a size is an int of bytes or a string like '20GiB', not {type(size).__name__}")
    if isinstance(size, int):
        if size < 0:
            raise ValueError("a size cannot be negative")
        if size > _U64_MAX:
            raise ValueError("a size is at most 2^64 - 1 bytes")
        return size
    return _parse(size, "size", SIZE_UNITS)


def parse_duration_ns(duration: str) -> int:
    """Nanoseconds from a string like '500ms', '30s', '1.5m', '2h' or '10' (seconds)."""
    return _parse(duration, "duration", DURATION_UNITS)
