"""``convlens serve``: the web explainer for any model, served on this machine."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from convlens.cli.common import ModelFlags, with_model_flags
from convlens.errors import ConvlensError
from convlens.model import Model

WEB_EXTRA_HINT = "pip install 'convlens[web]'"

HostOpt = Annotated[
    str,
    typer.Option(
        "--host",
        help="Address to bind. The default serves this machine only; another address "
        "exposes the explainer to the network (a warning is printed).",
    ),
]
PortOpt = Annotated[int, typer.Option("--port", "-p", help="Port to listen on.")]
NoBrowserOpt = Annotated[bool, typer.Option("--no-browser", help="Do not open a browser tab.")]


def web_available() -> bool:
    """Whether the ``web`` extra (FastAPI, uvicorn, python-multipart) is installed."""
    try:
        import fastapi  # noqa: F401
        import python_multipart  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        return False
    return True


def run_server(
    model: Model,
    *,
    images: Path | None = None,
    scan: Path | None = None,
    scan_data: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8765,
    open_browser: bool = True,
    max_upload_mb: float | None = None,
) -> None:
    """Build the app for ``model`` and serve it until Ctrl+C."""
    if not web_available():
        raise ConvlensError(f"the web explainer needs the web extra: {WEB_EXTRA_HINT}")
    from convlens.web import ServerConfig, create_app, serve

    config_args: dict[str, Any] = {}
    if max_upload_mb is not None:
        if max_upload_mb <= 0:
            raise ConvlensError(f"--max-upload-mb must be positive, got {max_upload_mb}")
        config_args["max_upload_bytes"] = int(max_upload_mb * 1024 * 1024)
    if not 0 < port < 65536:
        raise ConvlensError(f"--port must be 1..65535, got {port}")
    app = create_app(
        model,
        images_dir=images,
        scan_dir=scan,
        scan_data=scan_data,
        config=ServerConfig(**config_args),
    )
    serve(app, host, port, open_browser=open_browser)


@with_model_flags
def serve_command(
    model: Annotated[
        str,
        typer.Option(
            "--model",
            "-m",
            help="'demo' (default), a zoo name (tiny-vgg[:args]), a checkpoint folder or a file.",
        ),
    ] = "demo",
    images: Annotated[
        Path | None,
        typer.Option("--images", help="A folder whose images are added to the sample picker."),
    ] = None,
    scan: Annotated[
        Path | None,
        typer.Option("--scan", help="A scan folder (`convlens scan`) for top dataset patches."),
    ] = None,
    scan_data: Annotated[
        str | None,
        typer.Option(
            "--scan-data",
            help="The scan's data set (a name or a class-folder root) when it cannot be "
            "reopened from the scan's own record (image folders).",
        ),
    ] = None,
    host: HostOpt = "127.0.0.1",
    port: PortOpt = 8765,
    no_browser: NoBrowserOpt = False,
    max_upload_mb: Annotated[
        float | None, typer.Option("--max-upload-mb", help="Largest upload accepted (MiB).")
    ] = None,
    *,
    flags: ModelFlags,
) -> None:
    """Open the web explainer: every layer of MODEL on your images, explanations, units."""
    run_server(
        flags.open(model),
        images=images,
        scan=scan,
        scan_data=scan_data,
        host=host,
        port=port,
        open_browser=not no_browser,
        max_upload_mb=max_upload_mb,
    )


def register(app: typer.Typer) -> None:
    app.command("serve")(serve_command)
