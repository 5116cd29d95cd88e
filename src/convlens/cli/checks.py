"""Bounds on command-line values: every bad value is one line naming the accepted range.

Click already refuses text where a number is expected; what it lets through are NaN, ±inf,
negative and absurdly large numbers, which would otherwise surface deep inside torch as a
traceback, a 40 GB allocation or a silently wrong result. Each command checks its numbers
here, before any work, with the range written once next to the option.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from convlens.errors import ConvlensError
from convlens.methods.base import Method, check_params

SEED_MAX = 2**32 - 1  # numpy's seeds are 32-bit; torch's are wider


def _fmt(v: int) -> str:
    return f"{v:_}" if abs(v) >= 10**6 else str(v)


def in_range(
    flag: str,
    value: float,
    lo: float | None = None,
    hi: float | None = None,
    *,
    lo_open: bool = False,
) -> float:
    """``value`` if it is finite and within ``[lo, hi]`` (``(lo, hi]`` with ``lo_open``).

    >>> in_range("--eps", float("nan"), 0, 1, lo_open=True)
    Traceback (most recent call last):
    ...
    convlens.errors.ConvlensError: --eps must be a number in (0, 1], got nan
    """
    is_int = isinstance(value, int) and not isinstance(value, bool)
    ok = (
        (is_int or math.isfinite(value))
        and (lo is None or (value > lo if lo_open else value >= lo))
        and (hi is None or value <= hi)
    )
    if ok:
        return value
    accepted = describe_range(lo, hi, integer=is_int, lo_open=lo_open)
    raise ConvlensError(f"{flag} must be {accepted}, got {value}")


def describe_range(
    lo: float | None, hi: float | None, *, integer: bool = False, lo_open: bool = False
) -> str:
    """``an integer in 1..10000``, ``a number in (0, 1]``, ``a number ≥ 0``..."""
    if integer:
        if lo is not None and hi is not None:
            return f"an integer in {_fmt(int(lo))}..{_fmt(int(hi))}"
        if lo is not None:
            return f"an integer ≥ {_fmt(int(lo))}"
        return f"an integer ≤ {_fmt(int(hi or 0))}" if hi is not None else "an integer"
    if lo is not None and hi is not None:
        return f"a number in {'(' if lo_open else '['}{lo:g}, {hi:g}]"
    if lo is not None:
        return f"a number {'>' if lo_open else '≥'} {lo:g}"
    return f"a finite number ≤ {hi:g}" if hi is not None else "a finite number"


def seed(value: int, flag: str = "--seed") -> int:
    return int(in_range(flag, value, 0, SEED_MAX))


def check_method_param(method: str, method_cls: type[Method], name: str, value: Any) -> Any:
    """A ``--param`` value for ``method``: within the bound its class declares
    (``Method.bounds``, the same check the API and the server make), else at least finite."""
    bound = method_cls.bounds.get(name)
    if bound is not None:
        check_params(method_cls, {name: value})
        return value
    for v in value if isinstance(value, tuple) else (value,):
        if not isinstance(v, bool) and isinstance(v, int | float):
            in_range(f"--param {method}.{name}", v)
    return value


def png_target(out: str | Path, default_name: str) -> Path:
    """Where a single-figure command writes: ``--out x.png`` is the file; a folder (an existing
    one, a name ending in ``/`` or a name without a suffix) gets ``default_name`` inside.

    >>> png_target("figs/", "fool.png"), png_target("a/b.png", "fool.png")
    (PosixPath('figs/fool.png'), PosixPath('a/b.png'))
    """
    text = str(out)
    if not text.strip():
        raise ConvlensError("--out is empty; give a .png file name or a folder")
    path = Path(text)
    if text.endswith(("/", "\\")) or path.is_dir() or not path.suffix:
        return path / default_name
    if path.suffix.lower() != ".png":
        raise ConvlensError(
            f"--out {text!r}: figures are PNG files; give a name ending in .png or a folder"
        )
    return path
