"""Transformation robustness: random padding, jitter, scale and rotation before each step.

A feature visualization that survives small random changes of the image is one the network
really responds to, not an adversarial pattern of pixels (Mordvintsev et al., "Inceptionism",
2015; Olah et al., "Feature Visualization", Distill 2017).

Every transform here is an affine map of the image plane, drawn afresh for every image in the
batch. A chain of them is composed into one ``3×3`` matrix per image and applied with a single
``grid_sample``, whose output always has the model's own input size, so models with a fixed
input size (a flatten before a linear layer) work as well as fully convolutional ones:

    x_in = P · S(s) · R(θ) · T(t) · x_out

where ``P`` shrinks the image into a border of ``pad`` pixels (the same as padding and resizing
back), ``S`` scales by ``s``, ``R`` rotates by ``θ`` and ``T`` shifts by ``t`` pixels. Points
that land outside the image read the padding value (0.5 gray by default, or a reflection).

>>> t = standard_transforms()
>>> x = torch.rand(4, 3, 32, 32)
>>> tuple(t(x, torch.Generator().manual_seed(0)).shape)
(4, 3, 32, 32)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from convlens.errors import ConvlensError

PadMode = Literal["constant", "reflect", "border"]


class AffineTransform:
    """A random affine map of the image plane; ``matrix`` gives one ``3×3`` matrix per image.

    Matrices act on normalized coordinates in ``[-1, 1]`` (``grid_sample``'s convention) and
    map output positions to input positions.
    """

    def matrix(self, batch: int, h: int, w: int, gen: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, x: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        return Compose([self])(x, gen)


def _choice(values: Sequence[float], batch: int, gen: torch.Generator) -> torch.Tensor:
    idx = torch.randint(len(values), (batch,), generator=gen)
    return torch.tensor([float(v) for v in values])[idx]


def _eye(batch: int) -> torch.Tensor:
    return torch.eye(3).repeat(batch, 1, 1)


@dataclass(frozen=True)
class Pad(AffineTransform):
    """Shrink the image inside a border of ``pixels`` (padding, then resizing back)."""

    pixels: int

    def matrix(self, batch: int, h: int, w: int, gen: torch.Generator) -> torch.Tensor:
        m = _eye(batch)
        m[:, 0, 0] = (w + 2 * self.pixels) / w
        m[:, 1, 1] = (h + 2 * self.pixels) / h
        return m


@dataclass(frozen=True)
class Jitter(AffineTransform):
    """Shift each image by a random whole number of pixels in ``[-pixels, pixels]`` per axis."""

    pixels: int

    def matrix(self, batch: int, h: int, w: int, gen: torch.Generator) -> torch.Tensor:
        shifts = torch.randint(-self.pixels, self.pixels + 1, (batch, 2), generator=gen).float()
        m = _eye(batch)
        m[:, 0, 2] = 2 * shifts[:, 0] / w
        m[:, 1, 2] = 2 * shifts[:, 1] / h
        return m


@dataclass(frozen=True)
class Scale(AffineTransform):
    """Zoom each image by a factor drawn from ``factors`` (above 1 zooms in)."""

    factors: tuple[float, ...]

    def matrix(self, batch: int, h: int, w: int, gen: torch.Generator) -> torch.Tensor:
        s = _choice(self.factors, batch, gen)
        m = _eye(batch)
        m[:, 0, 0] = 1 / s
        m[:, 1, 1] = 1 / s
        return m


@dataclass(frozen=True)
class Rotate(AffineTransform):
    """Rotate each image by an angle in degrees drawn from ``angles``."""

    angles: tuple[float, ...]

    def matrix(self, batch: int, h: int, w: int, gen: torch.Generator) -> torch.Tensor:
        a = _choice(self.angles, batch, gen) * math.pi / 180
        cos, sin = torch.cos(a), torch.sin(a)
        m = _eye(batch)
        # Rotation in pixel units: normalized x and y have different units on non-square images.
        m[:, 0, 0], m[:, 0, 1] = cos, -sin * h / w
        m[:, 1, 0], m[:, 1, 1] = sin * w / h, cos
        return m


class Compose:
    """Affine transforms applied as one ``grid_sample`` per batch (bilinear)."""

    def __init__(self, transforms: Sequence[AffineTransform], pad_mode: PadMode = "constant",
                 pad_value: float = 0.5) -> None:  # fmt: skip
        if pad_mode not in ("constant", "reflect", "border"):
            raise ConvlensError(
                f"unknown pad mode {pad_mode!r}; accepted: constant, reflect, border"
            )
        self.transforms = list(transforms)
        self.pad_mode = pad_mode
        self.pad_value = pad_value

    def matrices(self, batch: int, h: int, w: int, gen: torch.Generator) -> torch.Tensor:
        m = _eye(batch)
        for t in self.transforms:
            m = m @ t.matrix(batch, h, w, gen)
        return m

    def __call__(self, x: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        if not self.transforms:
            return x
        b, _, h, w = x.shape
        theta = self.matrices(b, h, w, gen or torch.default_generator)[:, :2, :].to(x)
        grid = F.affine_grid(theta, [b, x.shape[1], h, w], align_corners=False)
        mode = {"constant": "zeros", "reflect": "reflection", "border": "border"}[self.pad_mode]
        # zeros-padding around (x - value) is constant-value padding around x.
        shift = self.pad_value if self.pad_mode == "constant" else 0.0
        out = F.grid_sample(
            x - shift, grid, mode="bilinear", padding_mode=mode, align_corners=False
        )
        return out + shift


def standard_transforms(size: int = 224) -> Compose:
    """Lucid's standard robustness chain, adapted to an image of side ``size``.

    Lucid uses pad 12, jitter 8, scale 0.9-1.1, rotation ±10°, jitter 4 on 224-pixel images.
    Small images get the pixel amounts scaled by ``sqrt(size / 224)``, not ``size / 224``: a
    one-pixel jitter on a 28-pixel image is too weak to stop pixel-level patterns (pad 4,
    jitter 3 and 1 at 28; pad 6, jitter 4 and 2 at 64).
    """
    k = math.sqrt(min(size, 224) / 224)
    px = lambda n: max(1, round(n * k))  # noqa: E731
    return Compose(
        [
            Pad(px(12)),
            Jitter(px(8)),
            Scale(tuple(1 + (i - 5) / 50 for i in range(11))),
            Rotate(tuple(float(a) for a in range(-10, 11)) + (0.0,) * 5),
            Jitter(px(4)),
        ]
    )


def strong_transforms(size: int = 224) -> Compose:
    """About twice Lucid's robustness, for small networks whose renders stay pixel-noisy:
    pad ``size/8``, jitter ``size/10``, scale 0.8-1.2, rotation ±15°, jitter ``size/20``."""
    px = lambda f: max(1, round(size * f))  # noqa: E731
    return Compose(
        [
            Pad(px(1 / 8)),
            Jitter(px(1 / 10)),
            Scale(tuple(1 + (i - 5) / 25 for i in range(11))),
            Rotate(tuple(float(a) for a in range(-15, 16))),
            Jitter(px(1 / 20)),
        ]
    )


__all__ = [
    "AffineTransform",
    "Compose",
    "Jitter",
    "Pad",
    "Rotate",
    "Scale",
    "standard_transforms",
    "strong_transforms",
]
