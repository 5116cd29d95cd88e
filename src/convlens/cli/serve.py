"""``convlens serve``: the web explainer for any model, served on this machine."""

from __future__ import annotations

import errno
import socket
from pathlib import Path
from typing import Annotated, Any

import typer

from convlens.cli.checks import in_range
from convlens.cli.common import ModelFlags, with_model_flags
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


def check_server_args(host: str, port: int, max_upload_mb: float | None = None) -> None:
    """Refuse a bad port or upload limit, and a port that cannot be bound, before any work."""
    in_range("--port", port, 1, 65535)
    if max_upload_mb is not None:
        in_range("--max-upload-mb", max_upload_mb, 0, MAX_UPLOAD_MB, lo_open=True)
    check_port_free(host, port)


def check_port_free(host: str, port: int) -> None:
    """Bind ``host:port`` the way uvicorn will, then let it go: a busy port, an unknown host or
    a privileged port is one clear line before the server prints that it is running.

    (Another program may still take the port in the moment between this check and uvicorn's
    own bind; that rare race ends with uvicorn's message.)
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
    except socket.gaierror as e:
        raise ConvlensError(
            f"--host {host!r} is not an address of this machine: {e.strerror}"
        ) from None
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise ConvlensError(
                f"port {port} on {host} is already in use; stop the other server or choose "
                "another with --port"
            ) from None
        if e.errno == errno.EACCES:
            raise ConvlensError(
                f"no permission to listen on port {port}; ports below 1024 need privileges, "
                "choose one in 1024..65535"
            ) from None
        raise ConvlensError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


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
) -> None:
    """Build the app for ``model`` and serve it until Ctrl+C (``run_dir``: its training run
    folder, whose ``train --watch`` timeline the explainer then plays back)."""
    if not web_available():
        raise ConvlensError(f"the web explainer needs the web extra: {WEB_EXTRA_HINT}")
    from convlens.web import ServerConfig, create_app, serve

    check_server_args(host, port, max_upload_mb)  # before building the app (fail early)
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
    # Again just before serving: building the app takes a while, and a port taken meanwhile
    # must still be one line, not the "explainer at ..." line followed by uvicorn's error.
    check_port_free(host, port)
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
    check_server_args(host, port, max_upload_mb)  # before the (slow) model load
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
    )


def register(app: typer.Typer) -> None:
    app.command("serve")(serve_command)
