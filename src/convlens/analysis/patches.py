"""Receptive-field patches of a scan's top hits, and the figures made of them.

A hit at ``(row, col)`` of a layer's grid depends only on the input pixels in the unit's
receptive field, ``layer.rf.box(row, col)`` (Araujo et al., Distill 2019). The box may reach
past the image where the network pads; that part of the crop is filled with ``fill`` (mid gray
by default) so every patch of a layer has the same size and the same alignment.

>>> img = torch.ones(1, 4, 4)
>>> crop_box(img, (-1, 2, 2, 5), fill=0.0)[0].tolist()
[[0.0, 0.0, 0.0], [1.0, 1.0, 0.0], [1.0, 1.0, 0.0]]
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from convlens.analysis.scan import Hit, ScanResult
from convlens.data import ImageDataset
from convlens.errors import ConvlensError
from convlens.io.figure import bars, caption, grid, hstack, save_png, vstack
from convlens.model import Model

Box = tuple[int, int, int, int]  # (top, left, bottom, right), bottom/right exclusive


def crop_box(image: torch.Tensor, box: Box, fill: float = 0.5) -> torch.Tensor:
    """The ``(C, bottom - top, right - left)`` crop of ``image`` ``(C, H, W)``, with ``fill``
    where the box lies outside the image."""
    top, left, bottom, right = box
    C, H, W = image.shape
    out = torch.full((C, bottom - top, right - left), fill, dtype=image.dtype)
    t, lft, b, r = max(top, 0), max(left, 0), min(bottom, H), min(right, W)
    if t < b and lft < r:
        out[:, t - top : b - top, lft - left : r - left] = image[:, t:b, lft:r]
    return out


def hit_box(model: Model, layer: str, hit: Hit) -> Box:
    """The input box seen by the hit's unit; the whole image for layers without a grid."""
    lay = model.graph[layer]
    if lay.rf is None:
        raise ConvlensError(f"layer {layer!r} has no known receptive field")
    if not lay.is_spatial:
        H, W = model.spec.shape[1:]
        return (0, 0, H, W)
    return lay.rf.box(hit.row, hit.col)


def _warn_not_spatial(model: Model, layer: str) -> None:
    if not model.graph[layer].is_spatial:
        warnings.warn(
            f"layer {layer!r} has no spatial extent (every unit sees the whole image), so its "
            "'patches' are whole images; choose a convolution or pooling layer for local patches",
            stacklevel=3,
        )


def unit_patches(
    result: ScanResult,
    dataset: ImageDataset,
    model: Model,
    layer: str,
    unit: int,
    n: int | None = None,
    fill: float = 0.5,
) -> tuple[list[torch.Tensor], list[Hit]]:
    """The receptive-field crops of the unit's top ``n`` hits (all kept hits by default)."""
    hits = result.hits(layer, unit)[:n]
    if not hits:
        return [], []
    wanted = sorted({h.image for h in hits})
    images, _ = dataset.get(wanted)
    by_index = dict(zip(wanted, images, strict=True))
    crops = [crop_box(by_index[h.image], hit_box(model, layer, h), fill) for h in hits]
    return crops, hits


def _label(h: Hit) -> str:
    return f"{h.value:.3g} · #{h.image}"


def unit_figure(
    result: ScanResult,
    dataset: ImageDataset,
    model: Model,
    layer: str,
    unit: int,
    n: int | None = None,
    ncols: int = 8,
    cell_size: int = 72,
) -> Image.Image:
    """A grid of one unit's top patches, each labelled with its activation and image index."""
    _warn_not_spatial(model, layer)
    crops, hits = unit_patches(result, dataset, model, layer, unit, n)
    if not crops:
        raise ConvlensError(f"unit {unit} of {layer!r} has no hits: the scan saw no images")
    rf = model.graph[layer].rf
    size = f"{crops[0].shape[1]}x{crops[0].shape[2]}"
    title = f"{layer} unit {unit}: top {len(crops)} patches ({size} px receptive field)"
    if rf is not None and rf.is_global:
        title = f"{layer} unit {unit}: top {len(crops)} images"
    if hits[0].value <= 0:
        title += " - never fires on this data set, so these are arbitrary ties"
    return grid(crops, ncols, labels=[_label(h) for h in hits], title=title, cell_size=cell_size)


def _row_label(text: str, width: int, height: int) -> Image.Image:
    return caption(Image.new("RGB", (width, max(1, height // 2)), (255, 255, 255)), text, size=13)


def layer_overview(
    result: ScanResult,
    dataset: ImageDataset,
    model: Model,
    layer: str,
    units: Sequence[int] | None = None,
    n: int = 8,
    cell_size: int = 48,
) -> Image.Image:
    """A row per unit with its top ``n`` patches: the layer at a glance."""
    _warn_not_spatial(model, layer)
    n = min(n, result.meta.k)  # a scan keeps k hits per unit: the title must not promise more
    lay = result.layer(layer)
    chosen = list(range(lay.channels)) if units is None else list(units)
    stats = result.stats(layer)
    rows = []
    for u in chosen:
        crops, hits = unit_patches(result, dataset, model, layer, u, n)
        if not crops:
            continue
        strip = grid(crops, ncols=n, cell_size=cell_size, gap=3)
        silent = float(stats["frac_silent"][u])
        if hits[0].value <= 0:  # a dead unit's "top" patches are arbitrary ties: do not show
            strip = _row_label("never fires on this data set", strip.width, strip.height)
        note = f"unit {u}\nmax {float(stats['max'][u]):.3g}" + (
            f"\nsilent on {_percent(silent)}" if silent > 0 else ""
        )
        rows.append(hstack([_row_label(note, 110, strip.height), strip], gap=4))
    if not rows:
        raise ConvlensError(f"layer {layer!r} has no hits: the scan saw no images")
    body = vstack(rows, gap=2)
    return caption(body, f"{layer}: top {n} receptive-field patches per unit", size=15)


def _percent(frac: float) -> str:
    """A fraction as a percentage that never rounds a non-zero value down to 0 %."""
    if frac >= 0.01 or frac == 0:
        return f"{frac:.0%}"
    return f"{frac:.2%}" if frac >= 0.0001 else "<0.01%"


def safe_name(layer: str) -> str:
    """A layer name as a file name (``layer4.1.relu#2`` -> ``layer4.1.relu-2``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", layer)


def write_patch_figures(
    result: ScanResult,
    dataset: ImageDataset,
    model: Model,
    out: str | os.PathLike[str],
    layers: Sequence[str] | None = None,
    n: int = 8,
) -> list[Path]:
    """Write ``OUT/patches/<layer>.png`` (overview) and ``OUT/patches/<layer>/unit-NNN.png``."""
    written: list[Path] = []
    root = Path(out) / "patches"
    for layer in layers or result.layers:
        _warn_not_spatial(model, layer)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # warned once above, not once per unit
            path = root / f"{safe_name(layer)}.png"
            save_png(layer_overview(result, dataset, model, layer, n=n), path)
            written.append(path)
            for u in range(result.layer(layer).channels):
                if result.hits(layer, u):
                    p = root / safe_name(layer) / f"unit-{u:03d}.png"
                    save_png(unit_figure(result, dataset, model, layer, u), p)
                    written.append(p)
    return written


DISPLAY_LAYERS = 2  # layers a notebook's display of a scan draws
DISPLAY_UNITS = 8  # units per layer it draws


def scan_figure(result: ScanResult) -> tuple[Image.Image, str]:
    """A notebook's picture of a scan: the top patches of the first units of its first layers
    when the model and data set are known (a fresh :func:`scan`), else each unit's maximum."""
    layers = result.layers[:DISPLAY_LAYERS]
    text = f"scan of {result.meta.images_done:,} images, layers {', '.join(result.layers)}"
    if result.source is None:
        charts = []
        for layer in layers:
            peak = result.stats(layer)["max"].float().clamp_min(0)
            top = float(peak.max()) or 1.0
            charts.append(bars(peak.tolist(), [(70, 110, 200)] * len(peak), f"{layer}: max "
                               "activation per unit", vmax=top))  # fmt: skip
        return vstack(charts, gap=12), text + " (patches need the data set: scan_figure after scan)"
    model, dataset = result.source
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a global layer's 'patches' are whole images: fine here
        parts = [
            layer_overview(result, dataset, model, layer,
                           units=range(min(DISPLAY_UNITS, result.layer(layer).channels)))
            for layer in layers
        ]  # fmt: skip
    return vstack(parts, gap=16), text
