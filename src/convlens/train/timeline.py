"""Pictures of a training timeline (:mod:`convlens.train.watch`): one panel per frame, an
animation of them and a still contact sheet.

The pieces (filter grid, probe activations, Grad-CAM overlay, loss curve) are also what the
web explainer's timeline slider shows (:mod:`convlens.web.timeline`).
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from convlens.errors import ConvlensError
from convlens.io.atomic import output_set, write_bytes_atomic
from convlens.io.color import Scale, colorize
from convlens.io.figure import (
    BACKGROUND,
    INK,
    MUTED,
    font,
    hstack,
    overlay,
    save_png,
    text_size,
    vstack,
)
from convlens.train.watch import Frame, TimelineIndex, read_frame, read_index, read_probe
from convlens.train.watch import timeline_dir as _timeline_dir

FORMATS = ("gif", "apng")
LOSS_COLOR = (31, 119, 180)
VAL_COLOR = (214, 39, 40)


# ---------------------------------------------------------------------------- pieces


def _normalise(a: np.ndarray) -> np.ndarray:
    """Min-max to 0..255 (a constant array becomes mid-gray)."""
    lo, hi = float(a.min()), float(a.max())
    if hi <= lo:
        return np.full(a.shape, 128, np.uint8)
    return np.rint((a - lo) / (hi - lo) * 255).astype(np.uint8)


def filter_grid(filters: torch.Tensor, cell: int = 24, gap: int = 2) -> Image.Image:
    """The first layer's filters ``(O, I, kh, kw)``, each on its own scale: RGB (min-max) for
    3 input channels, else the first input channel red/blue around zero (white = 0), so an
    edge detector shows as a positive and a negative side."""
    w = filters.detach().float().numpy()
    o = w.shape[0]
    cols = math.ceil(math.sqrt(o))
    rows = math.ceil(o / cols)
    out = Image.new("RGB", (cols * (cell + gap) + gap, rows * (cell + gap) + gap), (200, 200, 200))
    for k in range(o):
        if w.shape[1] == 3:
            img = Image.fromarray(_normalise(w[k]).transpose(1, 2, 0), "RGB")
        else:
            img = Image.fromarray(colorize(w[k, 0], Scale.fit(w[k, 0], "rdbu")), "RGB")
        img = img.resize((cell, cell), Image.Resampling.NEAREST)
        r, c = divmod(k, cols)
        out.paste(img, (gap + c * (cell + gap), gap + r * (cell + gap)))
    return out


def activation_row(act: torch.Tensor, cell: int = 40, gap: int = 2) -> Image.Image:
    """Channels ``(C, h, w)`` side by side on one shared scale (so a silent channel is dark)."""
    a = act.detach().float()
    scale = Scale("viridis", 0.0, float(a.max()) if float(a.max()) > 0 else 1.0)
    cells = [Image.fromarray(colorize(a[c], scale), "RGB").resize(
        (cell, max(1, round(cell * a.shape[1] / a.shape[2]))), Image.Resampling.NEAREST)
        for c in range(a.shape[0])]  # fmt: skip
    return hstack(cells, gap=gap)


def cam_overlay(probe: torch.Tensor, cam: torch.Tensor, size: int = 96) -> Image.Image:
    """Grad-CAM (at its layer's resolution) blended over the probe image, ``size`` pixels.

    A map that is zero everywhere (no region raises the class score through that layer) is
    shown as the plain image marked "0", not as a dark overlay that would read as a map.
    """
    base = probe_image(probe, size)
    c = cam.detach().float()
    if not float(c.max()) > 0:
        d = ImageDraw.Draw(base)
        d.rectangle((0, 0, 15, 15), fill=(255, 255, 255))
        d.text((8, 8), "0", fill=INK, font=font(12), anchor="mm")
        return base
    return overlay(base, c.numpy(), Scale("turbo", 0.0, float(c.max())), alpha=0.5)


def probe_image(probe: torch.Tensor, size: int = 96) -> Image.Image:
    """The probe image ``(C, H, W)`` in [0, 1], ``size`` pixels wide (nearest neighbour)."""
    img = probe.detach().clamp(0, 1)
    arr = np.rint(img.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    pil = Image.fromarray(arr[..., 0], "L") if arr.shape[2] == 1 else Image.fromarray(arr, "RGB")
    height = max(1, round(size * pil.height / pil.width))
    return pil.convert("RGB").resize((size, height), Image.Resampling.NEAREST)


def filter_cell(filters: torch.Tensor, smallest: int = 20) -> int:
    """Pixels per filter: at least ``smallest``, and 4 per kernel pixel (7×7 → 28)."""
    return max(smallest, 4 * int(filters.shape[-1]))


def loss_chart(
    frames: Sequence[Frame], upto: int | None = None, size: tuple[int, int] = (240, 110)
) -> Image.Image:
    """Training loss (blue) and validation loss at epoch ends (red dots) against the step, up
    to frame ``upto`` (marked) or the whole run; the axes always cover the whole run, so the
    frames of an animation line up."""
    w, h = size
    out = Image.new("RGB", size, BACKGROUND)
    d = ImageDraw.Draw(out)
    left, right, top, bottom = 34, w - 6, 14, h - 16
    d.rectangle((left, top, right, bottom), outline=MUTED)
    d.text((left, 0), "loss", fill=INK, font=font(10))
    values = [v for f in frames for v in (f.loss, f.val_loss) if v is not None]
    last_step = max(frames[-1].step, 1) if frames else 1
    d.text((right, h - 2), f"step {last_step}", fill=MUTED, font=font(10), anchor="rb")
    if not values:
        return out
    hi = max(values) * 1.05 or 1.0
    d.text((left - 3, top), f"{hi:.2g}", fill=MUTED, font=font(10), anchor="rt")
    d.text((left - 3, bottom), "0", fill=MUTED, font=font(10), anchor="rb")

    def xy(step: int, v: float) -> tuple[float, float]:
        return left + (right - left) * step / last_step, bottom - (bottom - top) * v / hi

    shown = frames if upto is None else frames[: upto + 1]  # what was known at that frame
    line = [xy(f.step, f.loss) for f in shown if f.loss is not None]
    if len(line) > 1:
        d.line(line, fill=LOSS_COLOR, width=2)
    for f in shown:
        if f.val_loss is not None:
            x, y = xy(f.step, f.val_loss)
            d.ellipse((x - 3, y - 3, x + 3, y + 3), fill=VAL_COLOR)
    if upto is not None and frames:
        x = xy(frames[upto].step, 0)[0]
        d.line((x, top, x, bottom), fill=INK, width=1)
    return out


def frame_label(index: TimelineIndex, i: int) -> str:
    f = index.frames[i]
    parts = [f"step {f.step}", f"epoch {f.epoch:.2f}"]
    if f.loss is not None:
        parts.append(f"loss {f.loss:.3f}")
    if f.acc is not None:
        parts.append(f"acc {f.acc:.1%}")
    if f.val_acc is not None:
        parts.append(f"val acc {f.val_acc:.1%}")
    if f.step == 0:
        parts.append("(initial weights)")
    return " · ".join(parts)


def filter_roughness(filters: torch.Tensor) -> float:
    """Mean roughness of the filters (:func:`convlens.featurevis.filters.roughness`): about 1
    for noise, falling as filters grow smooth structure such as edges and blobs."""
    from convlens.featurevis.filters import roughness

    return float(roughness(filters.detach().float()).mean())


def dead_text(index: TimelineIndex, i: int) -> str:
    f = index.frames[i]
    return "dead units: " + ", ".join(f"{n}: {f.dead[n]}/{index.units[n]}" for n in index.plan.dead)


def _wrapped(text: str, width: int, size: int) -> list[str]:
    """``text`` broken after commas into lines at most ``width`` pixels wide."""
    lines: list[str] = []
    for part in text.split(", "):
        trial = f"{lines[-1]}, {part}" if lines else part
        if lines and text_size(trial, size)[0] <= width:
            lines[-1] = trial
        else:
            lines.append(part)
    return lines


def _titled(img: Image.Image, text: str) -> Image.Image:
    out = Image.new("RGB", (max(img.width, 8 + 6 * len(text)), img.height + 16), BACKGROUND)
    ImageDraw.Draw(out).text((0, 0), text, fill=MUTED, font=font(11))
    out.paste(img, (0, 16))
    return out


# ---------------------------------------------------------------------------- figures


@dataclass
class Timeline:
    """A run's timeline, read and checked: its index, probe image and frames on demand."""

    run: Path
    index: TimelineIndex
    probe: torch.Tensor  # the shown probe image (C, H, W)

    @classmethod
    def open(cls, run: str | os.PathLike[str]) -> Timeline:
        index = read_index(run)
        if not index.frames:
            raise ConvlensError(f"the timeline in {str(run)!r} has no frames yet")
        images, _ = read_probe(_timeline_dir(run))
        return cls(Path(run), index, images[0])

    def __len__(self) -> int:
        return len(self.index.frames)

    def tensors(self, i: int) -> dict[str, torch.Tensor]:
        return read_frame(self.run, self.index, i)

    def panel(self, i: int) -> Image.Image:
        """Frame ``i`` as one picture: label, filters, probe and Grad-CAM, loss curve,
        activations per layer, dead units."""
        t = self.tensors(i)
        plan = self.index.plan
        top = hstack([
            _titled(filter_grid(t["filters"], filter_cell(t["filters"], 24)),
                    f"filters of {plan.filters}"),
            _titled(hstack([probe_image(self.probe), cam_overlay(self.probe, t["cam"])], gap=4),
                    f"probe ({self.index.probe_class}) · Grad-CAM"),
            loss_chart(self.index.frames, i),
        ], gap=16, align="top")  # fmt: skip
        rows = [_titled(activation_row(t[f"act/{n}"]), f"{n}") for n in plan.show]
        body = vstack([top, *rows], gap=6)
        lines = _wrapped(dead_text(self.index, i), body.width, 11)
        head = Image.new("RGB", (body.width, 24 + 14 * len(lines)), BACKGROUND)
        d = ImageDraw.Draw(head)
        rough = filter_roughness(t["filters"])
        d.text((0, 2), f"{frame_label(self.index, i)} · filter roughness {rough:.2f}", fill=INK,
               font=font(14))  # fmt: skip
        for k, line in enumerate(lines):
            d.text((0, 22 + 14 * k), line, fill=MUTED, font=font(11))
        out = vstack([head, body], gap=4)
        framed = Image.new("RGB", (out.width + 16, out.height + 16), BACKGROUND)
        framed.paste(out, (8, 8))
        return framed

    def pick(self, count: int) -> list[int]:
        """``count`` frame numbers spread evenly from the first to the last."""
        n = len(self)
        if count >= n:
            return list(range(n))
        if count == 1:
            return [0]
        return sorted({round(k * (n - 1) / (count - 1)) for k in range(count)})

    def contact_sheet(self, count: int = 8) -> Image.Image:
        """A still: one row per chosen frame (filters, Grad-CAM, first shown layer), labelled,
        under the loss curve of the whole run."""
        rows = []
        first = self.index.plan.show[0] if self.index.plan.show else None
        for i in self.pick(count):
            t = self.tensors(i)
            parts = [
                filter_grid(t["filters"], cell=filter_cell(t["filters"]), gap=1),
                cam_overlay(self.probe, t["cam"], 64),
            ]
            if first is not None:
                parts.append(activation_row(t[f"act/{first}"], cell=36))
            row = hstack(parts, gap=10)
            label = Image.new("RGB", (row.width, 16), BACKGROUND)
            text = f"{frame_label(self.index, i)} · roughness {filter_roughness(t['filters']):.2f}"
            ImageDraw.Draw(label).text((0, 0), text, fill=INK, font=font(11))
            rows.append(vstack([label, row], gap=2))
        heading = (
            f"filters of {self.index.plan.filters} · Grad-CAM on the probe "
            f"({self.index.probe_class})" + (f" · activations of {first}" if first else "")
        )
        sheet = vstack(rows, gap=8)
        title = Image.new("RGB", (max(sheet.width, text_size(heading, 13)[0] + 4), 22), BACKGROUND)
        ImageDraw.Draw(title).text((0, 2), heading, fill=INK, font=font(13))
        chart = loss_chart(self.index.frames, None, (min(sheet.width, 420), 110))
        out = vstack([title, chart, sheet], gap=6)
        framed = Image.new("RGB", (out.width + 16, out.height + 16), BACKGROUND)
        framed.paste(out, (8, 8))
        return framed


def animation_bytes(panels: Sequence[Image.Image], fmt: str, ms_per_frame: int) -> bytes:
    """An animated GIF or APNG of ``panels`` (padded to one size), looping, last frame held."""
    if fmt not in FORMATS:
        raise ConvlensError(f"unknown animation format {fmt!r}; accepted: {', '.join(FORMATS)}")
    w = max(p.width for p in panels)
    h = max(p.height for p in panels)
    frames = []
    for p in panels:
        canvas = Image.new("RGB", (w, h), BACKGROUND)
        canvas.paste(p, (0, 0))
        frames.append(canvas)
    durations = [ms_per_frame] * (len(frames) - 1) + [ms_per_frame * 4]
    buf = io.BytesIO()
    if fmt == "gif":
        # One shared adaptive palette keeps the colours steady from frame to frame.
        frames = [f.quantize(colors=255, method=Image.Quantize.MEDIANCUT) for f in frames]
        frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:],
                       duration=durations, loop=0, optimize=False, disposal=1)  # fmt: skip
    else:
        frames[0].save(buf, format="PNG", save_all=True, append_images=frames[1:],
                       duration=durations, loop=0)  # fmt: skip
    return buf.getvalue()


def write_timeline(
    run: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    max_frames: int = 60,
    fmt: str = "gif",
    ms_per_frame: int = 250,
    sheet_rows: int = 8,
) -> tuple[Path, Path, int]:
    """Write ``timeline.gif`` (or ``.png`` for APNG) and ``contact-sheet.png`` into ``out``;
    returns both paths and the number of animation frames."""
    if fmt not in FORMATS:
        raise ConvlensError(f"unknown --format {fmt!r}; accepted: {', '.join(FORMATS)}")
    tl = Timeline.open(run)
    chosen = tl.pick(max_frames)
    panels = [tl.panel(i) for i in chosen]
    anim_name = "timeline.gif" if fmt == "gif" else "timeline.png"
    sheet = tl.contact_sheet(sheet_rows)
    with output_set(out) as stage:
        write_bytes_atomic(stage / anim_name, animation_bytes(panels, fmt, ms_per_frame))
        save_png(sheet, stage / "contact-sheet.png")
    return Path(out) / anim_name, Path(out) / "contact-sheet.png", len(chosen)
