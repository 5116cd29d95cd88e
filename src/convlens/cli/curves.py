"""``convlens curves``: learning curves of one or more training runs in one figure."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from convlens.cli.checks import png_target
from convlens.io.figure import save_png
from convlens.train.curves import curves_figure, overfit_epoch, read_runs


def curves(
    runs: Annotated[
        list[str], typer.Argument(help="Run folders written by `convlens train --out`.")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG file (or folder) to write.")] = Path(
        "curves.png"
    ),
    title: Annotated[str, typer.Option(help="Figure title.")] = "",
) -> None:
    """Plot training and validation loss and accuracy per epoch, runs overlaid, marking the
    epoch after which validation loss rises."""
    target = png_target(out, "curves.png")
    histories = read_runs(runs)
    save_png(curves_figure(histories, title), target)
    for h in histories:
        mark = overfit_epoch(h.epochs, h.values["val_loss"])
        note = f"; validation loss lowest at epoch {mark}, higher after" if mark else ""
        typer.echo(f"{h.name}: {len(h.epochs)} epochs{note}")
    typer.echo(f"wrote {target}")


def register(app: typer.Typer) -> None:
    app.command()(curves)
