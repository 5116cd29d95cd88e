"""Ship a training run as the bundled demo model: ``python -m convlens.train.export_demo RUN``.

Copies the run's weights and metadata (not its optimizer state) into the package's
``convlens/model/demo/`` folder, measures its Fashion-MNIST test accuracy (refusing to ship
below :data:`MIN_ACCURACY`), and writes two sample test images per class as
``NN_LABEL_class-name-INDEX.png``, the naming :func:`convlens.model.checkpoint.load_checkpoint`
reads labels from. ``make demo-model`` runs the training command and then this.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from pathlib import Path

import torch

from convlens.data.fashion_mnist import open_fashion_mnist
from convlens.errors import ConvlensError
from convlens.io.figure import save_png
from convlens.model.checkpoint import SAMPLES_DIR, load_checkpoint, read_meta, save_checkpoint
from convlens.model.core import Model
from convlens.model.load import demo_folder
from convlens.train.loop import evaluate

MIN_ACCURACY = 0.88
PER_CLASS = 2
KEEP_META = ("history", "training", "dataset", "command", "epochs_done")


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def sample_indices(labels: torch.Tensor, classes: int, per_class: int) -> list[int]:
    """The first ``per_class`` test images of every class, class by class."""
    picks: list[int] = []
    for c in range(classes):
        found = (labels == c).nonzero().flatten()[:per_class].tolist()
        if len(found) < per_class:
            raise ConvlensError(f"the test split has fewer than {per_class} images of class {c}")
        picks += found
    return picks


def export(run: Path, dest: Path, data_dir: str | None = None) -> float:
    """Copy ``run`` to ``dest`` with samples; returns the test accuracy."""
    model = load_checkpoint(run)
    test = open_fashion_mnist("test", data_dir)
    if model.spec.shape != tuple(test.shape) or len(model.classes) != len(test.classes):
        raise ConvlensError(f"{run} is not a Fashion-MNIST model ({model.spec.shape})")
    _, accuracy = evaluate(model, test)
    if accuracy < MIN_ACCURACY:
        raise ConvlensError(
            f"test accuracy {accuracy:.2%} is below {MIN_ACCURACY:.0%}; not shipping {run}"
        )
    meta = {k: v for k, v in read_meta(run).items() if k in KEEP_META}
    demo = Model(model.net, model.spec, test.classes, name="tiny-vgg-fashion-mnist",
                 arch=model.arch, outputs=model.outputs)  # fmt: skip
    save_checkpoint(demo, dest, test_accuracy=round(accuracy, 4), recipe="make demo-model",
                    **meta)  # fmt: skip
    samples = dest / SAMPLES_DIR
    shutil.rmtree(samples, ignore_errors=True)
    samples.mkdir(parents=True)
    picks = sample_indices(test.labels, len(test.classes), PER_CLASS)
    images, labels = test.get(picks)
    for k, (idx, x, y) in enumerate(zip(picks, images, labels.tolist(), strict=True)):
        save_png(x, samples / f"{k:02d}_{y}_{slug(test.classes[y])}-{idx:05d}.png")
    return accuracy


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="checkpoint folder written by `convlens train`")
    parser.add_argument("--dest", type=Path, default=None, help="default: the package's demo/")
    parser.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST files")
    args = parser.parse_args(argv)
    try:
        accuracy = export(args.run, args.dest or demo_folder(), args.data_dir)
    except ConvlensError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"shipped {args.run} as the demo model: test accuracy {accuracy:.2%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
