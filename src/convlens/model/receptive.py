"""Receptive fields of spatial layers: which input pixels a unit can see.

For a chain of convolutions and pools, the recurrences of Araujo, Norris and Sim ("Computing
Receptive Fields of Convolutional Neural Networks", Distill 2019), per axis, from the input
(``r = 1, j = 1, start = 0``) through a layer with kernel ``k``, stride ``s``, padding ``p`` and
dilation ``d``::

    k_eff = d (k - 1) + 1
    r_out = r_in + (k_eff - 1) j_in        size, in input pixels
    j_out = j_in s                         effective stride (jump)
    start_out = start_in - p j_in          input coordinate of unit 0's first pixel

Unit ``i`` of the layer then sees input pixels ``[start + i j, start + i j + r)``; the box may
reach past the image where the layer pads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

Pair = tuple[int, int]


@dataclass(frozen=True)
class ReceptiveField:
    """Per-axis ``(height, width)`` receptive field of a layer's units."""

    size: Pair
    stride: Pair
    start: Pair
    is_global: bool = False  # every unit sees the whole input (after flatten or global pooling)

    @classmethod
    def identity(cls) -> ReceptiveField:
        return cls((1, 1), (1, 1), (0, 0))

    @classmethod
    def whole(cls, height: int, width: int) -> ReceptiveField:
        return cls((height, width), (height, width), (0, 0), is_global=True)

    def through(self, kernel: Pair, stride: Pair, padding: Pair, dilation: Pair) -> ReceptiveField:
        """The field after a sliding-window layer with these hyperparameters."""
        if self.is_global:
            return self
        size = tuple(
            r + (d * (k - 1)) * j
            for r, k, d, j in zip(self.size, kernel, dilation, self.stride, strict=True)
        )
        jump = tuple(j * s for j, s in zip(self.stride, stride, strict=True))
        start = tuple(st - p * j for st, p, j in zip(self.start, padding, self.stride, strict=True))
        return ReceptiveField(size, jump, start)  # type: ignore[arg-type]

    def union(self, other: ReceptiveField) -> ReceptiveField:
        """The field of an element-wise merge (add, concat) of two branches."""
        if self.is_global or other.is_global:
            return self if self.is_global else other
        start = tuple(min(a, b) for a, b in zip(self.start, other.start, strict=True))
        end = tuple(
            max(sa + ra, sb + rb)
            for sa, ra, sb, rb in zip(self.start, self.size, other.start, other.size, strict=True)
        )
        size = tuple(e - s for e, s in zip(end, start, strict=True))
        stride = tuple(max(a, b) for a, b in zip(self.stride, other.stride, strict=True))
        return ReceptiveField(size, stride, start)  # type: ignore[arg-type]

    def box(self, row: int, col: int) -> tuple[int, int, int, int]:
        """``(top, left, bottom, right)`` of unit ``(row, col)``, bottom/right exclusive.

        >>> ReceptiveField((3, 3), (1, 1), (0, 0)).box(2, 5)
        (2, 5, 5, 8)
        """
        if self.is_global:
            return (0, 0, self.size[0], self.size[1])
        top = self.start[0] + row * self.stride[0]
        left = self.start[1] + col * self.stride[1]
        return (top, left, top + self.size[0], left + self.size[1])

    def to_dict(self) -> dict[str, Any]:
        return {
            "size": list(self.size),
            "stride": list(self.stride),
            "start": list(self.start),
            "global": self.is_global,
        }


def output_size(n: int, kernel: int, stride: int, padding: int, dilation: int = 1) -> float:
    """``(N - F + 2P) / S + 1`` with ``F = d (k - 1) + 1``; not floored, so a fraction says the
    window does not tile the input."""
    return (n - (dilation * (kernel - 1) + 1) + 2 * padding) / stride + 1


def tiling_problem(
    size: Pair, kernel: Pair, stride: Pair, padding: Pair, dilation: Pair
) -> str | None:
    """Describe how the window fails to tile the (padded) input, or ``None`` if it tiles."""
    problems = []
    for axis, n, k, s, p, d in zip(
        ("height", "width"), size, kernel, stride, padding, dilation, strict=True
    ):
        out = output_size(n, k, s, p, d)
        if out < 1:
            problems.append(f"{axis}: window {d * (k - 1) + 1} is larger than input {n}+2×{p}")
        elif out != int(out):
            left_out = (n + 2 * p - (d * (k - 1) + 1)) % s
            problems.append(
                f"{axis}: ({n} − {d * (k - 1) + 1} + 2×{p})/{s} + 1 = {out:.2f} does not tile; "
                f"PyTorch floors it to {int(out)} and the last {left_out} row(s)/column(s) are "
                "never read"
            )
    return "; ".join(problems) or None
