"""``convlens serve``: the web explainer for any model, served on this machine."""

from __future__ import annotations

import contextlib
import socket
from pathlib import Path
from typing import Annotated, Any

import typer

from convlens.cli.checks import in_range
from convlens.cli.common import ModelArg, ModelFlags, with_model_flags
from convlens.errors import ConvlensError
from convlens.model import Model
from convlens.model.checkpoint import is_checkpoint

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


MAX_UPLOAD_MB = 4096.0


def check_server_numbers(port: int, max_upload_mb: float | None = None) -> None:
    """Refuse a bad port or upload limit."""
    in_range("--port", port, 1, 65535)
    if max_upload_mb is not None:
        in_range("--max-upload-mb", max_upload_mb, 0, MAX_UPLOAD_MB, lo_open=True)


def check_server_args(host: str, port: int, max_upload_mb: float | None = None) -> None:
    """Refuse a bad port or upload limit, and a port that cannot be bound, before any work."""
    check_server_numbers(port, max_upload_mb)
    check_port_free(host, port)


def listen(host: str, port: int) -> socket.socket:
    """The listening socket the explainer will answer on (a busy port is one line)."""
    if not web_available():
        raise ConvlensError(f"the web explainer needs the web extra: {WEB_EXTRA_HINT}")
    from convlens.web.server import listen_socket

    return listen_socket(host, port)


def check_port_free(host: str, port: int) -> None:
    """Bind ``host:port`` and let it go: a busy port, an unknown host or a privileged port is
    one clear line before slow work. ``convlens serve`` holds its socket from this point on
    instead (:func:`listen`), so nothing can take the port before the server answers."""
    listen(host, port).close()


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
    run_dir: str | None = None,
    sock: socket.socket | None = None,
) -> None:
    """Build the app for ``model`` and serve it until Ctrl+C on ``sock`` (bound here, before the
    app is built, when not given); ``run_dir``: its training run folder, whose
    ``train --watch`` timeline the explainer then plays back."""
    check_server_numbers(port, max_upload_mb)
    with contextlib.ExitStack() as stack:
        listener = sock if sock is not None else stack.enter_context(listen(host, port))
        from convlens.web import ServerConfig, create_app, serve

        config_args: dict[str, Any] = {}
        if max_upload_mb is not None:
            config_args["max_upload_bytes"] = int(max_upload_mb * 1024 * 1024)
        app = create_app(
            model,
            images_dir=images,
            scan_dir=scan,
            scan_data=scan_data,
            config=ServerConfig(**config_args),
            run_dir=run_dir,
        )
        serve(app, host, port, open_browser=open_browser, sock=listener)


@with_model_flags
def serve_command(
    model: ModelArg = "demo",
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
    check_server_numbers(port, max_upload_mb)
    # Bound before the (slow) model load and held until the server answers on it: a busy port
    # is one line before any work, and no other program can take the port meanwhile.
    with listen(host, port) as sock:
        run_server(
            flags.open(model),
            images=images,
            scan=scan,
            scan_data=scan_data,
            host=host,
            port=port,
            open_browser=not no_browser,
            max_upload_mb=max_upload_mb,
            run_dir=model if is_checkpoint(model) else None,
            sock=sock,
        )


def register(app: typer.Typer) -> None:
    app.command("serve")(serve_command)
