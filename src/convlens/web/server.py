"""The FastAPI application: the JSON API, the static front end, and running it with uvicorn.

>>> from convlens.model.zoo import build
>>> app = create_app(build("tiny-vgg"))
>>> sorted(r.path for r in app.routes if r.path.startswith("/api/v1/m"))
['/api/v1/model']
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import webbrowser
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from convlens import __version__
from convlens.errors import ConvlensError, NotFoundError
from convlens.model.core import Model
from convlens.web.api import PREFIX, build_router
from convlens.web.errors import ApiError
from convlens.web.state import ServerConfig, ServerState
from convlens.web.uploads import MULTIPART_OVERHEAD

STATIC = Path(__file__).resolve().parent / "static"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765

log = logging.getLogger("convlens.web")

_NO_FRONT_END = """<!doctype html><meta charset="utf-8"><title>convlens</title>
<p>The convlens front end is not installed in this build. The API is at
<a href="/api/v1/model">/api/v1/model</a> (<a href="/api/v1/openapi.json">OpenAPI</a>).</p>"""


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _install_error_handlers(app: FastAPI) -> None:
    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return _error(exc.status, exc.message)

    async def user_error(request: Request, exc: Exception) -> Response:
        status = 404 if isinstance(exc, NotFoundError) else 400
        return _error(status, str(exc))

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        return _error(exc.status_code, str(exc.detail))

    async def validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}"
            for e in exc.errors()
        )
        return _error(422, f"invalid request: {problems}")

    async def bug(request: Request, exc: Exception) -> Response:
        log.error("internal error on %s", request.url.path, exc_info=exc)
        return _error(500, f"internal error (a bug in convlens): {type(exc).__name__}: {exc}")

    app.add_exception_handler(Exception, bug)
    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(ConvlensError, user_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)


class BodyLimit:
    """Refuse (413) any request whose declared body is larger than ``limit`` bytes.

    Uploads are also counted as they stream in (see ``uploads.read_body``); this catches the
    JSON routes too, which FastAPI would otherwise read whole into memory.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for key, value in scope.get("headers", []):
                if key == b"content-length" and value.isdigit() and int(value) > self.limit:
                    message = f"request body is {int(value):,} bytes; the limit is {self.limit:,}"
                    await _error(413, message)(scope, receive, send)
                    return
        await self.app(scope, receive, send)


def create_app(
    model: Model,
    *,
    images_dir: str | Path | None = None,
    scan_dir: str | Path | None = None,
    scan_data: str | None = None,
    config: ServerConfig | None = None,
    static_dir: Path = STATIC,
) -> FastAPI:
    """The web explainer for ``model``: API under ``/api/v1``, front end at ``/``.

    ``images_dir`` adds its image files to the sample picker; ``scan_dir`` is a scan of this
    model (``convlens.analysis``) whose top patches ``/units`` shows, cut from its data set
    (``scan_data`` names the data set when the scan's record is not enough, e.g. a folder).
    """
    images = _given_folder(images_dir, "--images")
    scan = _given_folder(scan_dir, "--scan")
    state = ServerState(model, images_dir=images, scan_dir=scan, scan_data=scan_data, config=config)
    app = FastAPI(
        title="convlens",
        version=__version__,
        description="The trace of a CNN and an image, explanations and units (docs/web-api.md).",
        openapi_url=f"{PREFIX}/openapi.json",
        docs_url=None,  # Swagger UI and ReDoc load their assets from a CDN; the JSON is enough
        redoc_url=None,
    )
    app.state.convlens = state
    app.add_middleware(BodyLimit, limit=state.config.max_upload_bytes + MULTIPART_OVERHEAD)
    _install_error_handlers(app)
    app.include_router(build_router(state))
    index = static_dir / "index.html"

    @app.get("/", include_in_schema=False)
    def root() -> Response:
        if index.is_file():
            return FileResponse(index, media_type="text/html")
        return HTMLResponse(_NO_FRONT_END)

    # The front end's own files; the root mount serves index.html's relative URLs (js/, css/).
    app.mount("/static", StaticFiles(directory=static_dir, check_dir=False), name="static")
    app.mount("/", StaticFiles(directory=static_dir, check_dir=False), name="front-end")
    return app


def _given_folder(path: str | Path | None, option: str) -> Path | None:
    if path is None:
        return None
    p = Path(path)
    if not p.is_dir():
        raise ConvlensError(f"{option} {str(p)!r} is not a folder")
    return p


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def browser_url(host: str, port: int) -> str:
    """The URL to open for a server bound to ``host`` (a wildcard address means this machine)."""
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    return f"http://[{shown}]:{port}/" if ":" in shown else f"http://{shown}:{port}/"


def serve(
    app: FastAPI,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    *,
    open_browser: bool = False,
    log_level: str = "warning",
) -> None:
    """Run ``app`` with uvicorn until interrupted; warn when it is reachable from other hosts."""
    import uvicorn

    if not is_loopback(host):
        log.warning(
            "serving on %s: anyone who can reach this machine on port %d can use the explainer "
            "and upload images to it",
            host,
            port,
        )
        print(
            f"warning: binding {host}:{port} exposes the explainer beyond this machine "
            "(the default is 127.0.0.1)"
        )
    url = browser_url(host, port)
    print(f"convlens explainer at {url}  (Ctrl+C to stop)", flush=True)
    if open_browser:
        threading.Timer(1.0, webbrowser.open, args=(url,)).start()
    uvicorn.run(app, host=host, port=port, log_level=log_level)


def app_state(app: FastAPI) -> Any:
    return app.state.convlens
