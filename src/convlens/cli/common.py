"""Options and helpers shared by several commands."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from convlens.model import Model, load_model

ModelArg = Annotated[
    str,
    typer.Option(
        "--model", "-m",
        help="'demo', a zoo name (tiny-vgg[:args]), a checkpoint folder or a model file.",
    ),
]  # fmt: skip
ArchOpt = Annotated[
    str | None,
    typer.Option("--arch", help="Architecture for a weights-only file: ZOO_NAME[:args]."),
]
FormatOpt = Annotated[
    str | None, typer.Option("--format", help="Force a model format instead of detecting it.")
]
TrustOpt = Annotated[
    bool,
    typer.Option("--trust-pickle", help="Allow unpickling (running code from) a model file."),
]


def open_model(
    source: str,
    arch: str | None = None,
    fmt: str | None = None,
    trust_pickle: bool = False,
    **extra: Any,
) -> Model:
    """Load the model named on the command line (errors are ConvlensError, shown cleanly)."""
    options: dict[str, Any] = {"trust_pickle": trust_pickle, **extra}
    if arch:
        options["arch"] = arch
    return load_model(source, format=fmt, **options)
