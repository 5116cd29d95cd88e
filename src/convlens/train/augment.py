"""Batched data augmentation: random crop with padding, horizontal flips, colour jitter.

Every operation works on a whole batch ``(B, C, H, W)`` in ``[0, 1]`` with tensor ops (no
per-image Python loop) and draws its randomness from a ``torch.Generator``, so a run (and a
resumed run) sees exactly the same augmented images.

Random crop with padding (Krizhevsky et al., 2012; He et al., 2016): pad by ``p`` pixels,
then cut an ``H × W`` window at a random offset ``(dy, dx) ∈ [0, 2p]²``. Colour jitter
(as in torchvision's ``ColorJitter``): ``x ← b·x``, ``x ← c·(x − mean(gray)) + mean(gray)``,
``x ← s·(x − gray) + gray`` with factors drawn uniformly from ``[1 − strength, 1 + strength]``.

>>> aug = Augment(crop_padding=2, hflip=True)
>>> aug(torch.rand(4, 1, 28, 28), torch.Generator().manual_seed(0)).shape
torch.Size([4, 1, 28, 28])
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F

from convlens.errors import ConvlensError

# ITU-R BT.601 luma weights, as Pillow's convert("L") uses.
LUMA = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class Augment:
    """Which augmentations to apply; all off by default (see :func:`default_augment`)."""

    crop_padding: int = 0
    hflip: bool = False
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0

    def __post_init__(self) -> None:
        if self.crop_padding < 0:
            raise ConvlensError(f"crop padding must be >= 0, got {self.crop_padding}")
        for name in ("brightness", "contrast", "saturation"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConvlensError(f"{name} jitter must be in [0, 1), got {getattr(self, name)}")

    @property
    def active(self) -> bool:
        return any(asdict(self).values())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        if self.crop_padding:
            x = random_crop(x, self.crop_padding, gen)
        if self.hflip:
            x = random_hflip(x, gen)
        if self.brightness or self.contrast or self.saturation:
            x = color_jitter(x, gen, self.brightness, self.contrast, self.saturation)
        return x


def default_augment(shape: tuple[int, ...]) -> Augment:
    """Light augmentation that fits the data: crop ±1/14 of the side and flips for every
    image; brightness/contrast jitter, plus saturation for colour images."""
    channels, height = shape[0], shape[1]
    pad = max(1, round(height / 14))
    if channels == 1:
        return Augment(crop_padding=pad, hflip=True)
    return Augment(crop_padding=pad, hflip=True, brightness=0.2, contrast=0.2, saturation=0.2)


def random_crop(x: torch.Tensor, padding: int, gen: torch.Generator) -> torch.Tensor:
    """Zero-pad by ``padding`` and cut each image's window at its own random offset."""
    B, _, H, W = x.shape
    padded = F.pad(x, (padding,) * 4)
    dy = torch.randint(0, 2 * padding + 1, (B,), generator=gen)
    dx = torch.randint(0, 2 * padding + 1, (B,), generator=gen)
    rows = (dy[:, None] + torch.arange(H))[:, :, None]  # (B, H, 1)
    cols = (dx[:, None] + torch.arange(W))[:, None, :]  # (B, 1, W)
    batch = torch.arange(B)[:, None, None]
    # Advanced indexing on (B, H', W', C) gathers (B, H, W, C); permute back to (B, C, H, W).
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2).contiguous()


def random_hflip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    flip = torch.rand(x.shape[0], generator=gen) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def _factors(n: int, strength: float, gen: torch.Generator) -> torch.Tensor:
    """``n`` factors uniform in ``[1 − strength, 1 + strength]``, shaped to broadcast."""
    return (1 + strength * (2 * torch.rand(n, generator=gen) - 1)).view(n, 1, 1, 1)


def gray(x: torch.Tensor) -> torch.Tensor:
    """Luma ``(B, 1, H, W)`` of a gray or RGB batch."""
    if x.shape[1] == 1:
        return x
    w = torch.tensor(LUMA, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


def color_jitter(
    x: torch.Tensor,
    gen: torch.Generator,
    brightness: float = 0.0,
    contrast: float = 0.0,
    saturation: float = 0.0,
) -> torch.Tensor:
    """Brightness, contrast and (for RGB) saturation jitter, one factor per image."""
    B = x.shape[0]
    if brightness:
        x = (x * _factors(B, brightness, gen)).clamp(0, 1)
    if contrast:
        mean = gray(x).mean(dim=(1, 2, 3), keepdim=True)
        x = ((x - mean) * _factors(B, contrast, gen) + mean).clamp(0, 1)
    if saturation and x.shape[1] == 3:
        g = gray(x)
        x = ((x - g) * _factors(B, saturation, gen) + g).clamp(0, 1)
    return x
