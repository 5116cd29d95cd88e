"""Inversion: which image does a layer think it saw?

Mahendran and Vedaldi, "Understanding Deep Image Representations by Inverting Them" (CVPR
2015): find ``x`` whose representation ``Φ(x)`` at a layer matches that of a given image
``x₀``, with a total-variation prior that keeps the answer image-like,

    x* = argmin_x  ‖Φ(x) − Φ(x₀)‖² / ‖Φ(x₀)‖²  +  λ · TV_β(x),

``TV_β(x) = mean((Δx)² + (Δy)²)^(β/2)`` with ``β = 2`` as in the paper. Shallow layers keep
almost everything, so the reconstruction resembles ``x₀``; deep layers keep what the classifier
needs, so the reconstruction keeps the parts but loses their exact place and colour.

>>> from convlens.model.zoo import build
>>> m = build("tiny-vgg:in_channels=1,input_size=28", seed=0).eval()
>>> r = invert(m, torch.rand(1, 1, 28, 28), "conv_1_1", steps=5)
>>> tuple(r.images.shape), len(r.losses)
((1, 1, 28, 28), 5)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from convlens.errors import ConvlensError
from convlens.featurevis.objectives import tv_norm
from convlens.featurevis.param import image_param
from convlens.io.figure import caption, grid
from convlens.model.core import Model
from convlens.probe import capture


@dataclass
class Inversion:
    """Reconstructions ``(B, C, H, W)`` in ``[0, 1]``, the loss per step and the layer."""

    images: torch.Tensor
    losses: list[float]
    layer: str


def _features(model: Model, x: torch.Tensor, layer: str) -> torch.Tensor:
    with capture(model, [layer]) as cap:
        model(x)
    return cap[layer]


def invert(
    model: Model,
    image: torch.Tensor,
    layer: str,
    *,
    steps: int = 200,
    lr: float = 0.05,
    tv: float = 0.5,
    beta: float = 2.0,
    param: str = "pixel",
    seed: int | None = 0,
) -> Inversion:
    """Reconstruct ``image`` ``(B, C, H, W)`` in ``[0, 1]`` from its activations at ``layer``."""
    model.check_input(image)
    model.graph[layer]  # unknown layer -> a clear error listing the known ones
    if steps < 1:
        raise ConvlensError(f"steps must be at least 1; got {steps}")
    if tv < 0:
        raise ConvlensError(f"the total-variation weight must be >= 0; got {tv}")
    with torch.no_grad():
        target = _features(model, image, layer).detach()
    norm = target.pow(2).flatten(1).sum(1).clamp(min=1e-12)
    p = image_param(tuple(image.shape), param, decorrelate=False, seed=seed)
    optimizer = torch.optim.Adam(p.parameters(), lr=lr)
    losses: list[float] = []
    for _ in range(steps):
        x = p()
        feats = _features(model, x, layer)
        match = (feats - target).pow(2).flatten(1).sum(1) / norm
        loss = (match + tv * tv_norm(x, beta)).sum()
        grads = torch.autograd.grad(loss, p.parameters())
        for t, g in zip(p.parameters(), grads, strict=True):
            t.grad = g
        optimizer.step()
        losses.append(float(loss.detach()))
    with torch.no_grad():
        return Inversion(p().detach().clamp(0, 1), losses, layer)


def correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation per image ``(B,)`` between two batches of images."""
    a = a.flatten(1) - a.flatten(1).mean(1, keepdim=True)
    b = b.flatten(1) - b.flatten(1).mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp(min=1e-12)


def invert_layers(
    model: Model, image: torch.Tensor, layers: Sequence[str], **kwargs: object
) -> list[Inversion]:
    """One inversion per layer (shallow to deep), all from the same start."""
    if not layers:
        raise ConvlensError("name at least one layer to invert")
    return [invert(model, image, name, **kwargs) for name in layers]  # type: ignore[arg-type]


def inversion_figure(
    image: torch.Tensor, results: Sequence[Inversion], cell_size: int = 128
) -> Image.Image:
    """The original and the reconstruction from every layer, side by side, with correlations.

    ``image`` is one image ``(1, C, H, W)`` or ``(C, H, W)``; each result's first image is shown.
    """
    original = image[0] if image.dim() == 4 else image
    cells = [original] + [r.images[0] for r in results]
    labels = ["original"] + [
        f"{r.layer}\nr = {float(correlation(r.images[:1], original[None])[0]):.2f}" for r in results
    ]
    body = grid(cells, len(cells), labels, cell_size=cell_size)
    note = "reconstructions from deeper layers (left to right); r: pixel correlation"
    return caption(body, note, size=12, above=False)


__all__ = ["Inversion", "correlation", "inversion_figure", "invert", "invert_layers"]
