"""``convlens invert``: reconstruct an image from its activations at several depths."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from convlens.cli import checks
from convlens.cli.common import ModelArg, ModelFlags, with_model_flags
from convlens.featurevis.inversion import correlation, inversion_figure, invert_layers
from convlens.io.figure import save_png


@with_model_flags
def invert(
    image: Annotated[Path, typer.Argument(help="Image file to reconstruct.")],
    layers: Annotated[str, typer.Option("--layers", "-l", help="Comma-separated layer names.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Figure PNG (or folder) to write.")],
    model: ModelArg = "demo",
    steps: Annotated[int, typer.Option(help="Optimization steps per layer.")] = 300,
    tv: Annotated[float, typer.Option(help="Total-variation prior weight.")] = 0.5,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    *,
    flags: ModelFlags,
) -> None:
    """Reconstruct IMAGE from each layer's representation (Mahendran & Vedaldi 2015)."""
    checks.in_range("--steps", steps, 1, 100_000)
    checks.in_range("--tv", tv, 0, 1e6)
    checks.seed(seed)
    out = checks.png_target(out, f"invert-{image.stem}.png")
    m = flags.open(model)
    x = m.load_image(image)
    names = [s.strip() for s in layers.split(",") if s.strip()]
    results = invert_layers(m, x, names, steps=steps, tv=tv, seed=seed)
    save_png(inversion_figure(x, results), out)
    for r in results:
        typer.echo(f"{r.layer}: loss {r.losses[0]:.3g} -> {r.losses[-1]:.3g}, "
                   f"correlation {float(correlation(r.images, x)[0]):.3f}")  # fmt: skip
    typer.echo(f"wrote {out}")


def register(app: typer.Typer) -> None:
    app.command()(invert)
