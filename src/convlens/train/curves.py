"""Learning curves: training and validation loss and accuracy per epoch, several runs at once.

A run folder is a checkpoint written by :func:`convlens.train.train`; its ``model.json``
holds ``history``, one record per epoch (``epoch``, ``train_loss``, ``train_acc`` and, when
the run had validation data, ``val_loss``, ``val_acc``). The figure marks, per run, the epoch
where validation loss stops falling: its minimum, when a later epoch is higher (the usual
sign of overfitting, and the epoch early stopping would keep).

>>> overfit_epoch([1, 2, 3, 4], [0.9, 0.5, 0.6, 0.7])
2
>>> overfit_epoch([1, 2, 3], [0.9, 0.5, 0.4]) is None
True
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from convlens.errors import ConvlensError
from convlens.io.color import category_colors
from convlens.io.figure import (
    BACKGROUND,
    INK,
    MUTED,
    RichDisplay,
    caption,
    font,
    hstack,
    text_size,
    vstack,
)
from convlens.model.checkpoint import META_FILE, read_meta
from convlens.model.formats.safety import finite_or_none

MAX_EPOCHS = 100_000  # a history longer than this is not one convlens wrote
FIELDS = ("train_loss", "train_acc", "val_loss", "val_acc")
PANEL = (420, 260)  # plot area of one panel, pixels
MARGIN_LEFT, MARGIN_BOTTOM, MARGIN_TOP, MARGIN_RIGHT = 58, 40, 8, 14


@dataclass(frozen=True)
class RunHistory(RichDisplay):
    """One run's per-epoch numbers (``None`` where a value was not recorded)."""

    name: str
    epochs: list[int]
    values: dict[str, list[float | None]]

    @property
    def has_validation(self) -> bool:
        return any(v is not None for v in self.values["val_loss"])

    def _display_figure(self) -> tuple[Image.Image, str]:
        return curves_figure([self]), f"learning curves of {self.name}"


def overfit_epoch(epochs: Sequence[int], val_loss: Sequence[float | None]) -> int | None:
    """The epoch of the lowest validation loss when some later epoch's loss is higher;
    ``None`` when validation loss never rises after its minimum (or was not recorded)."""
    points = [(e, v) for e, v in zip(epochs, val_loss, strict=True) if v is not None]
    if not points:
        return None
    best = min(range(len(points)), key=lambda i: (points[i][1], i))
    low = points[best][1]
    return points[best][0] if any(v > low for _, v in points[best + 1 :]) else None


def read_history(run: str | os.PathLike[str], name: str | None = None) -> RunHistory:
    """The history of the run folder ``run`` (checked record by record: it may come from
    anyone)."""
    folder = Path(run)
    if not folder.exists():
        raise ConvlensError(f"run {str(run)!r} does not exist")
    if not folder.is_dir():
        raise ConvlensError(f"run {str(run)!r} is not a folder; give a `convlens train` --out")
    if not (folder / META_FILE).is_file():
        raise ConvlensError(
            f"run {str(run)!r} has no {META_FILE}; give a folder written by `convlens train`"
        )
    doc = read_meta(folder)
    history = doc.get("history")
    where = f"{str(folder / META_FILE)!r}"
    if not isinstance(history, list) or not history:
        raise ConvlensError(f"{where} has no training history (was the model trained here?)")
    if len(history) > MAX_EPOCHS:
        raise ConvlensError(f"{where} has {len(history)} epochs; at most {MAX_EPOCHS} are read")
    epochs: list[int] = []
    values: dict[str, list[float | None]] = {f: [] for f in FIELDS}
    for i, rec in enumerate(history):
        if not isinstance(rec, dict):
            raise ConvlensError(f"{where} history entry {i} is not an object")
        epoch = rec.get("epoch", i + 1)
        if type(epoch) is not int or epoch < 1 or (epochs and epoch <= epochs[-1]):
            raise ConvlensError(
                f"{where} history entry {i} has epoch {str(epoch)[:20]!r}; accepted: "
                "increasing integers from 1"
            )
        epochs.append(epoch)
        for f in FIELDS:
            values[f].append(finite_or_none(rec.get(f), f"{where} history entry {i} {f}"))
    if all(v is None for v in values["train_loss"]):
        raise ConvlensError(f"{where} history records no training loss")
    return RunHistory(name or folder.name or str(run), epochs, values)


def read_runs(runs: Sequence[str | os.PathLike[str]]) -> list[RunHistory]:
    """Histories of several runs, each named by its folder (or by its path when two runs
    share a folder name)."""
    if not runs:
        raise ConvlensError("give at least one run folder")
    names = [Path(r).name or str(r) for r in runs]
    clash = {n for n in names if names.count(n) > 1}
    return [read_history(r, str(r) if n in clash else n) for r, n in zip(runs, names, strict=True)]


# ---------------------------------------------------------------------------- drawing


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values (1, 2 or 5 × 10^k apart) covering ``[lo, hi]``."""
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / max(count - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step
    ticks, t = [], start
    while t < hi + step * 0.999:
        ticks.append(round(t, 10))
        t += step
    return ticks


def _fmt(v: float, percent: bool) -> str:
    return f"{v:.0%}" if percent else f"{v:.3g}"


def line_panel(
    runs: Sequence[RunHistory],
    colors: Sequence[tuple[int, int, int]],
    key: str,
    ylabel: str,
    percent: bool = False,
) -> Image.Image:
    """One panel: ``train_<key>`` (thin, hollow markers) and ``val_<key>`` (thick, filled)
    against epoch for every run, with axes, ticks, axis labels and the overfitting marks."""
    series = [(r, s) for r in runs for s in (f"train_{key}", f"val_{key}")]
    ys = [v for r, s in series for v in r.values[s] if v is not None]
    lo, hi = (0.0, 1.0) if percent else (min(ys), max(ys))
    if not percent:
        pad = (hi - lo) * 0.05 or 0.1
        lo, hi = max(0.0, lo - pad), hi + pad
    yticks = nice_ticks(lo, hi, 6)
    lo, hi = yticks[0], yticks[-1]
    last = max(r.epochs[-1] for r in runs)
    first = min(r.epochs[0] for r in runs)
    xticks = [int(t) for t in nice_ticks(first, last, 8) if float(t).is_integer()]
    xticks = [t for t in xticks if first <= t <= last] or [first]
    x_hi = max(last, first + 1)
    pw, ph = PANEL
    W, H = MARGIN_LEFT + pw + MARGIN_RIGHT, MARGIN_TOP + ph + MARGIN_BOTTOM
    img = Image.new("RGB", (W, H), BACKGROUND)
    d = ImageDraw.Draw(img)

    def px(epoch: float) -> float:
        return MARGIN_LEFT + (epoch - first) / (x_hi - first) * pw

    def py(v: float) -> float:
        return MARGIN_TOP + (hi - v) / (hi - lo) * ph

    for t in yticks:
        y = py(t)
        d.line((MARGIN_LEFT, y, MARGIN_LEFT + pw, y), fill=(235, 235, 235))
        d.text((MARGIN_LEFT - 5, y), _fmt(t, percent), fill=INK, font=font(10), anchor="rm")
    for t in xticks:
        x = px(t)
        d.line((x, MARGIN_TOP + ph, x, MARGIN_TOP + ph + 4), fill=MUTED)
        d.text((x, MARGIN_TOP + ph + 6), str(t), fill=INK, font=font(10), anchor="ma")
    d.rectangle((MARGIN_LEFT, MARGIN_TOP, MARGIN_LEFT + pw, MARGIN_TOP + ph), outline=MUTED)
    d.text((MARGIN_LEFT + pw / 2, H - 4), "epoch", fill=INK, font=font(11), anchor="md")
    # The y label, written sideways.
    tw, th = text_size(ylabel, 11)
    label = Image.new("RGB", (tw + 4, th + 6), BACKGROUND)
    ImageDraw.Draw(label).text((2, 1), ylabel, fill=INK, font=font(11))
    label = label.rotate(90, expand=True)
    img.paste(label, (2, MARGIN_TOP + (ph - label.height) // 2))

    for run, color in zip(runs, colors, strict=True):
        mark = overfit_epoch(run.epochs, run.values["val_loss"])
        if mark is not None:
            x = px(mark)
            for y in range(MARGIN_TOP, MARGIN_TOP + ph, 6):  # dotted vertical line
                d.line((x, y, x, min(y + 2, MARGIN_TOP + ph)), fill=color, width=1)
        for s, width, filled in ((f"train_{key}", 1, False), (f"val_{key}", 3, True)):
            pts = [(px(e), py(v)) for e, v in zip(run.epochs, run.values[s], strict=True)
                   if v is not None]  # fmt: skip
            if len(pts) > 1:
                d.line(pts, fill=color, width=width, joint="curve")
            r = 3
            for x, y in pts:
                box = (x - r, y - r, x + r, y + r)
                d.ellipse(box, fill=color if filled else BACKGROUND, outline=color)
    return img


def legend(runs: Sequence[RunHistory], colors: Sequence[tuple[int, int, int]]) -> Image.Image:
    """Run names with their colour and marked epoch, then the key to line styles."""
    rows = []
    for run, color in zip(runs, colors, strict=True):
        mark = overfit_epoch(run.epochs, run.values["val_loss"])
        note = (
            f"  (validation loss lowest at epoch {mark}, rising after: dotted line)"
            if mark is not None
            else ("" if run.has_validation else "  (no validation data)")
        )
        text = f"{run.name}: {len(run.epochs)} epochs{note}"
        row = Image.new("RGB", (text_size(text, 12)[0] + 30, 18), BACKGROUND)
        rd = ImageDraw.Draw(row)
        rd.line((0, 9, 20, 9), fill=color, width=3)
        rd.text((26, 9), text, fill=INK, font=font(12), anchor="lm")
        rows.append(row)
    key = Image.new("RGB", (440, 18), BACKGROUND)
    kd = ImageDraw.Draw(key)
    kd.line((0, 9, 20, 9), fill=MUTED, width=3)
    kd.ellipse((7, 6, 13, 12), fill=MUTED)
    kd.text((26, 9), "validation", fill=INK, font=font(12), anchor="lm")
    kd.line((110, 9, 130, 9), fill=MUTED, width=1)
    kd.ellipse((117, 6, 123, 12), fill=BACKGROUND, outline=MUTED)
    kd.text((136, 9), "training (mean over the epoch's batches)", fill=INK,
            font=font(12), anchor="lm")  # fmt: skip
    return vstack([*rows, key], gap=2)


def curves_figure(runs: Sequence[RunHistory], title: str = "") -> Image.Image:
    """Loss and accuracy panels side by side, the legend underneath."""
    colors = category_colors(len(runs))
    loss = caption(line_panel(runs, colors, "loss", "cross-entropy loss"), "Loss", size=13)
    acc = caption(line_panel(runs, colors, "acc", "accuracy", percent=True), "Accuracy", size=13)
    fig = vstack([hstack([loss, acc], gap=16, align="top"), legend(runs, colors)], gap=10)
    fig = caption(fig, title or "Learning curves", size=15)
    out = Image.new("RGB", (fig.width + 16, fig.height + 16), BACKGROUND)
    out.paste(fig, (8, 8))
    return out
