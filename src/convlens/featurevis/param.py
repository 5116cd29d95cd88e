"""Image parameterizations: what the optimizer changes, and how that becomes a valid image.

Every parameterization ends in a sigmoid, so whatever the optimizer does, the image handed to
the model is in ``[0, 1]`` (the model's own mean/std are applied inside ``Model.forward``).

- ``pixel``: one free value per pixel (Erhan et al., 2009). Simple, but gradient ascent on
  raw pixels piles up high frequencies.
- ``fourier``: the image is the inverse real FFT of a free spectrum whose entries are scaled by
  ``1 / max(f, 1/N) ** decay``, so all frequencies learn at a similar rate and the result is
  not dominated by pixel noise (Olah, Mordvintsev and Schubert, "Feature Visualization",
  Distill 2017; the constants are Lucid's).
- ``decorrelate``: for 3-channel images, the three values per pixel are mixed by the square
  root of ImageNet's colour covariance, so the optimizer moves in decorrelated colour
  directions rather than in R, G, B separately.

>>> p = image_param((2, 3, 16, 16), kind="fourier", seed=0)
>>> x = p()
>>> bool(x.min() >= 0 and x.max() <= 1), tuple(x.shape)
(True, (2, 3, 16, 16))
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch

from convlens.errors import ConvlensError

ParamKind = Literal["pixel", "fourier"]
PARAM_KINDS: tuple[str, ...] = ("pixel", "fourier")

# The square root of ImageNet's colour covariance (from Lucid), columns normalized so the
# largest has unit norm: moving one unit in any decorrelated direction moves RGB at most one.
_COLOR_SQRT = torch.tensor(
    [[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]], dtype=torch.float32
)
COLOR_DECORRELATION = _COLOR_SQRT / _COLOR_SQRT.norm(dim=0).max()
FOURIER_MAGIC = 4.0  # Lucid's divisor: keeps the initial image from saturating the sigmoid


class ImageParam:
    """Free tensors plus a function of them that returns images ``(B, C, H, W)`` in ``[0, 1]``."""

    def __init__(
        self,
        tensors: list[torch.Tensor],
        make: Callable[[], torch.Tensor],
        shape: tuple[int, int, int, int],
    ) -> None:
        self.tensors = tensors
        self._make = make
        self.shape = shape

    def parameters(self) -> list[torch.Tensor]:
        return self.tensors

    def __call__(self) -> torch.Tensor:
        return self._make()


def rfft_freqs(h: int, w: int) -> torch.Tensor:
    """Spatial frequency magnitude of every entry of ``torch.fft.rfft2`` on an ``h×w`` grid."""
    fy = torch.fft.fftfreq(h)[:, None]
    fx = torch.fft.rfftfreq(w)[None, :]
    return torch.sqrt(fx * fx + fy * fy)  # (h, w // 2 + 1)


def decorrelate_color(x: torch.Tensor) -> torch.Tensor:
    """Mix the channels of ``x`` ``(B, 3, H, W)`` by the colour decorrelation matrix."""
    return torch.einsum("bchw,dc->bdhw", x, COLOR_DECORRELATION.to(x))


def _generator(seed: int | None) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed if seed is not None else int(torch.seed() % 2**63))
    return g


def _check_shape(shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    if len(shape) != 4 or any(int(s) < 1 for s in shape):
        raise ConvlensError(f"an image shape is (batch, channels, height, width) >= 1; got {shape}")
    b, c, h, w = (int(s) for s in shape)
    return b, c, h, w


def image_param(
    shape: tuple[int, ...],
    kind: str = "fourier",
    *,
    decorrelate: bool = True,
    sd: float | None = None,
    decay_power: float = 1.0,
    seed: int | None = None,
    init: torch.Tensor | None = None,
) -> ImageParam:
    """A parameterized batch of images of ``shape`` ``(B, C, H, W)``.

    ``init`` (pixel kind only) starts from given images in ``[0, 1]`` instead of noise.
    Decorrelation applies to 3-channel images only; other channel counts are left as they are.
    """
    b, c, h, w = _check_shape(shape)
    if kind not in PARAM_KINDS:
        raise ConvlensError(
            f"unknown parameterization {kind!r}; accepted: {', '.join(PARAM_KINDS)}"
        )
    gen = _generator(seed)
    mix = decorrelate and c == 3
    if kind == "pixel":
        raw, to_image = _pixel(b, c, h, w, sd or 0.01, gen, init)
    else:
        if init is not None:
            raise ConvlensError("init= is supported by the 'pixel' parameterization only")
        raw, to_image = _fourier(b, c, h, w, sd or 0.01, decay_power, gen)

    def make() -> torch.Tensor:
        x = to_image()
        if mix:
            x = decorrelate_color(x)
        return torch.sigmoid(x)

    return ImageParam([raw], make, (b, c, h, w))


def _pixel(
    b: int, c: int, h: int, w: int, sd: float, gen: torch.Generator, init: torch.Tensor | None
) -> tuple[torch.Tensor, Callable[[], torch.Tensor]]:
    if init is not None:
        if tuple(init.shape) != (b, c, h, w):
            raise ConvlensError(f"init has shape {tuple(init.shape)}, expected {(b, c, h, w)}")
        eps = 1e-4  # the inverse sigmoid of exactly 0 or 1 is infinite
        raw = torch.logit(init.detach().float().clamp(eps, 1 - eps)).clone()
    else:
        raw = torch.randn(b, c, h, w, generator=gen) * sd
    raw.requires_grad_(True)
    return raw, lambda: raw


def _fourier(
    b: int, c: int, h: int, w: int, sd: float, decay_power: float, gen: torch.Generator
) -> tuple[torch.Tensor, Callable[[], torch.Tensor]]:
    freqs = rfft_freqs(h, w)
    # Dividing by the frequency equalizes how fast each frequency learns (1/f image spectra).
    scale = 1.0 / freqs.clamp(min=1.0 / max(h, w)) ** decay_power
    scale = scale[None, None, :, :, None]
    spectrum = (torch.randn(b, c, *freqs.shape, 2, generator=gen) * sd).requires_grad_(True)

    def to_image() -> torch.Tensor:
        complex_spec = torch.view_as_complex((scale * spectrum).contiguous())
        img = torch.fft.irfft2(complex_spec, s=(h, w), norm="ortho")
        return img / FOURIER_MAGIC

    return spectrum, to_image


def logit_images(x: torch.Tensor) -> torch.Tensor:
    """The inverse of the final sigmoid, for tests and for starting from an image."""
    return torch.logit(x.clamp(1e-6, 1 - 1e-6))


__all__ = [
    "COLOR_DECORRELATION",
    "PARAM_KINDS",
    "ImageParam",
    "decorrelate_color",
    "image_param",
    "logit_images",
    "rfft_freqs",
]
