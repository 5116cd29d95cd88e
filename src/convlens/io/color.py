"""Colormaps as 256-entry lookup tables, without matplotlib.

Each map is built by linear interpolation between published anchor colours (viridis and turbo
at evenly spaced stops, ColorBrewer's RdBu for signed values). ``diverging`` maps are meant for
signed data centred on zero: blue below, white at zero, red above.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
import torch

from convlens.errors import unknown_name

_ANCHORS: dict[str, tuple[str, ...]] = {
    "viridis": (
        "#440154", "#472c7a", "#3b518b", "#2c718e", "#21908d",
        "#27ad81", "#5cc863", "#aadc32", "#fde725",
    ),
    "turbo": (
        "#30123b", "#4145ab", "#4675ed", "#39a2fc", "#1bcfd4", "#24eca6", "#61fc6c", "#a4fc3b",
        "#d1e834", "#f3c63a", "#fe9b2d", "#f36315", "#d93806", "#b11901", "#7a0402",
    ),
    "rdbu": (
        "#053061", "#2166ac", "#4393c3", "#92c5de", "#d1e5f0", "#f7f7f7",
        "#fddbc7", "#f4a582", "#d6604d", "#b2182b", "#67001f",
    ),
    "gray": ("#000000", "#ffffff"),
    "reds": ("#fff5f0", "#fcbba1", "#fb6a4a", "#cb181d", "#67000d"),
}  # fmt: skip

DIVERGING = frozenset({"rdbu"})


@dataclass(frozen=True)
class Scale:
    """A value range mapped onto a colormap; symmetric around zero for diverging maps."""

    cmap: str
    vmin: float
    vmax: float

    @classmethod
    def fit(cls, values: np.ndarray | torch.Tensor, cmap: str = "viridis") -> Scale:
        arr = np.asarray(values.detach().cpu() if isinstance(values, torch.Tensor) else values)
        finite = arr[np.isfinite(arr)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        if cmap in DIVERGING:
            m = max(abs(lo), abs(hi)) or 1.0
            return cls(cmap, -m, m)
        if hi <= lo:
            hi = lo + 1.0
        return cls(cmap, lo, hi)

    @classmethod
    def robust(
        cls, values: np.ndarray | torch.Tensor, cmap: str = "viridis", percentile: float = 99.5
    ) -> Scale:
        """Like :meth:`fit`, but the top end at a percentile of ``|values|``, so that a few
        extreme pixels (common in gradient maps) do not wash out the rest."""
        arr = np.asarray(values.detach().cpu() if isinstance(values, torch.Tensor) else values)
        finite = np.abs(arr[np.isfinite(arr)])
        top = float(np.percentile(finite, percentile)) if finite.size else 1.0
        top = top or float(finite.max(initial=0.0)) or 1.0
        if cmap in DIVERGING:
            return cls(cmap, -top, top)
        lo = float(arr[np.isfinite(arr)].min(initial=0.0))
        return cls(cmap, min(lo, 0.0) if lo >= -top else -top, top)


def _hex_to_rgb(h: str) -> tuple[int, int, int]:
    return int(h[1:3], 16), int(h[3:5], 16), int(h[5:7], 16)


@cache
def lut(name: str) -> np.ndarray:
    """The ``(256, 3)`` uint8 table of colormap ``name``."""
    if name not in _ANCHORS:
        raise unknown_name("colormap", name, _ANCHORS)
    anchors = np.array([_hex_to_rgb(h) for h in _ANCHORS[name]], dtype=np.float64)
    stops = np.linspace(0.0, 1.0, len(anchors))
    x = np.linspace(0.0, 1.0, 256)
    table = np.stack([np.interp(x, stops, anchors[:, c]) for c in range(3)], axis=1)
    return np.rint(table).astype(np.uint8)


def colormap_names() -> list[str]:
    return list(_ANCHORS)


def colorize(values: np.ndarray | torch.Tensor, scale: Scale) -> np.ndarray:
    """Map a 2-D array onto ``scale`` as an ``(H, W, 3)`` uint8 image; NaNs are gray."""
    arr = np.asarray(
        values.detach().float().cpu() if isinstance(values, torch.Tensor) else values,
        dtype=np.float64,
    )
    span = scale.vmax - scale.vmin or 1.0
    idx = np.clip((arr - scale.vmin) / span, 0.0, 1.0)
    idx = np.nan_to_num(idx, nan=0.5)
    out = lut(scale.cmap)[np.rint(idx * 255).astype(np.int64)]
    out[~np.isfinite(arr)] = (128, 128, 128)
    return out


# Tableau's 10 categorical colours, then 10 lighter partners: classes stay distinguishable.
CATEGORICAL = (
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f",
    "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac",
    "#a0cbe8", "#ffbe7d", "#ff9d9a", "#86bcb6", "#8cd17d",
    "#f1ce63", "#d4a6c8", "#fabfd2", "#d7b5a6", "#79706e",
)  # fmt: skip


def category_colors(n: int) -> list[tuple[int, int, int]]:
    """``n`` RGB colours for classes; past 20 they repeat."""
    return [_hex_to_rgb(CATEGORICAL[i % len(CATEGORICAL)]) for i in range(n)]
