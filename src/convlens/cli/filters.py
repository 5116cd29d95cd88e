"""``convlens filters``: a conv layer's weights as a picture, with a noise score per filter."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from convlens.cli.checks import in_range, png_target
from convlens.cli.common import ModelFlags, with_model_flags
from convlens.featurevis.filters import conv_weights, filter_figure, roughness
from convlens.io.figure import save_png


@with_model_flags
def filters(
    model: Annotated[str, typer.Argument(help="'demo', a zoo name, a checkpoint or model file.")],
    layer: Annotated[str, typer.Option("--layer", "-l", help="A conv layer (model.graph name).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG file (or folder) to write.")],
    max_filters: Annotated[int, typer.Option(help="Show at most this many filters.")] = 64,
    max_inputs: Annotated[int, typer.Option(help="Deeper layers: input channels shown.")] = 16,
    *,
    flags: ModelFlags,
) -> None:
    """Draw LAYER's kernels (first layer as images, deeper ones per input channel)."""
    in_range("--max-filters", max_filters, 1, 4096)
    in_range("--max-inputs", max_inputs, 1, 4096)
    out = png_target(out, f"filters-{layer.replace('/', '_')}.png")
    m = flags.open(model)
    fig = filter_figure(m, layer, max_filters=max_filters, max_inputs=max_inputs)
    save_png(fig, out)
    r = roughness(conv_weights(m, layer))
    typer.echo(
        f"wrote {out} ({fig.width}×{fig.height}); roughness per filter (≈1 noise, ≈0 smooth):"
    )
    typer.echo("  " + " ".join(f"{float(v):.2f}" for v in r))


def register(app: typer.Typer) -> None:
    app.command()(filters)
