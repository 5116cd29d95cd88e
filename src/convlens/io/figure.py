"""Pictures made from tensors: heatmaps, overlays, colour bars, labelled grids, PNG files.

Every figure that convlens writes is built from these few pieces, so they all share fonts,
spacing and colour-bar conventions.
"""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Sequence
from functools import cache

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from convlens.io.atomic import write_bytes_atomic
from convlens.io.color import Scale, colorize
from convlens.io.image import tensor_to_image

BACKGROUND = (255, 255, 255)
INK = (30, 30, 30)
MUTED = (110, 110, 110)

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


@cache
def font(size: int = 12) -> Font:
    """Pillow's bundled scalable font (no system fonts needed)."""
    return ImageFont.load_default(size=size)


def text_size(text: str, size: int = 12) -> tuple[int, int]:
    left, top, right, bottom = font(size).getbbox(text)
    return int(right - left), int(bottom - top)


def upscale(img: Image.Image, min_side: int) -> Image.Image:
    """Enlarge small images by an integer factor with nearest neighbour, so pixels stay crisp."""
    factor = max(1, -(-min_side // max(1, min(img.size))))
    if factor == 1:
        return img
    return img.resize((img.width * factor, img.height * factor), Image.Resampling.NEAREST)


def heatmap(values: torch.Tensor | np.ndarray, scale: Scale | None = None) -> Image.Image:
    """A 2-D array as a colour image on ``scale`` (fitted to the data when not given)."""
    scale = scale or Scale.fit(values)
    return Image.fromarray(colorize(values, scale), mode="RGB")


def to_pil(image: torch.Tensor | Image.Image) -> Image.Image:
    return image if isinstance(image, Image.Image) else tensor_to_image(image)


def overlay(
    image: torch.Tensor | Image.Image,
    values: torch.Tensor | np.ndarray,
    scale: Scale | None = None,
    alpha: float = 0.5,
) -> Image.Image:
    """Blend a heatmap over an image; the map is resized (bilinear) to the image's size."""
    base = to_pil(image).convert("RGB")
    heat = heatmap(values, scale).resize(base.size, Image.Resampling.BILINEAR)
    return Image.blend(base, heat, alpha)


def overlay_panel(
    image: torch.Tensor | Image.Image,
    values: torch.Tensor | np.ndarray,
    scale: Scale,
    title: str = "",
    size: int = 160,
    alpha: float = 0.55,
) -> Image.Image:
    """A titled overlay of ``values`` on ``image``, ``size`` pixels wide, with its colour bar
    (small images are enlarged with nearest neighbour first, so pixels stay crisp)."""
    base = upscale(to_pil(image).convert("RGB"), size)
    base = base.resize((size, round(size * base.height / base.width)), Image.Resampling.BILINEAR)
    bar = colorbar(scale, length=max(40, base.height - 12))
    return caption(hstack([overlay(base, values, scale, alpha), bar], gap=4), title, size=12)


def _format_tick(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1000 or abs(v) < 0.01:
        return f"{v:.1e}"
    return f"{v:.3g}"


def colorbar(scale: Scale, length: int = 160, thickness: int = 12, label: str = "") -> Image.Image:
    """A vertical colour bar with its min, middle and max values and an optional label."""
    ramp = np.linspace(scale.vmax, scale.vmin, length)[:, None].repeat(thickness, axis=1)
    bar = Image.fromarray(colorize(ramp, scale), mode="RGB")
    ticks = [scale.vmax, (scale.vmax + scale.vmin) / 2, scale.vmin]
    tick_w = max(text_size(_format_tick(t), 10)[0] for t in ticks)
    label_h = text_size(label, 10)[1] + 6 if label else 0
    out = Image.new("RGB", (thickness + 6 + tick_w + 2, length + 12 + label_h), BACKGROUND)
    out.paste(bar, (0, 6 + label_h))
    draw = ImageDraw.Draw(out)
    draw.rectangle((0, 6 + label_h, thickness - 1, 6 + label_h + length - 1), outline=MUTED)
    for t, y in zip(ticks, (0, length // 2, length - 1), strict=True):
        draw.text(
            (thickness + 4, 6 + label_h + y), _format_tick(t), fill=INK, font=font(10), anchor="lm"
        )
    if label:
        draw.text((0, 0), label, fill=INK, font=font(10))
    return out


def hstack(images: Sequence[Image.Image], gap: int = 8, align: str = "center") -> Image.Image:
    """Place images side by side on a white background."""
    w = sum(i.width for i in images) + gap * (len(images) - 1)
    h = max(i.height for i in images)
    out = Image.new("RGB", (w, h), BACKGROUND)
    x = 0
    for im in images:
        y = (h - im.height) // 2 if align == "center" else 0
        out.paste(im.convert("RGB"), (x, y))
        x += im.width + gap
    return out


def vstack(images: Sequence[Image.Image], gap: int = 8) -> Image.Image:
    """Place images one under the other, left-aligned."""
    w = max(i.width for i in images)
    h = sum(i.height for i in images) + gap * (len(images) - 1)
    out = Image.new("RGB", (w, h), BACKGROUND)
    y = 0
    for im in images:
        out.paste(im.convert("RGB"), (0, y))
        y += im.height + gap
    return out


def caption(image: Image.Image, text: str, size: int = 12, above: bool = True) -> Image.Image:
    """Add one or more lines of text above (or below) an image, wrapped to its width."""
    lines = _wrap(text, image.width, size) if text else []
    line_h = text_size("Ag", size)[1] + 4
    pad = line_h * len(lines) + (4 if lines else 0)
    out = Image.new("RGB", (image.width, image.height + pad), BACKGROUND)
    out.paste(image.convert("RGB"), (0, pad if above else 0))
    draw = ImageDraw.Draw(out)
    y0 = 0 if above else image.height + 4
    for i, line in enumerate(lines):
        draw.text((image.width // 2, y0 + i * line_h), line, fill=INK, font=font(size), anchor="ma")
    return out


def _wrap(text: str, width: int, size: int) -> list[str]:
    lines: list[str] = []
    for para in text.split("\n"):
        current = ""
        for word in para.split():
            trial = f"{current} {word}".strip()
            if current and text_size(trial, size)[0] > width:
                lines.append(current)
                current = word
            else:
                current = trial
        lines.append(current)
    return lines


def grid(
    cells: Sequence[Image.Image | torch.Tensor],
    ncols: int,
    labels: Sequence[str] | None = None,
    title: str = "",
    cell_size: int = 96,
    gap: int = 6,
    label_size: int = 11,
) -> Image.Image:
    """A labelled grid: every cell scaled to ``cell_size`` (crisp for tiny images)."""
    ims = [upscale(to_pil(c).convert("RGB"), cell_size) for c in cells]
    ims = [
        im.resize((cell_size, round(cell_size * im.height / im.width)), Image.Resampling.NEAREST)
        for im in ims
    ]
    if labels is not None:
        ims = [caption(im, lab, size=label_size) for im, lab in zip(ims, labels, strict=True)]
    ncols = max(1, min(ncols, len(ims)))
    cw, ch = max(i.width for i in ims), max(i.height for i in ims)
    nrows = -(-len(ims) // ncols)
    out = Image.new(
        "RGB", (ncols * cw + (ncols + 1) * gap, nrows * ch + (nrows + 1) * gap), BACKGROUND
    )
    for k, im in enumerate(ims):
        r, c = divmod(k, ncols)
        out.paste(im, (gap + c * (cw + gap), gap + r * (ch + gap)))
    return caption(out, title, size=14) if title else out


def png_bytes(image: Image.Image, *, compact_gray: bool = False) -> bytes:
    """PNG-encode ``image`` in its own mode; with ``compact_gray``, an RGB picture whose pixels
    are all gray is stored as 8-bit gray, a third of the size (grids of Fashion-MNIST images)."""
    if compact_gray and image.mode == "RGB":
        arr = np.asarray(image)
        if (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all():
            image = image.convert("L")
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def save_png(image: Image.Image | torch.Tensor, path: str | os.PathLike[str]) -> None:
    """Write a figure as a PNG atomically (temporary file, then rename); an all-gray figure is
    stored as 8-bit gray."""
    write_bytes_atomic(path, png_bytes(to_pil(image), compact_gray=True))


def bars(
    values: Sequence[float],
    colors: Sequence[tuple[int, int, int]],
    title: str = "",
    height: int = 120,
    bar_width: int = 6,
    vmax: float = 1.0,
    min_width: int = 0,
    labels: Sequence[str] | None = None,
) -> Image.Image:
    """A vertical bar chart on ``[0, vmax]`` with its axis, two ticks, a title and optional
    labels under the bars (drawn when the bars are wide enough to hold them)."""
    tick_w = max(text_size(_format_tick(t), 10)[0] for t in (0.0, vmax)) + 6
    width = tick_w + len(values) * (bar_width + 1) + 4
    show = labels is not None and bar_width >= 10
    out = Image.new("RGB", (max(width, 60, min_width), height + (24 if show else 10)), BACKGROUND)
    draw = ImageDraw.Draw(out)
    base = height + 4
    for i, (v, c) in enumerate(zip(values, colors, strict=True)):
        x = tick_w + 2 + i * (bar_width + 1)
        h = round(max(0.0, min(v / vmax if vmax else 0.0, 1.0)) * height)
        draw.rectangle((x, base - max(h, 2), x + bar_width - 1, base), fill=c)
        if show and labels is not None:
            draw.text((x + bar_width / 2, base + 3), labels[i], fill=MUTED, font=font(10),
                      anchor="ma")  # fmt: skip
    draw.line((tick_w, 4, tick_w, base), fill=MUTED)
    draw.line((tick_w, base, width - 2, base), fill=MUTED)
    for t, y in ((vmax, 4), (0.0, base)):
        draw.text((tick_w - 4, y), _format_tick(t), fill=INK, font=font(10), anchor="rm")
    return caption(out, title, size=12) if title else out


def scatter(
    points: np.ndarray,
    colors: Sequence[tuple[int, int, int]],
    size: int = 640,
    radius: float = 2.5,
    legend: Sequence[tuple[str, tuple[int, int, int]]] = (),
    title: str = "",
) -> Image.Image:
    """Points ``(N, 2)`` scaled into a square canvas, each a filled dot, with a legend."""
    pts = np.asarray(points, dtype=np.float64)
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    margin = 8 + radius
    xy = margin + (pts - lo) / span * (size - 2 * margin)
    canvas = Image.new("RGB", (size, size), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for (x, y), c in zip(xy, colors, strict=True):
        draw.ellipse((x - radius, size - y - radius, x + radius, size - y + radius), fill=c)
    draw.rectangle((0, 0, size - 1, size - 1), outline=MUTED)
    if legend:
        rows = []
        for name, c in legend:
            swatch = Image.new("RGB", (12, 12), c)
            label = Image.new("RGB", (text_size(name, 12)[0] + 4, 16), BACKGROUND)
            ImageDraw.Draw(label).text((2, 8), name, fill=INK, font=font(12), anchor="lm")
            rows.append(hstack([swatch, label], gap=4))
        canvas = hstack([canvas, vstack(rows, gap=4)], gap=12, align="top")
    return caption(canvas, title, size=14) if title else canvas


def hbars(
    labels: Sequence[str],
    values: Sequence[float],
    colors: Sequence[tuple[int, int, int]],
    length: int = 240,
    vmax: float = 1.0,
    fmt: str = "{:.0%}",
    title: str = "",
) -> Image.Image:
    """Horizontal bars, one labelled row each, the value written after the bar."""
    label_w = max(text_size(lab, 12)[0] for lab in labels) + 8
    row_h = 18
    out = Image.new("RGB", (label_w + length + 60, row_h * len(labels) + 4), BACKGROUND)
    draw = ImageDraw.Draw(out)
    for i, (lab, v, c) in enumerate(zip(labels, values, colors, strict=True)):
        y = 2 + i * row_h
        draw.text((label_w - 6, y + row_h // 2), lab, fill=INK, font=font(12), anchor="rm")
        w = round(max(0.0, min(v / vmax if vmax else 0.0, 1.0)) * length)
        draw.rectangle((label_w, y + 3, label_w + max(w, 1), y + row_h - 3), fill=c)
        draw.text(
            (label_w + w + 6, y + row_h // 2), fmt.format(v), fill=INK, font=font(11), anchor="lm"
        )
    draw.line((label_w, 0, label_w, out.height - 1), fill=MUTED)
    return caption(out, title, size=12) if title else out


# ------------------------------------------------------------------ notebook displays

MAX_DISPLAY_SIDE = 1600  # a notebook cell shows at most this many pixels across


def _display_image(image: Image.Image) -> Image.Image:
    """``image`` shrunk (never enlarged) so its longer side fits a notebook cell."""
    side = max(image.size)
    if side <= MAX_DISPLAY_SIDE:
        return image
    factor = MAX_DISPLAY_SIDE / side
    size = (max(1, round(image.width * factor)), max(1, round(image.height * factor)))
    return image.resize(size, Image.Resampling.LANCZOS)


def figure_png(image: Image.Image) -> bytes:
    """The PNG a notebook shows for ``image``."""
    return png_bytes(_display_image(image), compact_gray=True)


def figure_html(image: Image.Image, text: str = "") -> str:
    """An HTML ``<figure>`` embedding ``image`` as a PNG data URL, with ``text`` as its caption
    (escaped), so the figure survives in exported notebooks and needs no file beside it."""
    shown = _display_image(image)
    data = base64.b64encode(figure_png(shown)).decode("ascii")
    alt = html.escape(text or "convlens figure", quote=True)
    cap = f"<figcaption>{html.escape(text)}</figcaption>" if text else ""
    return (
        '<figure class="convlens-figure" style="margin:0">'
        f'<img src="data:image/png;base64,{data}" alt="{alt}" width="{shown.width}" '
        f'height="{shown.height}" style="max-width:100%;height:auto">{cap}</figure>'
    )


class RichDisplay:
    """Mixin giving a result PNG and HTML reprs in notebooks, all drawn by one method.

    A subclass implements :meth:`_display_figure`, returning its picture and a one-line
    caption; Jupyter then calls ``_repr_png_`` or ``_repr_html_``.
    """

    def _display_figure(self) -> tuple[Image.Image, str]:
        raise NotImplementedError

    def _repr_png_(self) -> bytes:
        return figure_png(self._display_figure()[0])

    def _repr_html_(self) -> str:
        return figure_html(*self._display_figure())


class Figure(RichDisplay):
    """A finished picture with its caption, for functions that return a PIL image (filter
    grids, learning curves): ``Figure(filter_figure(model, "conv_1_1"), "first layer")``."""

    def __init__(self, image: Image.Image, text: str = "") -> None:
        self.image = image
        self.text = text

    def _display_figure(self) -> tuple[Image.Image, str]:
        return self.image, self.text

    def save(self, path: str | os.PathLike[str]) -> None:
        save_png(self.image, path)

    def __repr__(self) -> str:
        return f"Figure({self.image.width}×{self.image.height}, {self.text!r})"
