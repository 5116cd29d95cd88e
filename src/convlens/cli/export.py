"""``convlens export --model M --images A.png B.png --out explainer.html``: the explainer as one
self-contained HTML file (no server, no network) for the chosen images."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from convlens.cli.checks import in_range
from convlens.cli.common import ModelArg, ModelFlags, with_model_flags
from convlens.errors import ConvlensError

if TYPE_CHECKING:
    from convlens.offline.export import ExportReport

MAX_CAP = 4096  # the largest --max-channels / --max-size (as the server's trace)


@with_model_flags
def export_command(
    more_images: Annotated[
        list[Path] | None,
        typer.Argument(
            metavar="IMAGE...",
            help="More image files (so that `--images A.png B.png` reads as one list).",
            show_default=False,
        ),
    ] = None,
    model: ModelArg = "demo",
    images: Annotated[
        list[Path] | None,
        typer.Option(
            "--images",
            "-i",
            help="Images to precompute (the model's own samples when none are given).",
            show_default=False,
        ),
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="The HTML file to write.")] = Path(
        "explainer.html"
    ),
    methods: Annotated[
        str | None,
        typer.Option(
            "--methods",
            help="Comma-separated explanation methods to precompute (default: all).",
        ),
    ] = None,
    max_channels: Annotated[
        int | None,
        typer.Option("--max-channels", help="Channels kept per layer (default: the server's)."),
    ] = None,
    max_size: Annotated[
        int | None,
        typer.Option("--max-size", help="Largest map side kept (default: the server's)."),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only the result.")] = False,
    *,
    flags: ModelFlags,
) -> None:
    """Write the explainer for MODEL and a few images as one HTML file that opens offline:
    overview, every detail view, the playground and precomputed explanations."""
    from convlens.offline.export import check_images, export_explainer

    for name, value in (("--max-channels", max_channels), ("--max-size", max_size)):
        if value is not None:
            in_range(name, value, 1, MAX_CAP)
    chosen = [*(images or []), *(more_images or [])]
    check_images(chosen)  # an unreadable image is named before the (slow) model load
    method_list = parse_methods(methods)
    m = flags.open(model)
    report = export_explainer(
        m,
        chosen,
        out,
        methods=method_list,
        max_channels=max_channels,
        max_size=max_size,
        progress=None if quiet else (lambda msg: typer.echo(f"  {msg}", err=True)),
    )
    print_report(report)


def parse_methods(methods: str | None) -> list[str] | None:
    """--methods as a list (None: all); a list that names nothing is refused."""
    if methods is None:
        return None
    names = [m.strip() for m in methods.split(",") if m.strip()]
    if not names:
        raise ConvlensError("--methods names no method; give e.g. grad-cam,saliency")
    return names


def print_report(report: ExportReport) -> None:
    """The export's notes on stderr, then its one-line summary."""
    for line in report.notes:
        typer.echo(f"note: {line}", err=True)
    for line in report.refused:
        typer.echo(f"note: not precomputed: {line}", err=True)
    if report.skipped_weights:
        typer.echo(
            "note: weights too large to embed (their detail views will say so): "
            + ", ".join(report.skipped_weights),
            err=True,
        )
    typer.echo(report.summary())


def register(app: typer.Typer) -> None:
    app.command("export")(export_command)
