"""``convlens demo``: the bundled model, its layers and its predictions on its sample images."""

from __future__ import annotations

from typing import Annotated

import torch
import typer
from rich.table import Table

from convlens.cli.common import open_model
from convlens.cli.summary import print_summary, wide_console
from convlens.model import Model


def prediction_table(model: Model) -> Table:
    table = Table(title="predictions on the sample images", title_justify="left")
    for col in ("image", "true class", "predicted", "probability"):
        table.add_column(col)
    if not model.samples:
        return table
    batch = torch.cat([model.load_image(s.path) for s in model.samples])
    probs = model.probabilities(batch)
    for sample, p in zip(model.samples, probs, strict=True):
        k = int(p.argmax())
        true = model.classes[sample.label] if sample.label is not None else "?"
        mark = "" if sample.label is None else (" ✓" if k == sample.label else " ✗")
        table.add_row(sample.path.name, true, model.classes[k] + mark, f"{float(p[k]):.3f}")
    return table


def demo(
    model: Annotated[str, typer.Option("--model", "-m", help="Model to show.")] = "demo",
) -> None:
    """Show the bundled demo model: its layers and its predictions on the sample images."""
    m = open_model(model)
    console = wide_console()
    print_summary(m, console)
    console.print(prediction_table(m))


def register(app: typer.Typer) -> None:
    app.command()(demo)
