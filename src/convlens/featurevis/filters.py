"""Filter views: a conv layer's weights as pictures, with a noise score per filter.

First-layer kernels act on the image itself, so they are shown as small images (RGB for colour
input, gray for one channel), each mapped by ``0.5 + w / (2 max|w|)`` with one ``max|w|`` for
the whole layer, so mid-gray is zero and filters stay comparable. Deeper kernels act on feature
maps, so each is drawn per input channel on a diverging blue-white-red scale centred on zero.

The noise score (roughness) of a filter compares neighbouring weights with its spread:

    roughness = mean over neighbour pairs of (w_i − w_j)²  /  (2 · var(w))

computed per input-channel slice and averaged. White noise scores about 1, a smooth kernel
(an edge or a blob) well below 1, a checkerboard up to 2. A trained first layer with
roughness near 1 looks like noise: under-trained or under-regularized (Zeiler and Fergus,
"Visualizing and Understanding Convolutional Networks", ECCV 2014, used exactly such views to
spot those problems).

>>> w = torch.randn(4, 3, 9, 9)
>>> bool(((roughness(w) - 1).abs() < 0.5).all())
True
"""

from __future__ import annotations

import torch
from PIL import Image, ImageDraw
from torch import nn

from convlens.errors import ConvlensError
from convlens.io.color import Scale
from convlens.io.figure import caption, colorbar, grid, heatmap, hstack, upscale, vstack
from convlens.model.core import Model


def conv_weights(model: Model, layer: str) -> torch.Tensor:
    """The weights ``(out, in/groups, kh, kw)`` of conv layer ``layer`` (a ``model.graph`` name)."""
    lay = model.graph[layer]
    if lay.kind != "conv" or lay.module is None:
        convs = [x.name for x in model.graph if x.kind == "conv" and x.module is not None]
        raise ConvlensError(
            f"layer {layer!r} is a {lay.kind} layer, not a conv module; conv layers: "
            + ", ".join(convs)
        )
    module = model.layer(layer)
    weight = getattr(module, "weight", None)
    if not isinstance(module, nn.Conv2d) or weight is None or weight.dim() != 4:
        raise ConvlensError(f"layer {layer!r} has no 2-D convolution kernel to show")
    return weight.detach().float().cpu()


def roughness(weights: torch.Tensor) -> torch.Tensor:
    """Noise score per filter ``(out,)``: about 1 for white noise, near 0 for smooth kernels.

    ``weights`` is ``(out, in, kh, kw)``; 1×1 kernels have no neighbours and score NaN.
    """
    w = weights.float()
    dx = (w[..., :, 1:] - w[..., :, :-1]).pow(2).flatten(2)
    dy = (w[..., 1:, :] - w[..., :-1, :]).pow(2).flatten(2)
    pairs = torch.cat([dx, dy], dim=2)  # (out, in, pairs)
    if pairs.shape[2] == 0:
        return torch.full((w.shape[0],), float("nan"))
    var = w.flatten(2).var(dim=2, unbiased=False)  # (out, in)
    per_slice = pairs.mean(2) / (2 * var.clamp(min=1e-20))
    per_slice = torch.where(var > 0, per_slice, torch.zeros_like(per_slice))  # flat: smooth
    return per_slice.mean(1)


def first_layer_cells(weights: torch.Tensor) -> list[torch.Tensor]:
    """Kernels as images ``(C, kh, kw)`` in ``[0, 1]``, one shared scale, 0.5 meaning zero."""
    peak = float(weights.abs().max()) or 1.0
    return [(0.5 + k / (2 * peak)).clamp(0, 1) for k in weights]


def filter_figure(
    model: Model,
    layer: str,
    *,
    max_filters: int = 64,
    max_inputs: int = 16,
    cell_size: int | None = None,
) -> Image.Image:
    """The weight grid of ``layer`` with each filter's roughness; see the module docstring."""
    if max_filters < 1 or max_inputs < 1:
        raise ConvlensError("max_filters and max_inputs must be at least 1")
    w = conv_weights(model, layer)
    rough = roughness(w)
    shown = w[:max_filters]
    more = f" (first {max_filters} of {w.shape[0]} filters)" if w.shape[0] > max_filters else ""
    mean_r = float(rough[torch.isfinite(rough)].mean()) if torch.isfinite(rough).any() else 0.0
    title = (
        f"{model.name} · {layer}: {w.shape[0]} filters of {w.shape[1]}x{w.shape[2]}x{w.shape[3]}"
        f"{more} · mean roughness {mean_r:.2f} (1: like noise, 0: smooth)"
    )
    if w.shape[1] in (1, 3) and model.graph[layer].inputs == ["input"]:
        return _image_kernels(shown, rough, title, cell_size or 72)
    return _channel_kernels(shown[:, :max_inputs], rough, title, cell_size or 40, w.shape[1])


def _image_kernels(w: torch.Tensor, rough: torch.Tensor, title: str, cell: int) -> Image.Image:
    labels = [f"#{i} r={float(r):.2f}" for i, r in enumerate(rough[: w.shape[0]])]
    ncols = min(8, w.shape[0])
    body = grid(first_layer_cells(w), ncols, labels, cell_size=cell, label_size=10)
    return caption(body, title, size=13)


def _channel_kernels(
    w: torch.Tensor, rough: torch.Tensor, title: str, cell: int, n_inputs: int
) -> Image.Image:
    """Rows are filters, columns input channels, on one diverging scale for the whole layer."""
    scale = Scale.fit(w, "rdbu")
    cells = [
        _framed(heatmap(w[o, i], scale), cell) for o in range(w.shape[0]) for i in range(w.shape[1])
    ]
    rows = []
    for o in range(w.shape[0]):
        row = grid(cells[o * w.shape[1] : (o + 1) * w.shape[1]], w.shape[1], cell_size=cell, gap=3)
        rows.append(hstack([_row_label(o, float(rough[o])), row], gap=4))
    inputs = f"input channels 0..{w.shape[1] - 1}" + (
        f" of {n_inputs}" if n_inputs > w.shape[1] else ""
    )
    body = vstack(rows, gap=2)
    legend = colorbar(scale, length=min(240, body.height - 20), label="weight")
    return caption(caption(hstack([body, legend], gap=10), inputs, size=11), title, size=13)


def _framed(img: Image.Image, size: int) -> Image.Image:
    """Enlarge a kernel crisply and outline it, so white (zero) weights do not merge with the
    background."""
    big = upscale(img, size).resize((size, size), Image.Resampling.NEAREST)
    ImageDraw.Draw(big).rectangle((0, 0, size - 1, size - 1), outline=(190, 190, 190))
    return big


def _row_label(index: int, r: float) -> Image.Image:
    return caption(Image.new("RGB", (70, 1), (255, 255, 255)), f"#{index} r={r:.2f}", size=10)


__all__ = ["conv_weights", "filter_figure", "first_layer_cells", "roughness"]
