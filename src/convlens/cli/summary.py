"""``convlens summary MODEL``: the layer table with shapes, parameters and receptive fields.

``convlens summary --layers "conv:5x5x5,pool:2" --input 32x32x3`` does the same for a network
written as a layer list (grammar in :mod:`convlens.model.layerspec`), so a lecture's size and
parameter arithmetic needs no Python.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.table import Table

from convlens.cli.common import ModelFlags, with_model_flags
from convlens.errors import ConvlensError
from convlens.model import LayerGraph, Model
from convlens.model.graph import build_graph
from convlens.model.layerspec import GRAMMAR, build_net, parse_input, parse_layers


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
        # Nothing wraps: a layer name must stay whole to be copied into --layer.
        table.add_column(col, justify=justify, no_wrap=True)  # type: ignore[arg-type]
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


def output_words(graph: LayerGraph, classes: int) -> str:
    """``10 classes`` when the network ends in a classifier (a linear or softmax layer), else
    what it outputs (a flatten's 160 values are not 160 classes)."""
    out = graph.output
    if out.kind in ("linear", "softmax") or (
        out.kind == "activation" and len(out.output_shape) == 1
    ):
        return f"{classes} classes"
    return f"output {_shape(out.output_shape)} ({out.kind})"


def totals(graph: LayerGraph) -> str:
    """Parameters, memory, MACs, and the share held by fully connected layers."""
    size_mb = graph.total_params * 4 / 2**20
    line = (
        f"parameters: {graph.total_params:,} ({graph.trainable_params:,} trainable, "
        f"{size_mb:.2f} MiB as float32)   multiply-accumulates per image: {graph.total_macs:,}"
    )
    fc = sum(lay.params for lay in graph if lay.kind == "linear")
    if fc and graph.total_params:
        line += (
            f"\nfully connected layers: {fc:,} parameters ({fc / graph.total_params:.1%}), "
            f"the rest: {graph.total_params - fc:,}"
        )
    return line


def print_table(graph: LayerGraph, title: str, console: Console | None = None) -> None:
    table = layer_table(graph, title)
    console = console or wide_console()
    # Never cut a layer name (a user copies it into --layer): print the table as wide as it
    # needs, even past the console's width.
    need = Measurement.get(console, console.options.update_width(10_000), table).maximum
    width = console.width
    console.width = max(need, width)  # print() alone caps a width at the console's
    try:
        console.print(table, crop=False)
    finally:
        console.width = width
    console.print(totals(graph))
    for lay in graph:
        if lay.tiling:
            console.print(f"[yellow]warning[/yellow]: {lay.name}: {lay.tiling}")


def print_summary(model: Model, console: Console | None = None) -> None:
    graph = model.graph
    title = (
        f"{model.name}: input {_shape(model.spec.shape)}, {output_words(graph, len(model.classes))}"
    )
    print_table(graph, title, console)


def layer_list_graph(layers: str, input_shape: str) -> LayerGraph:
    """The layer graph of a layer list on an input ``HxWxC`` (sizes checked as parsed)."""
    shape = parse_input(input_shape)
    return build_graph(build_net(parse_layers(layers), shape), shape)


def print_layer_list(layers: str, input_shape: str, console: Console | None = None) -> None:
    graph = layer_list_graph(layers, input_shape)
    c, h, w = graph.input.output_shape
    title = (
        f"layer list: input {h}×{w}×{c} (H×W×C; the table writes C×H×W), "
        f"output {_shape(graph.output.output_shape)}"
    )
    print_table(graph, title, console)


@with_model_flags
def summary(
    flags: ModelFlags,
    model: Annotated[
        str | None, typer.Argument(help="'demo', a zoo name, a checkpoint or a file.")
    ] = None,
    layers: Annotated[
        str | None,
        typer.Option(
            "--layers", help=f"Instead of a model, a layer list: {escape(GRAMMAR)}, or a JSON list."
        ),
    ] = None,
    input_shape: Annotated[
        str | None,
        typer.Option("--input", help="The layer list's input, HxWxC (e.g. 32x32x3) or HxW."),
    ] = None,
) -> None:
    """Print every layer with its output shape, parameters, MACs and receptive field."""
    if layers is not None:
        if model is not None:
            raise ConvlensError("give a model or --layers, not both")
        if input_shape is None:
            raise ConvlensError("--layers needs --input HxWxC (e.g. --input 32x32x3)")
        print_layer_list(layers, input_shape)
        return
    if input_shape is not None:
        raise ConvlensError("--input goes with --layers; for a model file use --input-size")
    if model is None:
        raise ConvlensError(
            "name a model (demo, a zoo name, a checkpoint, a file) or give --layers and --input"
        )
    print_summary(flags.open(model))


def register(app: typer.Typer) -> None:
    app.command()(summary)
