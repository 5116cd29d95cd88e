"""The FastAPI application: the JSON API, the static front end, and running it with uvicorn.

>>> from convlens.model.zoo import build
>>> app = create_app(build("tiny-vgg"))
>>> sorted(p for p in app.openapi()["paths"] if p.startswith("/api/v1/m"))
['/api/v1/model']
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import re
import socket
import threading
import webbrowser
from collections.abc import AsyncIterator
from html import escape
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Message, Scope

from convlens import __version__
from convlens.errors import ConvlensError, NotFoundError
from convlens.model.core import Model
from convlens.trace import params_schema
from convlens.web.api import PREFIX, build_router
from convlens.web.errors import ApiError
from convlens.web.guard import (
    TOKEN_HEADER,
    TOKEN_QUERY,
    Access,
    BodyRule,
    Guard,
    Rules,
    is_loopback,
)
from convlens.web.state import ServerConfig, ServerState
from convlens.web.timeline import timeline_router
from convlens.web.traces import first_image, overview_trace_query
from convlens.web.uploads import MULTIPART_OVERHEAD

__all__ = ["create_app", "is_loopback", "serve"]

STATIC = Path(__file__).resolve().parent / "static"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
LISTEN_BACKLOG = 2048  # uvicorn's default

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


def create_app(
    model: Model,
    *,
    images_dir: str | Path | None = None,
    scan_dir: str | Path | None = None,
    scan_data: str | None = None,
    config: ServerConfig | None = None,
    static_dir: Path = STATIC,
    access: Access | None = None,
    run_dir: str | Path | None = None,
) -> FastAPI:
    """The web explainer for ``model``: API under ``/api/v1``, front end at ``/``.

    ``images_dir`` adds its image files to the sample picker; ``scan_dir`` is a scan of this
    model (``convlens.analysis``) whose top patches ``/units`` shows, cut from its data set
    (``scan_data`` names the data set when the scan's record is not enough, e.g. a folder).
    ``access`` says which ``Host`` names and token the server accepts (default: the loopback
    names, no token; :func:`serve` sets it for the address it binds). ``run_dir``, the
    model's training run folder, adds its ``train --watch`` timeline (``/timeline``).
    """
    images = _given_folder(images_dir, "--images")
    scan = _given_folder(scan_dir, "--scan")
    state = ServerState(model, images_dir=images, scan_dir=scan, scan_data=scan_data, config=config)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await prime(app)
        yield
        state.shutdown()

    app = FastAPI(
        title="convlens",
        version=__version__,
        description="The trace of a CNN and an image, explanations and units (docs/web-api.md).",
        openapi_url=f"{PREFIX}/openapi.json",
        docs_url=None,  # Swagger UI and ReDoc load their assets from a CDN; the JSON is enough
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.convlens = state
    app.state.access = access = access or Access()
    cfg = state.config
    rules = Rules(
        default=BodyRule("application/json", cfg.max_json_bytes),
        paths={
            f"{PREFIX}/images": BodyRule(
                "multipart/form-data",
                cfg.max_upload_bytes + MULTIPART_OVERHEAD,
                " (the image in the form field 'file')",
            )
        },
    )
    app.add_middleware(Guard, access=access, rules=rules)
    _install_error_handlers(app)
    app.include_router(timeline_router(run_dir))  # before the API's catch-all 404 route
    app.include_router(build_router(state))
    _add_params_schema(app)
    index = static_dir / "index.html"

    @app.get("/", include_in_schema=False)
    def root(request: Request) -> Response:
        if not index.is_file():
            return HTMLResponse(_NO_FRONT_END)
        html = index.read_text(encoding="utf-8")
        return HTMLResponse(with_trace_preload(html, state, request.query_params.get("trace")))

    # The front end's own files; the root mount serves index.html's relative URLs (js/, css/).
    app.mount("/static", StaticFiles(directory=static_dir, check_dir=False), name="static")
    app.mount("/", StaticFiles(directory=static_dir, check_dir=False), name="front-end")
    return app


# Asked of the app, in process, as it starts: the first request a FastAPI app answers builds
# every route's validators (pydantic adapters for its parameters and responses) and imports the
# thread-pool backend that static files and plain routes run on, 0.1 s on a 2-core machine.
# Paid at start-up, it is not paid during the first visitor's page load.
PRIME_PATHS = ("/", "/static/css/style.css")


async def prime(app: FastAPI) -> None:
    """GET each of :data:`PRIME_PATHS` from ``app`` as a loopback client would (the guard
    passes it as it passes any such request, with the token when the server has one) and drop
    the answers; a failure is logged, never raised."""
    access: Access = app.state.access
    headers = [(b"host", b"127.0.0.1")]
    if access.token is not None:
        headers.append((TOKEN_HEADER, access.token.encode()))

    async def receive() -> Message:  # an empty body (GET), then the client has gone
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def drop(_: Message) -> None:
        return None

    for path in PRIME_PATHS:
        messages: list[Message] = [{"type": "http.request", "body": b"", "more_body": False}]
        scope: Scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
            "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
            "root_path": "", "headers": headers, "client": ("127.0.0.1", 0),
            "server": ("127.0.0.1", 0),
        }  # fmt: skip
        try:
            await app(scope, receive, drop)
        except Exception:  # a server that cannot answer it will say so to the visitor
            log.debug("priming %s failed", path, exc_info=True)


_MODEL_PRELOAD = re.compile(r"""<link\b[^>]*\bhref=["']/api/v1/model["'][^>]*>""")


def with_trace_preload(html: str, state: ServerState, asked: str | None = None) -> str:
    """``index.html`` with a preload of the page's first trace (the first sample at the
    overview's caps; ``asked``: the page URL's ``?trace=``) beside the model's, so the browser
    fetches it while the modules and ``GET /model`` load instead of after them."""
    image = first_image(state)
    if image is None:
        return html
    url = f"{PREFIX}/trace?{overview_trace_query(state.model, image, asked)}"
    link = f'<link rel="preload" href="{escape(url)}" as="fetch" crossorigin="anonymous">'
    found = _MODEL_PRELOAD.search(html)
    if found is None:
        return html.replace("</head>", f"  {link}\n</head>", 1)
    return f"{html[: found.end()]}\n  {link}{html[found.end() :]}"


def _given_folder(path: str | Path | None, option: str) -> Path | None:
    if path is None:
        return None
    p = Path(path)
    if not p.is_dir():
        raise ConvlensError(f"{option} {str(p)!r} is not a folder")
    return p


def _add_params_schema(app: FastAPI) -> None:
    """Show each method's parameter bounds in the OpenAPI document (``ExplainRequest.params``
    becomes one object schema per method, numbers with ``minimum``/``maximum``)."""
    plain = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = plain()
            props = doc["components"]["schemas"]["ExplainRequest"]["properties"]
            props["params"] = {**props["params"], **params_schema()}
            props["params"].pop("additionalProperties", None)
            props["params"].pop("type", None) if "anyOf" in props["params"] else None
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def browser_url(host: str, port: int) -> str:
    """The URL to open for a server bound to ``host`` (a wildcard address means this machine)."""
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    return f"http://[{shown}]:{port}/" if ":" in shown else f"http://{shown}:{port}/"


def header_timeout_protocol(seconds: float) -> type[asyncio.Protocol]:
    """uvicorn's h11 protocol, closing a connection that has not sent a whole request head
    within ``seconds`` of connecting (or of its previous answer).

    uvicorn times out idle keep-alive connections only after a first answer, and any byte
    resets that timer: without this, clients sending a header line now and then hold
    connections (and ``limit_concurrency`` slots) forever.
    """
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderTimeoutH11(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None

        def _arm(self) -> None:
            self._disarm()
            self._head_timer = self.loop.call_later(seconds, self._head_expired)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_expired(self) -> None:
            self._head_timer = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.close()  # still waiting for the request head

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
                self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return HeaderTimeoutH11


def uvicorn_options(config: ServerConfig) -> dict[str, Any]:
    """uvicorn settings that keep slow or numerous clients from holding the server."""
    return {
        "http": header_timeout_protocol(config.header_timeout),
        "timeout_keep_alive": config.keep_alive,
        "h11_max_incomplete_event_size": 16 * 1024,  # a request head over 16 KiB: 400
        "limit_concurrency": config.max_connections,
    }


def configure_access(app: FastAPI, host: str, token: str | None = None) -> Access:
    """Accept the ``Host`` names of ``host`` and, beyond loopback, require a token (``token``
    or a new one); returns the rules now in force."""
    rules = Access.for_bind(host, token)
    access: Access = app.state.access
    access.hosts, access.token = rules.hosts, rules.token
    return access


def _bind_error(host: str, port: int, e: OSError) -> ConvlensError:
    """One line for a bind that failed: busy port, unknown host, privileged port."""
    if isinstance(e, socket.gaierror):
        return ConvlensError(f"--host {host!r} is not an address of this machine: {e.strerror}")
    if e.errno == errno.EADDRINUSE:
        return ConvlensError(
            f"port {port} on {host} is already in use; stop the other server or choose "
            "another with --port"
        )
    if e.errno == errno.EACCES:
        return ConvlensError(
            f"no permission to listen on port {port}; ports below 1024 need privileges, "
            "choose one in 1024..65535"
        )
    return ConvlensError(f"cannot listen on {host}:{port}: {e.strerror or e}")


def listen_socket(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` and listening, made the way uvicorn makes its own.

    The server answers on this very socket (:func:`serve`), so the bind *is* the check: no
    other program can take the port between a check and the server's start.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(LISTEN_BACKLOG)
    except OSError as e:
        sock.close()
        raise _bind_error(host, port, e) from None
    return sock


def serve(
    app: FastAPI,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    *,
    open_browser: bool = False,
    log_level: str = "warning",
    token: str | None = None,
    sock: socket.socket | None = None,
    warm: bool = True,
) -> None:
    """Run ``app`` with uvicorn until interrupted, on ``sock`` (bound to ``host:port``; bound
    here when not given, a busy port then being one :class:`ConvlensError` line); beyond
    loopback, require a token (``token``, or one made now and printed in the URL, like a
    notebook server). ``warm``: compute the page's first trace in the background from now
    on, so that the first page load finds it ready or in flight."""
    import uvicorn

    listener = listen_socket(host, port) if sock is None else sock
    access = configure_access(app, host, token)
    if not is_loopback(host):
        log.warning(
            "serving on %s: anyone who can reach this machine on port %d and knows the token "
            "can use the explainer and upload images to it",
            host,
            port,
        )
        print(
            f"warning: binding {host}:{port} exposes the explainer beyond this machine "
            "(the default is 127.0.0.1); requests need the token in the URL below"
        )
    url = browser_url(host, port)
    if access.token is not None:
        url += f"?{TOKEN_QUERY}={access.token}"
    state: ServerState = app.state.convlens
    try:
        if warm:
            state.traces.warm()  # on the trace pool; the lifespan's end stops the pool
        print(f"convlens explainer at {url}  (Ctrl+C to stop)", flush=True)
        if open_browser:
            threading.Timer(1.0, webbrowser.open, args=(url,)).start()
        options = uvicorn_options(state.config)
        config = uvicorn.Config(app, host=host, port=port, log_level=log_level, **options)
        uvicorn.Server(config).run(sockets=[listener])
    finally:
        state.shutdown()  # also when uvicorn never started (its lifespan then never ends)
        if sock is None:
            listener.close()


def app_state(app: FastAPI) -> Any:
    return app.state.convlens
