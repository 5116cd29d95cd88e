"""The Typer application that every command module registers on."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="convlens",
    help="See what a convolutional network does: layers, explanations, features, data sets.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """See what a convolutional network does: layers, explanations, features, data sets."""
