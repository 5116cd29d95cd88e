"""Evaluating a classifier on a labelled data set: accuracy, per-class accuracy, the confusion
matrix and the most confidently wrong images.

The confusion matrix ``C[i, j]`` counts images of true class ``i`` predicted as ``j``;
per-class accuracy (recall) is ``C[i, i] / Σ_j C[i, j]`` and accuracy ``Σ_i C[i, i] / N``.
The figure colours each cell by its row-normalised value ``C[i, j] / Σ_j C[i, j]``, so a
rare class's mistakes are as visible as a common one's. Confidence is the softmax probability
of the predicted class.

(Named ``evaluation``, not ``evaluate``: a submodule ``convlens.train.evaluate`` would replace
the package's ``evaluate`` function, the loop's loss-and-accuracy helper, once imported.)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from convlens.data.base import ImageDataset
from convlens.errors import ConvlensError
from convlens.io.atomic import output_set, write_text_atomic
from convlens.io.color import Scale, colorize
from convlens.io.figure import (
    BACKGROUND,
    INK,
    MUTED,
    caption,
    colorbar,
    font,
    grid,
    hstack,
    save_png,
    text_size,
)
from convlens.model import Model

MAX_CLASSES_DRAWN = 60  # a confusion matrix bigger than this is unreadable as a picture


@dataclass(frozen=True)
class Evaluation:
    """Predictions of a model on a data set, in the data set's order."""

    classes: list[str]  # the data set's class names; labels index these
    labels: torch.Tensor  # (N,) int64
    predictions: torch.Tensor  # (N,) int64, indices into ``classes`` (−1: a class not in it)
    confidence: torch.Tensor  # (N,) softmax probability of the predicted class

    @property
    def confusion(self) -> torch.Tensor:
        """``(K, K)`` counts, rows true classes, columns predicted; predictions outside the
        data set's classes are left out (they count as wrong in the accuracy)."""
        k = len(self.classes)
        ok = self.predictions >= 0
        flat = self.labels[ok] * k + self.predictions[ok]
        return torch.bincount(flat, minlength=k * k).view(k, k)

    @property
    def accuracy(self) -> float:
        return float((self.predictions == self.labels).double().mean()) if len(self.labels) else 0.0

    @property
    def per_class(self) -> list[float | None]:
        """Recall of each class (``None`` for a class with no images)."""
        correct = torch.bincount(self.labels[self.predictions == self.labels],
                                 minlength=len(self.classes))  # fmt: skip
        total = torch.bincount(self.labels, minlength=len(self.classes))
        return [float(c) / int(t) if int(t) else None for c, t in zip(correct, total, strict=True)]

    def most_confident_wrong(self, k: int) -> list[int]:
        """Indices of up to ``k`` wrong predictions, most confident first."""
        wrong = (self.predictions != self.labels).nonzero().flatten()
        order = torch.argsort(self.confidence[wrong], descending=True, stable=True)
        return wrong[order[:k]].tolist()

    def to_dict(self) -> dict[str, Any]:
        return {
            "images": len(self.labels),
            "accuracy": self.accuracy,
            "per_class": dict(zip(self.classes, self.per_class, strict=True)),
            "confusion": self.confusion.tolist(),
            "classes": self.classes,
        }


def class_map(model: Model, data: ImageDataset) -> torch.Tensor:
    """For each model output, the data set class it means (−1 for none).

    Outputs are matched by name when every data class is one of the model's classes (e.g. a
    model trained on a superset, or in another order); otherwise the numbers of classes must
    agree and outputs are taken in order.
    """
    model_classes, names = list(model.classes), list(data.classes)
    if set(names) <= set(model_classes):
        return torch.tensor([names.index(c) if c in names else -1 for c in model_classes])
    if len(model_classes) != len(names):
        raise ConvlensError(
            f"the model has {len(model_classes)} classes ({', '.join(model_classes[:5])}...) "
            f"and the data set {len(names)} ({', '.join(names[:5])}...); evaluate on data "
            "labelled with the model's classes"
        )
    return torch.arange(len(names))


@torch.inference_mode()
def evaluate_model(model: Model, data: ImageDataset, batch_size: int = 256) -> Evaluation:
    """Run ``model`` (in eval mode, restored after) over ``data`` in batches."""
    if tuple(data.shape) != tuple(model.spec.shape):
        raise ConvlensError(
            f"the data's images are {data.shape} but the model takes {model.spec.shape}"
        )
    if len(data) == 0:
        raise ConvlensError(f"the data set {data.name!r} has no images")
    mapping = class_map(model, data)
    was_training = model.training
    model.eval()
    preds, confs, labels = [], [], []
    try:
        for _, x, y in data.batches(batch_size):
            out = model(x).float().cpu()  # counted and drawn on the CPU
            prob = out if model.outputs == "probabilities" else out.softmax(dim=1)
            conf, idx = prob.max(dim=1)
            preds.append(mapping[idx])
            confs.append(conf)
            labels.append(y)
    finally:
        model.train(was_training)
    return Evaluation(list(data.classes), torch.cat(labels), torch.cat(preds), torch.cat(confs))


# ---------------------------------------------------------------------------- figures


def _rotated_text(text: str, size: int = 11) -> Image.Image:
    tw, th = text_size(text, size)
    img = Image.new("RGB", (tw + 4, th + 6), BACKGROUND)
    ImageDraw.Draw(img).text((2, 1), text, fill=INK, font=font(size))
    return img.rotate(90, expand=True)


def confusion_figure(ev: Evaluation, title: str = "") -> Image.Image:
    """Counts in cells coloured by row-normalised value, class names on both axes, a colour
    bar saying what the colour means."""
    counts = ev.confusion.numpy()
    k = len(ev.classes)
    if k > MAX_CLASSES_DRAWN:
        raise ConvlensError(
            f"{k} classes are too many for a confusion-matrix picture (at most "
            f"{MAX_CLASSES_DRAWN}); the counts are in metrics.json"
        )
    rows = counts.sum(axis=1, keepdims=True)
    norm = np.divide(counts, rows, out=np.zeros(counts.shape), where=rows > 0)
    cell = max(22, min(48, 560 // max(k, 1)))
    scale = Scale("viridis", 0.0, 1.0)
    colours = colorize(norm, scale)
    names = [c if len(c) <= 18 else c[:17] + "…" for c in ev.classes]
    label_w = max(text_size(n, 11)[0] for n in names) + 10
    top = 26  # room for the "predicted class" heading
    side = 18  # room for the sideways "true class" heading
    W = side + label_w + k * cell + 4
    H = top + k * cell + label_w + 4
    img = Image.new("RGB", (W, H), BACKGROUND)
    d = ImageDraw.Draw(img)
    x0, y0 = side + label_w, top
    for i in range(k):
        for j in range(k):
            c = tuple(int(v) for v in colours[i, j])
            box = (x0 + j * cell, y0 + i * cell, x0 + (j + 1) * cell - 1, y0 + (i + 1) * cell - 1)
            d.rectangle(box, fill=c)
            light = 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2] > 140
            text = str(int(counts[i, j]))
            size = 11 if text_size(text, 11)[0] < cell - 4 else 8
            ink = INK if light else (255, 255, 255)
            centre = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
            d.text(centre, text, fill=ink, font=font(size), anchor="mm")
        d.text((x0 - 5, y0 + (i + 0.5) * cell), names[i], fill=INK, font=font(11), anchor="rm")
        lab = _rotated_text(names[i])
        img.paste(lab, (int(x0 + (i + 0.5) * cell - lab.width / 2), y0 + k * cell + 4))
    d.rectangle((x0 - 1, y0 - 1, x0 + k * cell, y0 + k * cell), outline=MUTED)
    d.text((x0 + k * cell / 2, 4), "predicted class", fill=INK, font=font(12), anchor="ma")
    heading = _rotated_text("true class", 12)
    img.paste(heading, (0, int(y0 + k * cell / 2 - heading.height / 2)))
    bar = colorbar(scale, length=max(80, min(k * cell, 300)))
    legend = hstack([bar, _rotated_text("colour: share of the true class's images", 11)],
                    gap=2)  # fmt: skip
    fig = hstack([img, legend], gap=12, align="top")
    head = title or f"Confusion matrix: accuracy {ev.accuracy:.2%} on {len(ev.labels):,} images"
    return caption(fig, head, size=14)


def wrong_figure(
    data: ImageDataset, ev: Evaluation, k: int = 16, ncols: int = 8, title: str = ""
) -> Image.Image | None:
    """The ``k`` most confidently wrong images, each labelled with its true and predicted
    class and the confidence; ``None`` when nothing was wrong."""
    picks = ev.most_confident_wrong(k)
    if not picks:
        return None
    x, _ = data.get(picks)

    def name(i: int) -> str:
        return ev.classes[i] if i >= 0 else "(other)"

    labels = [
        f"true: {name(int(ev.labels[i]))}\nsaid: {name(int(ev.predictions[i]))}\n"
        f"confidence {float(ev.confidence[i]):.0%}"
        for i in picks
    ]
    mistakes = int((ev.predictions != ev.labels).sum())
    head = title or f"Most confidently wrong: {len(picks)} of {mistakes:,} mistakes"
    return grid(list(x), ncols, labels, title=head, cell_size=84, label_size=10)


def write_report(
    data: ImageDataset, ev: Evaluation, out: str | os.PathLike[str], wrong: int = 16
) -> list[Path]:
    """``metrics.json``, ``confusion.png`` and (when anything is wrong) ``wrong.png`` in
    ``out``, all written together (an error leaves the folder as it was); returns the files
    written."""
    names = ["metrics.json", "confusion.png"]
    confusion = confusion_figure(ev)
    fig = wrong_figure(data, ev, wrong) if wrong else None
    with output_set(out) as stage:
        write_text_atomic(stage / names[0], json.dumps(ev.to_dict(), indent=2) + "\n")
        save_png(confusion, stage / names[1])
        if fig is not None:
            names.append("wrong.png")
            save_png(fig, stage / names[-1])
    folder = Path(out)
    if fig is None:
        (folder / "wrong.png").unlink(missing_ok=True)  # not a stale picture of another run
    return [folder / n for n in names]
