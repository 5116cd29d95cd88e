"""``convlens demo``: the bundled model, its layers and its predictions on its sample images."""

from __future__ import annotations

from typing import Annotated

import torch
import typer
from rich.markup import escape
from rich.table import Table

from convlens.cli.common import open_model
from convlens.cli.serve import (
    WEB_EXTRA_HINT,
    HostOpt,
    NoBrowserOpt,
    PortOpt,
    check_server_args,
    run_server,
    web_available,
)
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
    host: HostOpt = "127.0.0.1",
    port: PortOpt = 8765,
    no_browser: NoBrowserOpt = False,
    no_server: Annotated[
        bool, typer.Option("--no-server", help="Only print the summary; do not serve.")
    ] = False,
) -> None:
    """Show the bundled demo model: its layers, its predictions, and the web explainer."""
    if not no_server and web_available():
        check_server_args(host, port)
    m = open_model(model)
    console = wide_console()
    print_summary(m, console)
    console.print(prediction_table(m))
    if no_server:
        return
    if not web_available():
        console.print(
            f"[yellow]The web explainer is not installed[/yellow]; for it: {escape(WEB_EXTRA_HINT)}"
        )
        return
    run_server(m, host=host, port=port, open_browser=not no_browser)


def register(app: typer.Typer) -> None:
    app.command()(demo)
