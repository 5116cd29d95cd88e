"""Deletion and insertion curves (Petsiuk, Das & Saenko, "RISE", BMVC 2018).

Pixels are ranked by the attribution (most important first). The deletion curve replaces the
top ``k`` pixels of the image by a baseline (black by default) and records the target's
probability as ``k`` grows; a good map makes it fall fast (low area under the curve). The
insertion curve starts from a blurred copy and puts the top ``k`` original pixels back; a good
map makes it rise fast (high area). With ``n`` steps, step ``i`` changes the top
``round(i · H W / n)`` pixels; the area is the trapezoid rule over the fraction of pixels
``[0, 1]``. All steps of all images run in batched forward passes under
``torch.inference_mode()``.

>>> from convlens.model.zoo import build
>>> m = build("tiny-vgg:input_size=32", seed=0)
>>> x = torch.rand(2, 3, 32, 32)
>>> c = deletion_insertion(m, x, explain(m, x, "saliency"), steps=8)
>>> tuple(c.deletion.shape), tuple(c.deletion_auc.shape)
((2, 9), (2,))
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from convlens.errors import ConvlensError
from convlens.model.core import Model
from convlens.probe import preserved_modes

from .api import explain
from .base import Attribution, chunks, prepare_images
from .targets import TargetSpec, resolve_target

__all__ = ["Curves", "deletion_insertion", "explain", "gaussian_blur"]


@dataclass
class Curves:
    """Target probabilities ``(B, steps + 1)`` and their areas ``(B,)``."""

    fractions: torch.Tensor
    deletion: torch.Tensor
    insertion: torch.Tensor
    deletion_auc: torch.Tensor
    insertion_auc: torch.Tensor


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """A separable Gaussian blur of ``(B, C, H, W)`` with reflected borders."""
    radius = max(1, min(int(3 * sigma), min(x.shape[-2:]) - 1))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = (k / k.sum()).to(x)
    C = x.shape[1]
    padded = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    h = F.conv2d(padded, k.view(1, 1, 1, -1).expand(C, 1, 1, -1), groups=C)
    return F.conv2d(h, k.view(1, 1, -1, 1).expand(C, 1, -1, 1), groups=C)


def _area(curve: torch.Tensor, fractions: torch.Tensor) -> torch.Tensor:
    return torch.trapezoid(curve, fractions, dim=1)


@torch.inference_mode()
def deletion_insertion(
    model: Model,
    images: torch.Tensor,
    attribution: Attribution | torch.Tensor,
    target: TargetSpec = None,
    steps: int = 32,
    deletion_value: float = 0.0,
    blur_sigma: float | None = None,
    chunk_size: int = 128,
) -> Curves:
    """Deletion and insertion curves of ``attribution`` (an :class:`Attribution`, or maps
    ``(B, H, W)``) for ``images``; the target defaults to the attribution's classes."""
    x = prepare_images(model, images)
    B, _, H, W = x.shape
    if steps < 1:
        raise ConvlensError(f"steps must be at least 1; got {steps}")
    heat = attribution.heat() if isinstance(attribution, Attribution) else attribution.detach()
    if heat.shape != (B, H, W):
        raise ConvlensError(
            f"the attribution maps must have shape ({B}, {H}, {W}) like the images; "
            f"got {tuple(heat.shape)}"
        )
    if target is None and isinstance(attribution, Attribution):
        target = attribution.targets
    with preserved_modes(model):
        return _curves(model, x, heat, target, steps, deletion_value, blur_sigma, chunk_size)


def _curves(
    model: Model,
    x: torch.Tensor,
    heat: torch.Tensor,
    target: TargetSpec,
    steps: int,
    deletion_value: float,
    blur_sigma: float | None,
    chunk_size: int,
) -> Curves:
    B, _, H, W = x.shape
    tgt = resolve_target(model, target, model(x))
    order = torch.argsort(heat.reshape(B, -1), dim=1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(H * W).expand(B, -1).contiguous())
    rank = rank.view(B, 1, H, W)  # rank of each pixel, 0 = most important
    counts = torch.round(torch.arange(steps + 1) * (H * W) / steps).long()
    blurred = gaussian_blur(x, blur_sigma or max(H, W) / 16)
    deleted = torch.full_like(x, deletion_value)
    curves = {}
    for name, start, end in (("deletion", x, deleted), ("insertion", blurred, x)):
        probs = torch.empty(B, steps + 1)
        for r0, r1 in chunks(B * (steps + 1), chunk_size):
            rows = torch.arange(r0, r1)
            b, s = rows // (steps + 1), rows % (steps + 1)
            changed = rank[b] < counts[s].view(-1, 1, 1, 1)  # (n, 1, H, W)
            batch = torch.where(changed, end[b], start[b])
            probs.view(-1)[r0:r1] = tgt.probability(model(batch), b)
        curves[name] = probs
    fractions = counts.double() / (H * W)
    return Curves(
        fractions.float(),
        curves["deletion"],
        curves["insertion"],
        _area(curves["deletion"].double(), fractions).float(),
        _area(curves["insertion"].double(), fractions).float(),
    )
