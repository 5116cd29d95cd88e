"""Tolerances for ``torch.testing.assert_close``, typed so that ``assert_close(a, b, **TOL)``
type-checks (a plain ``dict(atol=..., rtol=...)`` is a ``dict[str, float]``, which mypy
cannot match to the keyword parameters)."""

from typing import TypedDict


class Tolerance(TypedDict):
    atol: float
    rtol: float
