"""Pictures of attributions, composed from :mod:`convlens.io.figure` pieces.

Signed maps use the diverging ``rdbu`` colormap centred on zero (red raises the score, blue
lowers it); unsigned maps use ``turbo``. Gradient maps are clipped at the 99.5th percentile
of ``|values|`` so that a few extreme pixels do not wash out the rest.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image

from convlens.io.color import Scale
from convlens.io.figure import caption, hstack, overlay_panel, to_pil, upscale

from .base import METHODS, Attribution


def display_scale(attr: Attribution, index: int) -> Scale:
    """The colour scale for example ``index`` of ``attr``."""
    heat = attr.heat()[index]
    family = METHODS.get(attr.method).family if attr.method in METHODS else "gradient"
    percentile = 99.5 if family == "gradient" else 100.0
    return Scale.robust(heat, "rdbu" if attr.signed else "turbo", percentile)


def title(attr: Attribution) -> str:
    name = METHODS.get(attr.method).title if attr.method in METHODS else attr.method
    return f"{name} @ {attr.layer}" if attr.layer else name


def panel(attr: Attribution, index: int, image: torch.Tensor, size: int = 160) -> Image.Image:
    """Example ``index`` of ``attr`` over its ``image`` ``(C, H, W)``, with a colour bar."""
    return overlay_panel(image, attr.heat()[index], display_scale(attr, index), title(attr), size)


def side_by_side(
    image: torch.Tensor,
    attrs: Sequence[Attribution],
    index: int,
    header: str,
    image_caption: str = "",
    size: int = 160,
) -> Image.Image:
    """The image and every method's map for example ``index``, in one row under ``header``."""
    base = upscale(to_pil(image).convert("RGB"), size)
    base = base.resize((size, round(size * base.height / base.width)), Image.Resampling.BILINEAR)
    first = caption(base, image_caption or "input", size=12)
    panels = [first, *(panel(a, index, image, size) for a in attrs)]
    return caption(hstack(panels, gap=14, align="top"), header, size=14)
