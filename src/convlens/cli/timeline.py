"""``convlens timeline``: a training run's timeline (``train --watch``) as an animation and a
contact sheet."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from convlens.cli import checks
from convlens.train.timeline import FORMATS, write_timeline


def timeline(
    run: Annotated[str, typer.Argument(help="A run folder written by `convlens train --watch`.")],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Folder for the animation and the contact sheet.")
    ] = Path("timeline"),
    max_frames: Annotated[
        int, typer.Option(help="At most this many frames (spread evenly over the run).")
    ] = 60,
    fmt: Annotated[str, typer.Option("--format", help=f"One of {', '.join(FORMATS)}.")] = "gif",
    ms: Annotated[int, typer.Option("--ms", help="Milliseconds per frame.")] = 250,
    rows: Annotated[int, typer.Option(help="Frames (rows) on the contact sheet.")] = 8,
) -> None:
    """Write the run's snapshots as an animated figure (filters going from noise to edges,
    the probe's activations and Grad-CAM, dead units, the loss) and a still contact sheet."""
    checks.in_range("--max-frames", max_frames, 2, 1000)
    checks.in_range("--ms", ms, 10, 10_000)
    checks.in_range("--rows", rows, 1, 64)
    anim, sheet, n = write_timeline(
        run, out, max_frames=max_frames, fmt=fmt, ms_per_frame=ms, sheet_rows=rows
    )
    typer.echo(f"wrote {anim} ({n} frames) and {sheet}")


def register(app: typer.Typer) -> None:
    app.command()(timeline)
