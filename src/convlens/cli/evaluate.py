"""``convlens evaluate``: accuracy, per-class accuracy, a confusion matrix and the most
confidently wrong images of a model on a data set."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from convlens.cli.checks import in_range
from convlens.cli.common import ModelFlags, with_model_flags
from convlens.data import dataset_help, open_dataset
from convlens.train.datasets import Subset, for_model
from convlens.train.evaluation import evaluate_model, write_report


@with_model_flags
def evaluate(
    model: Annotated[str, typer.Argument(help="'demo', a checkpoint or model file.")],
    dataset: Annotated[
        str,
        typer.Option("--dataset", "-d", help=dataset_help()),
    ],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Folder for metrics.json and the figures.")
    ] = Path("evaluation"),
    split: Annotated[str, typer.Option(help="Which split to evaluate on.")] = "test",
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 256,
    wrong: Annotated[int, typer.Option(help="How many confidently wrong images to show.")] = 24,
    limit: Annotated[
        int | None, typer.Option(help="Evaluate this many images (a seeded subset).")
    ] = None,
    data_dir: Annotated[
        str | None, typer.Option("--data-dir", help="Folder holding the data set's files.")
    ] = None,
    download: Annotated[
        bool, typer.Option("--download", help="Fetch missing files from the official source.")
    ] = False,
    *,
    flags: ModelFlags,
) -> None:
    """Evaluate MODEL on a data set: accuracy overall and per class, the confusion matrix
    (confusion.png), the most confidently wrong images (wrong.png) and metrics.json."""
    in_range("--batch-size", batch_size, 1, 65_536)
    in_range("--wrong", wrong, 0, 256)
    if limit is not None:
        in_range("--limit", limit, 1, 10**9)
    m = flags.open(model)
    data = for_model(open_dataset(dataset, split, data_dir, download), m.spec.shape)
    if limit is not None:
        data = Subset(data, limit, 0)
    ev = evaluate_model(m, data, batch_size)
    written = write_report(data, ev, out, wrong)
    typer.echo(
        f"{m.name} on {data.name} ({split}, {len(data):,} images): accuracy {ev.accuracy:.2%}"
    )
    width = max(len(c) for c in ev.classes)
    total = ev.confusion.sum(dim=1).tolist()
    for name, acc, n in zip(ev.classes, ev.per_class, total, strict=True):
        shown = "   n/a" if acc is None else f"{acc:6.1%}"
        typer.echo(f"  {name:<{width}}  {shown}  of {n:,}")
    typer.echo("wrote " + ", ".join(str(p) for p in written))


def register(app: typer.Typer) -> None:
    app.command()(evaluate)
