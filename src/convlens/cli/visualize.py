"""``convlens visualize``: feature visualizations of a layer's channels, a PNG each and a grid."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from convlens.cli import checks
from convlens.cli.common import ModelFlags, with_model_flags
from convlens.featurevis.render import parse_channels, render_channels
from convlens.io.atomic import output_set
from convlens.io.figure import save_png


@with_model_flags
def visualize(
    model: Annotated[str, typer.Argument(help="'demo', a zoo name, a checkpoint or model file.")],
    layer: Annotated[str, typer.Option("--layer", "-l", help="Layer name (model.graph).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the PNG files.")],
    channels: Annotated[
        str, typer.Option("--channels", "-c", help="'0-9', '3', '1,4,7' or 'all'.")
    ] = "0-9",
    steps: Annotated[int, typer.Option("--steps", "-n", help="Optimization steps.")] = 256,
    unit: Annotated[str, typer.Option(help="'channel' (mean over space) or 'neuron'.")] = "channel",
    param: Annotated[str, typer.Option(help="'fourier' or 'pixel'.")] = "fourier",
    decorrelate: Annotated[bool, typer.Option(help="Decorrelated colour (RGB models).")] = True,
    decay: Annotated[
        float, typer.Option(help="Fourier spectrum decay: 1 as Lucid, higher is smoother.")
    ] = 1.0,
    transforms: Annotated[
        str, typer.Option(help="'standard' (Lucid's), 'strong' or 'none'.")
    ] = "standard",
    lr: Annotated[float, typer.Option(help="Adam learning rate.")] = 0.05,
    tv: Annotated[float, typer.Option(help="Total-variation penalty weight.")] = 0.0,
    l1: Annotated[float, typer.Option(help="L1 penalty weight (toward --background).")] = 0.0,
    l2: Annotated[float, typer.Option(help="L2 penalty weight (toward --background).")] = 0.0,
    background: Annotated[
        float, typer.Option(help="Level L1/L2 pull toward: 0.5 gray, 0 for black backgrounds.")
    ] = 0.5,
    relu_override: Annotated[
        bool, typer.Option(help="Redirect ReLU gradients for units dead at the start.")
    ] = False,
    batch: Annotated[int, typer.Option(help="Channels rendered per batch.")] = 16,
    copies: Annotated[int, typer.Option(help="Images per channel (see --diversity).")] = 1,
    diversity: Annotated[
        float, typer.Option(help="Weight pushing a channel's copies apart (Gram diversity).")
    ] = 0.0,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same images).")] = 0,
    *,
    flags: ModelFlags,
) -> None:
    """Render what each channel of LAYER responds to most; writes DIR/<layer>_<c>.png and a grid."""
    check_visualize_numbers(steps, decay, lr, tv, l1, l2, background, batch, copies, diversity)
    checks.seed(seed)
    m = flags.open(model)
    width = m.graph[layer].channels
    chans = parse_channels(channels, width)
    result = render_channels(
        m, layer, chans, kind=unit, chunk=batch, copies=copies, diversity=diversity,
        steps=steps, param=param,
        decorrelate=decorrelate, decay=decay, transforms=transforms, lr=lr, tv=tv, l1=l1,
        l2=l2, background=background, relu_override=relu_override, seed=seed, progress=None,
    )  # fmt: skip
    stem = layer.replace("/", "_").replace("#", "_")
    names = [f"{c}_{k}" if copies > 1 else str(c) for c in chans for k in range(copies)]
    what = "class logit" if m.graph[layer] is m.graph.output else unit
    title = f"{m.name} · {layer} · {what} objective, {steps} steps, {param} parameterization"
    with output_set(out) as stage:  # the images and their grid land together
        for name, img in zip(names, result.images, strict=True):
            save_png(img, stage / f"{stem}_{name}.png")
        grid = result.figure(title=title, ncols=copies if copies > 1 else 5)
        save_png(grid, stage / f"{stem}_grid.png")
    final = result.history[-1]
    typer.echo(f"wrote {len(names)} images and {stem}_grid.png to {out}")
    typer.echo(
        "last step's objective (regularizers included): "
        + " ".join(f"{c}:{float(v):.3g}" for c, v in zip(names, final, strict=True))
    )


def check_visualize_numbers(
    steps: int,
    decay: float,
    lr: float,
    tv: float,
    l1: float,
    l2: float,
    background: float,
    batch: int,
    copies: int,
    diversity: float,
) -> None:
    checks.in_range("--steps", steps, 1, 100_000)
    checks.in_range("--decay", decay, 0, 10)
    checks.in_range("--lr", lr, 0, 10, lo_open=True)
    for flag, value in (("--tv", tv), ("--l1", l1), ("--l2", l2), ("--diversity", diversity)):
        checks.in_range(flag, value, 0, 1e6)
    checks.in_range("--background", background, 0, 1)
    checks.in_range("--batch", batch, 1, 1024)
    checks.in_range("--copies", copies, 1, 64)


def register(app: typer.Typer) -> None:
    app.command()(visualize)
