"""The explainer's API answered in this process, with no socket: the notebook widget and the
export ask the very FastAPI app that ``convlens serve`` runs.

Every document (model, trace, weights, explanation, unit, upload) therefore comes from the same
route code, checks and limits as over HTTP; this module only carries a request into the ASGI
app and its answer back out. The app runs on an event loop of its own in a daemon thread, so a
caller may wait for an answer from any thread, including one that already runs a loop (a
Jupyter kernel's).
"""

from __future__ import annotations

import asyncio
import secrets
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from convlens.errors import ConvlensError
from convlens.model.core import Model, Sample

PREFIX = "/api/v1"  # the API's prefix (convlens.web.api.PREFIX), kept here to import lazily
HOST = b"127.0.0.1"  # a loopback Host: the app's guard accepts it without a token
MAX_PATH = 100_000  # characters of a request path (with its query) carried into the app


@dataclass(frozen=True)
class ApiResponse:
    """One answer of the API: status, content type and body bytes."""

    status: int
    content_type: str
    body: bytes

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def json(self) -> Any:
        import json

        return json.loads(self.body)

    def error(self) -> str:
        """The API's one-line ``error`` (or the status when the body has none)."""
        try:
            message = self.json().get("error")
        except (ValueError, AttributeError):
            message = None
        return str(message) if message else f"HTTP {self.status}"


def with_samples(model: Model, images: Sequence[str | Path], *, keep_own: bool) -> Model:
    """``model`` with ``images`` as its first sample images (its own samples after them when
    ``keep_own``); the network, spec and graph are shared, not copied."""
    import copy

    view = copy.copy(model)  # a shallow copy: same modules and parameters, own attribute dict
    view.samples = [Sample(Path(p)) for p in images] + (list(model.samples) if keep_own else [])
    return view


def create_api_app(model: Model, config: Any = None) -> Any:
    """The web explainer's FastAPI app for ``model`` (the one place this package builds it)."""
    try:
        from convlens.web.server import create_app
    except ImportError as e:
        raise ConvlensError(
            f"the explainer needs the web extra ({e.name or e}): pip install 'convlens[web]'"
        ) from None
    return create_app(model, config=config)


class InProcessApi:
    """Requests to the explainer's API for ``model``, answered in this process.

    >>> from convlens.model.zoo import build
    >>> api = InProcessApi(build("tiny-vgg"))
    >>> api.get("/model").json()["name"]
    'tiny-vgg'
    >>> api.close()
    """

    def __init__(self, model: Model, config: Any = None) -> None:
        self.app = create_api_app(model, config)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="convlens-api", daemon=True
        )
        self._thread.start()

    @property
    def state(self) -> Any:
        """The app's :class:`~convlens.web.state.ServerState` (its model, store, caps)."""
        return self.app.state.convlens

    # ------------------------------------------------------------------ requests

    def submit(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        content_type: str | None = None,
    ) -> Future[ApiResponse]:
        """Send ``method path`` (``path`` under the API prefix, with its query) to the app."""
        if self._loop.is_closed():
            raise ConvlensError("this explainer was closed; show the model again")
        coro = self._call(method.upper(), path, body, content_type)
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def request(
        self, method: str, path: str, body: bytes = b"", content_type: str | None = None
    ) -> ApiResponse:
        return self.submit(method, path, body, content_type).result()

    def get(self, path: str) -> ApiResponse:
        return self.request("GET", path)

    def post_json(self, path: str, doc: Any) -> ApiResponse:
        import json

        return self.request("POST", path, json.dumps(doc).encode(), "application/json")

    def upload(self, data: bytes, filename: str = "image.png", mime: str = "") -> ApiResponse:
        """``POST /images`` with ``data`` as the form's file, as the page's upload sends it."""
        body, content_type = multipart(data, filename, mime or "application/octet-stream")
        return self.request("POST", "/images", body, content_type)

    async def _call(
        self, method: str, path: str, body: bytes, content_type: str | None
    ) -> ApiResponse:
        if not path.startswith("/") or len(path) > MAX_PATH:
            return ApiResponse(400, "application/json", b'{"error":"bad API path"}')
        parts = urlsplit(PREFIX + path)
        headers = [(b"host", HOST), (b"content-length", str(len(body)).encode())]
        if content_type:
            headers.append((b"content-type", content_type.encode("latin-1", "replace")))
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": parts.path,
            "raw_path": parts.path.encode("utf-8", "replace"),
            "query_string": parts.query.encode("utf-8", "replace"),
            "root_path": "",
            "headers": headers,
            "client": ("127.0.0.1", 0),
            "server": ("127.0.0.1", 80),
            "state": {},
        }
        done = asyncio.Event()
        sent = False
        status = 500
        response_type = ""
        chunks: list[bytes] = []

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await done.wait()  # the app listens for a disconnect only after its answer
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            nonlocal status, response_type
            if message["type"] == "http.response.start":
                status = int(message["status"])
                for key, value in message.get("headers", []):
                    if key.lower() == b"content-type":
                        response_type = value.decode("latin-1")
            elif message["type"] == "http.response.body":
                chunks.append(bytes(message.get("body", b"")))
                if not message.get("more_body", False):
                    done.set()

        try:
            await self.app(scope, receive, send)
        finally:
            done.set()
        return ApiResponse(status, response_type, b"".join(chunks))

    # ------------------------------------------------------------------ life

    def close(self) -> None:
        """Stop the app's worker pools and its loop (idempotent)."""
        if self._loop.is_closed():
            return
        self.state.shutdown()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self._loop.close()


def multipart(data: bytes, filename: str, mime: str) -> tuple[bytes, str]:
    """A ``multipart/form-data`` body with ``data`` as the field ``file`` (as browsers send)."""
    boundary = "convlens" + secrets.token_hex(12)
    safe_name = "".join(c for c in filename if c.isprintable() and c not in '"\\\r\n')[:200]
    head = (
        f"--{boundary}\r\n"
        f'Content-Disposition: form-data; name="file"; filename="{safe_name or "image"}"\r\n'
        f"Content-Type: {mime}\r\n\r\n"
    ).encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), (
        f"multipart/form-data; boundary={boundary}"
    )


def on_answer(future: Future[ApiResponse], callback: Callable[[ApiResponse], None]) -> None:
    """Call ``callback`` with the answer once it comes (a failed call: a 500 answer)."""

    def done(f: Future[ApiResponse]) -> None:
        try:
            answer = f.result()
        except Exception as e:  # a bug in the app's plumbing: still answer the page
            message = f"internal error (a bug in convlens): {type(e).__name__}: {e}"
            import json

            answer = ApiResponse(500, "application/json", json.dumps({"error": message}).encode())
        callback(answer)

    future.add_done_callback(done)
