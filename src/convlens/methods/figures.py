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
from convlens.io.figure import (
    caption,
    heatmap,
    hstack,
    overlay_panel,
    to_pil,
    upscale,
    vstack,
)

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


MAX_SHOWN = 4  # examples drawn by a notebook's display of an Attribution


def target_text(attr: Attribution, index: int) -> str:
    """``class 'koala' (#3), score 2.31`` for example ``index`` (the class index alone when
    the names are unknown; ``custom target`` for a callable)."""
    score = f"score {float(attr.scores[index]):.3g}" if attr.scores.numel() > index else ""
    if attr.targets is None:
        return f"custom target, {score}".rstrip(", ")
    t = attr.targets[index]
    names = attr.class_names
    name = f"class {names[t]!r} (#{t})" if names and 0 <= t < len(names) else f"class #{t}"
    return f"{name}, {score}".rstrip(", ")


def attribution_figure(attr: Attribution, size: int = 160) -> tuple[Image.Image, str]:
    """Each example (at most :data:`MAX_SHOWN`) as a row: the input, the map over it, and the
    map alone with its colour bar, the target class named; plus a one-line caption."""
    rows = []
    for i in range(min(len(attr), MAX_SHOWN)):
        scale = display_scale(attr, i)
        heat = attr.heat()[i]
        alone = overlay_panel(heatmap(heat, scale), heat, scale, "map", size, alpha=0.0)
        cells = [alone]
        if attr.inputs is not None and i < attr.inputs.shape[0]:
            image = attr.inputs[i]
            base = upscale(to_pil(image).convert("RGB"), size)
            base = base.resize((size, round(size * base.height / base.width)))
            over = overlay_panel(image, heat, scale, "overlay", size)
            cells = [caption(base, "input", size=12), over, alone]
        rows.append(caption(hstack(cells, gap=14, align="top"), target_text(attr, i), size=13))
    more = f" (first {MAX_SHOWN} of {len(attr)} shown)" if len(attr) > MAX_SHOWN else ""
    what = target_text(attr, 0) if len(attr) == 1 else f"{len(attr)} examples{more}"
    text = f"{title(attr)}: {what}; colour bar in map units"
    return caption(vstack(rows, gap=12), title(attr), size=14), text
