"""Every layer's activations for one image, as pictures and as numbers.

:func:`layer_figure` draws one layer's output: each channel of a spatial layer as a cell of a
grid on one colour scale shared by the whole layer (so channels compare), with its colour bar
(the "activations of each layer" figure of cs231n's visualization notes); a vector layer's
values laid out row-major on a near-square grid. :func:`sparsity` measures the fraction of
exact zeros per layer, which grows with depth in a ReLU network (Zeiler & Fergus, 2014).
"""

from __future__ import annotations

import math

import torch
from PIL import Image

from convlens.errors import ConvlensError
from convlens.io.color import Scale
from convlens.io.figure import caption, colorbar, grid, heatmap, hstack, upscale
from convlens.model import Model
from convlens.model.graph import Layer
from convlens.probe import record_all

MAX_CHANNELS = 4096  # the most channels one figure may be asked to draw
FIGURE_WIDTH = 1200  # target width of a grid, pixels


def activations(model: Model, image: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every layer's output for one image ``(C, H, W)`` or ``(1, C, H, W)`` in ``[0, 1]``,
    by layer name, without the batch dimension (the ``input`` entry is the normalized image)."""
    x = image.unsqueeze(0) if image.dim() == 3 else image
    if x.dim() != 4 or x.shape[0] != 1:
        raise ConvlensError(f"give one image (C, H, W), got shape {tuple(image.shape)}")
    outputs, _ = record_all(model, x)
    return {name: out[0].detach().float() for name, out in outputs.items()}


def sparsity(acts: dict[str, torch.Tensor]) -> dict[str, float]:
    """The fraction of exact zeros in each layer's output (ReLUs make them)."""
    return {name: float((a == 0).float().mean()) for name, a in acts.items() if a.numel()}


def _cell_size(ncols: int, side: int) -> int:
    """Cells fill about :data:`FIGURE_WIDTH` pixels, at least 24 and never more than needed
    to show each activation as a 4-pixel block."""
    return max(24, min(FIGURE_WIDTH // max(ncols, 1) - 4, max(4 * side, 24), 128))


def layer_figure(
    layer: Layer, values: torch.Tensor, max_channels: int = 64, model_name: str = ""
) -> Image.Image:
    """One layer's activations ``(C, H, W)`` (or ``(N,)``) as a titled grid with a colour bar.

    Spatial layers show their first ``max_channels`` channels (the title says when more exist);
    all share one ``viridis`` scale fitted to the channels shown.
    """
    if not 1 <= max_channels <= MAX_CHANNELS:
        raise ConvlensError(f"max channels must be 1..{MAX_CHANNELS}, got {max_channels}")
    shape = "x".join(map(str, values.shape))  # the bundled font has no ×
    head = f"{model_name} · " if model_name else ""
    head += f"{layer.name} ({layer.op}, {shape})"
    if values.dim() == 3:
        shown = values[:max_channels]
        scale = Scale.fit(shown, "viridis")
        ncols = math.ceil(math.sqrt(len(shown)))
        cell = _cell_size(ncols, max(values.shape[1:]))
        cells = [heatmap(ch, scale) for ch in shown]
        body = grid(cells, ncols, [f"#{i}" for i in range(len(shown))], cell_size=cell, gap=3,
                    label_size=10)  # fmt: skip
        more = len(values) - len(shown)
        what = (
            f"first {len(shown)} of {len(values)} channels (capped by --max-channels)"
            if more
            else f"all {len(values)} channels"
        )
        title = f"{head}: {what}, one colour scale"
    else:
        flat = values.flatten()
        side = math.ceil(math.sqrt(flat.numel()))
        padded = torch.full((side * side,), float("nan"))
        padded[: flat.numel()] = flat
        scale = Scale.fit(flat, "viridis")
        body = upscale(heatmap(padded.view(side, side), scale), 240)
        title = f"{head}: {flat.numel()} values, row-major on a {side}x{side} grid"
    bar = colorbar(scale, length=max(60, min(body.height - 20, 300)))
    return caption(hstack([body, bar], gap=10, align="top"), title, size=14)
