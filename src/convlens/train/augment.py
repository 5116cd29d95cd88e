"""Batched data augmentation: random crop with padding, flips, random affine transforms
(rotation, zoom, shear, translation, as Keras' ``ImageDataGenerator`` and the Keras course
use them) and colour jitter.

Every operation works on a whole batch ``(B, C, H, W)`` in ``[0, 1]`` with tensor ops (no
per-image Python loop) and draws its randomness from a ``torch.Generator``, so a run (and a
resumed run) sees exactly the same augmented images.

Random crop with padding (Krizhevsky et al., 2012; He et al., 2016): pad by ``p`` pixels,
then cut an ``H × W`` window at a random offset ``(dy, dx) ∈ [0, 2p]²``. Colour jitter
(as in torchvision's ``ColorJitter``): ``x ← b·x``, ``x ← c·(x − mean(gray)) + mean(gray)``,
``x ← s·(x − gray) + gray`` with factors drawn uniformly from ``[1 − strength, 1 + strength]``.

Random affine: per image, an angle ``θ ~ U(−rotation, rotation)`` degrees, a zoom factor
``s ~ U(1 − zoom, 1 + zoom)``, a shear angle ``φ ~ U(−shear, shear)`` degrees and a shift
``(t_x, t_y) ~ U(−translate, translate)·(W, H)`` pixels make the forward map, in pixel
coordinates centred on the image (y down) ``p' = T(t)·R(θ)·Sh(φ)·S(s)·p`` with
``R(θ) = [[cos θ, sin θ], [−sin θ, cos θ]]`` (counter-clockwise as displayed) and
``Sh(φ) = [[1, tan φ], [0, 1]]``. Each output pixel samples the input at ``T⁻¹(p')``
(bilinear), with the whole batch in one ``affine_grid`` + ``grid_sample``; points outside the
image take the nearest edge pixel (Keras' default ``fill_mode="nearest"``), zeros or a
reflection.

>>> aug = Augment(crop_padding=2, hflip=True)
>>> aug(torch.rand(4, 1, 28, 28), torch.Generator().manual_seed(0)).shape
torch.Size([4, 1, 28, 28])
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import torch
import torch.nn.functional as F

from convlens.errors import ConvlensError

# ITU-R BT.601 luma weights, as Pillow's convert("L") uses.
LUMA = (0.299, 0.587, 0.114)

# Keras' fill_mode names → grid_sample's padding modes.
FILL_MODES = {"nearest": "border", "constant": "zeros", "reflect": "reflection"}


@dataclass(frozen=True)
class Augment:
    """Which augmentations to apply; all off by default (see :func:`default_augment` and
    :func:`course_augment` for presets). An ``Augment()`` returns its input unchanged."""

    crop_padding: int = 0
    hflip: bool = False
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    vflip: bool = False
    rotation: float = 0.0  # degrees, θ ~ U(−rotation, rotation)
    zoom: float = 0.0  # s ~ U(1 − zoom, 1 + zoom)
    shear: float = 0.0  # degrees
    translate: float = 0.0  # fraction of the width / height
    fill: str = "nearest"  # outside the image: nearest, constant (zeros) or reflect

    def __post_init__(self) -> None:
        limits = {"brightness": (0.0, 1.0, "jitter"), "contrast": (0.0, 1.0, "jitter"),
                  "saturation": (0.0, 1.0, "jitter"), "zoom": (0.0, 1.0, "range"),
                  "shear": (0.0, 80.0, "angle in degrees")}  # fmt: skip
        if self.crop_padding < 0:
            raise ConvlensError(f"crop padding must be >= 0, got {self.crop_padding}")
        for name, (lo, hi, what) in limits.items():
            value = getattr(self, name)
            if not lo <= value < hi:
                raise ConvlensError(f"{name} {what} must be in [{lo:g}, {hi:g}), got {value}")
        if not 0.0 <= self.rotation <= 180.0:
            raise ConvlensError(f"rotation must be in [0, 180] degrees, got {self.rotation}")
        if not 0.0 <= self.translate <= 1.0:
            raise ConvlensError(f"translate must be in [0, 1] (of the size), got {self.translate}")
        if self.fill not in FILL_MODES:
            raise ConvlensError(
                f"unknown fill mode {self.fill!r}; accepted: {', '.join(FILL_MODES)}"
            )

    @property
    def active(self) -> bool:
        return any(v for k, v in asdict(self).items() if k != "fill")

    @property
    def affine(self) -> bool:
        return bool(self.rotation or self.zoom or self.shear or self.translate)

    def describe(self) -> str:
        """A short human description (figure titles, logs)."""
        parts = []
        if self.crop_padding:
            parts.append(f"random crop with {self.crop_padding} px padding")
        flips = [n for n, on in (("horizontal", self.hflip), ("vertical", self.vflip)) if on]
        if flips:
            parts.append(" and ".join(flips) + " flips")
        if self.rotation:
            parts.append(f"rotation ±{self.rotation:g}°")
        if self.zoom:
            parts.append(f"zoom ±{self.zoom:.0%}")
        if self.shear:
            parts.append(f"shear ±{self.shear:g}°")
        if self.translate:
            parts.append(f"shift ±{self.translate:.0%}")
        if self.brightness or self.contrast or self.saturation:
            parts.append(f"colour jitter ±{max(self.brightness, self.contrast):.0%}")
        return ", ".join(parts) or "no augmentation"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        if self.crop_padding:
            x = random_crop(x, self.crop_padding, gen)
        if self.hflip:
            x = random_hflip(x, gen)
        # The newer operations draw from ``gen`` only when on, so runs saved before they
        # existed (and resumed now) see the same random numbers as before.
        if self.vflip:
            x = random_vflip(x, gen)
        if self.affine:
            theta = random_affine_matrices(
                x.shape[0], gen, self.rotation, self.zoom, self.shear, self.translate,
                x.shape[-2], x.shape[-1],
            )  # fmt: skip
            x = apply_affine(x, theta, self.fill)
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


def course_augment(shape: tuple[int, ...]) -> Augment:
    """The Keras course's ``ImageDataGenerator`` set, scaled down for small images: rotation
    ±15°, zoom ±10 %, shear ±10°, shift ±10 % and horizontal flips (colour jitter for RGB)."""
    jitter = 0.2 if shape[0] == 3 else 0.0
    return Augment(hflip=True, rotation=15.0, zoom=0.1, shear=10.0, translate=0.1,
                   brightness=jitter, contrast=jitter, saturation=jitter)  # fmt: skip


def with_overrides(base: Augment, **changes: Any) -> Augment:
    """``base`` with the fields given (not ``None``) replaced, checked like any ``Augment``;
    for command lines whose flags default to "what the preset says".

    >>> with_overrides(Augment(hflip=True), rotation=10.0, zoom=None).describe()
    'horizontal flips, rotation ±10°'
    """
    names = {f.name for f in fields(Augment)}
    unknown = sorted(set(changes) - names)
    if unknown:
        raise ConvlensError(
            f"unknown augmentation {unknown[0]!r}; accepted: {', '.join(sorted(names))}"
        )
    return replace(base, **{k: v for k, v in changes.items() if v is not None})


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


def random_vflip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    flip = torch.rand(x.shape[0], generator=gen) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-2), x)


def affine_matrices(
    angle: torch.Tensor,
    scale: torch.Tensor,
    shear: torch.Tensor,
    shift: torch.Tensor,
    height: int,
    width: int,
) -> torch.Tensor:
    """``(B, 2, 3)`` ``theta`` for :func:`torch.nn.functional.affine_grid` (output → input,
    normalised coordinates, ``align_corners=False``) of the forward maps
    ``p' = T(shift)·R(angle)·Sh(shear)·S(scale)·p`` in centred pixel coordinates (y down).

    ``angle`` and ``shear`` are in degrees, ``scale`` a factor, ``shift`` ``(B, 2)`` pixels
    ``(t_x, t_y)``. Built in float64 so a 90° turn lands on pixel centres.
    """
    B = angle.shape[0]
    a, sh = torch.deg2rad(angle.double()), torch.deg2rad(shear.double())
    c, s, k, z = a.cos(), a.sin(), sh.tan(), scale.double()
    fwd = torch.zeros(B, 3, 3, dtype=torch.float64)
    # R(θ)·Sh(φ)·S(s) = [[c, s], [−s, c]] · [[1, k], [0, 1]] · s
    fwd[:, 0, 0], fwd[:, 0, 1] = c * z, (c * k + s) * z
    fwd[:, 1, 0], fwd[:, 1, 1] = -s * z, (-s * k + c) * z
    fwd[:, :2, 2] = shift.double()
    fwd[:, 2, 2] = 1.0
    inv = torch.linalg.inv(fwd)
    # Pixel centre u (centred) ↔ normalised x = 2u / W (align_corners=False), so
    # theta = N · T⁻¹ · N⁻¹ with N = diag(2/W, 2/H, 1).
    n = torch.diag(torch.tensor([2.0 / width, 2.0 / height, 1.0], dtype=torch.float64))
    n_inv = torch.diag(torch.tensor([width / 2.0, height / 2.0, 1.0], dtype=torch.float64))
    return (n @ inv @ n_inv)[:, :2, :]


def random_affine_matrices(
    n: int,
    gen: torch.Generator,
    rotation: float,
    zoom: float,
    shear: float,
    translate: float,
    height: int,
    width: int,
) -> torch.Tensor:
    """``n`` random ``theta`` (see :func:`affine_matrices`), parameters uniform in their
    ranges, drawn from ``gen`` in a fixed order (angle, zoom, shear, shift)."""

    def uniform(*shape: int) -> torch.Tensor:
        return 2 * torch.rand(*shape, generator=gen, dtype=torch.float64) - 1

    angle = rotation * uniform(n)
    scale = 1 + zoom * uniform(n)
    shear_angle = shear * uniform(n)
    shift = translate * uniform(n, 2) * torch.tensor([width, height], dtype=torch.float64)
    return affine_matrices(angle, scale, shear_angle, shift, height, width)


def apply_affine(x: torch.Tensor, theta: torch.Tensor, fill: str = "nearest") -> torch.Tensor:
    """Resample the batch ``x`` with one ``theta`` per image (bilinear, ``fill`` outside)."""
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(
        x, grid, mode="bilinear", padding_mode=FILL_MODES[fill], align_corners=False
    ).clamp(0, 1)


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
