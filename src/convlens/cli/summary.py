"""``convlens summary MODEL``: the layer table with shapes, parameters and receptive fields."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from convlens.cli.common import ModelFlags, with_model_flags
from convlens.model import LayerGraph, Model


def _shape(shape: tuple[int, ...]) -> str:
    return "×".join(str(s) for s in shape)


def _window(hyper: dict[str, object]) -> str:
    if "kernel" not in hyper:
        return ""
    k, s, p = hyper["kernel"], hyper["stride"], hyper["padding"]
    return f"k{_shape(tuple(k))} s{_shape(tuple(s))} p{_shape(tuple(p))}"  # type: ignore[arg-type]


def layer_table(graph: LayerGraph, title: str) -> Table:
    table = Table(title=title, title_justify="left", header_style="bold")
    for col, justify in (
        ("#", "right"),
        ("layer", "left"),
        ("type", "left"),
        ("output", "left"),
        ("window", "left"),
        ("params", "right"),
        ("MACs", "right"),
        ("RF", "right"),
        ("RF stride", "right"),
    ):
        table.add_column(col, justify=justify, no_wrap=col != "layer")  # type: ignore[arg-type]
    for lay in graph:
        rf = lay.rf
        rf_size = "global" if rf and rf.is_global else (_shape(rf.size) if rf else "?")
        rf_stride = "" if not rf or rf.is_global else _shape(rf.stride)
        name = lay.name + (" [red]⚠ does not tile[/red]" if lay.tiling else "")
        table.add_row(
            str(lay.index),
            name,
            lay.op,
            _shape(lay.output_shape),
            _window(lay.hyper),
            f"{lay.params:,}" if lay.params else "",
            f"{lay.macs:,}" if lay.macs else "",
            rf_size,
            rf_stride,
        )
    return table


def wide_console() -> Console:
    """A console at least 120 columns wide when writing to a file or pipe."""
    probe = Console()
    return probe if probe.is_terminal else Console(width=max(probe.width, 120))


def print_summary(model: Model, console: Console | None = None) -> None:
    console = console or wide_console()
    graph = model.graph
    spec = model.spec
    console.print(
        layer_table(
            graph, f"{model.name}: input {_shape(spec.shape)}, {len(model.classes)} classes"
        )
    )
    size_mb = graph.total_params * 4 / 2**20
    console.print(
        f"parameters: {graph.total_params:,} ({graph.trainable_params:,} trainable, "
        f"{size_mb:.2f} MiB as float32)   multiply-accumulates per image: {graph.total_macs:,}"
    )
    for lay in graph:
        if lay.tiling:
            console.print(f"[yellow]warning[/yellow]: {lay.name}: {lay.tiling}")


@with_model_flags
def summary(
    model: Annotated[str, typer.Argument(help="'demo', a zoo name, a checkpoint or a file.")],
    flags: ModelFlags,
) -> None:
    """Print every layer with its output shape, parameters, MACs and receptive field."""
    print_summary(flags.open(model))


def register(app: typer.Typer) -> None:
    app.command()(summary)
