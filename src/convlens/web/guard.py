"""The gate every request passes before any route: Host, Origin, token, content type, body size.

A server on ``127.0.0.1`` is still reachable from any web page the user visits: the page can
send simple cross-site requests to it, and by DNS rebinding (a name of the attacker's that first
resolves to the attacker, then to ``127.0.0.1``) even read the answers. So:

- the ``Host`` header must name this server: ``localhost``, ``127.0.0.1``, ``[::1]`` or the
  address it is bound to (a rebinding page's requests carry the attacker's name);
- an ``Origin`` header, which browsers send with cross-site requests, must name an accepted
  host too (a cross-site ``multipart/form-data`` POST needs no CORS preflight);
- bound beyond loopback, every request needs the server's token (``X-Convlens-Token`` or
  ``Authorization: Bearer``, or ``?token=`` once, which then sets a cookie for the page);
- a body must have the route's content type (``multipart/form-data`` for uploads,
  ``application/json`` elsewhere) and is counted as it streams in, chunked or not: ``413`` as
  soon as it passes the route's limit;
- ``HEAD`` is answered like ``GET`` without the body.
"""

from __future__ import annotations

import ipaddress
import json
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from urllib.parse import parse_qs, urlsplit

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARDS = frozenset({"0.0.0.0", "::", ""})
TOKEN_HEADER = b"x-convlens-token"
TOKEN_COOKIE = "convlens_token"
TOKEN_QUERY = "token"
BODY_METHODS = frozenset({"POST"})  # the only method of the API's routes that takes a body


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) reaches this machine only."""
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def new_token() -> str:
    """A fresh access token (32 random bytes, URL-safe)."""
    return secrets.token_urlsafe(32)


@dataclass
class Access:
    """Who may talk to the server: the accepted ``Host`` names and the token, if any.

    ``hosts`` ``None`` accepts any ``Host`` (a wildcard bind, where the machine's own names
    are not known; the token is then required, and it alone keeps other sites out).
    """

    hosts: frozenset[str] | None = LOOPBACK_NAMES
    token: str | None = None

    @classmethod
    def for_bind(cls, bound: str, token: str | None = None, extra: Iterable[str] = ()) -> Access:
        """The access rules for a server bound to ``bound``; a token is made when it is
        reachable beyond this machine and none is given."""
        host = bound.strip("[]").lower()
        if not is_loopback(host) and token is None:
            token = new_token()
        names = LOOPBACK_NAMES | {n.strip("[]").lower() for n in extra}
        return cls(None if host in WILDCARDS else names | {host}, token)

    def host_ok(self, host: str) -> bool:
        return self.hosts is None or host in self.hosts

    def describe_hosts(self) -> str:
        names = sorted(self.hosts or ())
        return ", ".join(f"[{n}]" if ":" in n else n for n in names)


@dataclass(frozen=True)
class BodyRule:
    """What a route's request body may be."""

    content_type: str
    limit: int
    hint: str = ""


@dataclass
class Rules:
    """Per-path body rules; paths not listed take ``default``."""

    default: BodyRule
    paths: dict[str, BodyRule] = field(default_factory=dict)

    def for_path(self, path: str) -> BodyRule:
        return self.paths.get(path.rstrip("/") or "/", self.default)


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` when a streamed body passes its limit (answered 413)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body is larger than this route's limit of {limit:,} bytes")


def host_of(value: str) -> str | None:
    """The host part of a ``Host`` header (``[::1]:8765`` -> ``::1``), lower-cased."""
    value = value.strip().lower()
    if not value:
        return None
    try:
        parts = urlsplit(f"//{value}")
        return (parts.hostname or "").strip("[]") or None
    except ValueError:
        return None


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return bytes(value).decode("latin-1")
    return None


def _media_type(value: str | None) -> str:
    return (value or "").split(";", 1)[0].strip().lower()


async def _answer(send: Send, status: int, message: str, head: bool = False) -> None:
    body = json.dumps({"error": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": b"" if head else body})


class Guard:
    """ASGI middleware applying :class:`Access` and :class:`Rules` (see the module text)."""

    def __init__(self, app: ASGIApp, access: Access, rules: Rules) -> None:
        self.app = app
        self.access = access
        self.rules = rules

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        head = scope["method"] == "HEAD"
        refusal = self.refusal(scope)
        if refusal is not None:
            await _answer(send, *refusal, head=head)
            return
        send = self._with_cookie(scope, send)
        if head:  # answered as GET; the body is dropped on the way out
            scope = dict(scope, method="GET")
            send = _without_body(send)
        rule = self.rules.for_path(scope["path"])
        if scope["method"] in BODY_METHODS:
            problem = self.body_problem(scope, rule)
            if problem is not None:
                await _answer(send, *problem)
                return
        receive = _counted(receive, rule.limit)  # any method: whatever reads a body is bounded
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except BodyTooLarge as e:  # raised outside the routes' own error handling
            if not started:
                await _answer(send, 413, str(e.detail))

    def refusal(self, scope: Scope) -> tuple[int, str] | None:
        """``(status, message)`` when the request may not reach the app at all."""
        raw_host = _header(scope, b"host")
        host = host_of(raw_host or "")
        if host is None:
            return 400, "the request has no Host header"
        if not self.access.host_ok(host):
            return 403, (
                f"Host {raw_host!r} is not this server's address (accepted: "
                f"{self.access.describe_hosts()}); a page on another site may be trying to "
                "reach the explainer"
            )
        origin = _header(scope, b"origin")
        if origin is not None:  # "null" too: a sandboxed frame or a file on another site
            try:
                origin_host = (urlsplit(origin).hostname or "").strip("[]")
            except ValueError:
                origin_host = ""
            wildcard = self.access.hosts is None  # any Host: the page must be this very server
            ok = bool(origin_host) and (
                origin_host == host if wildcard else self.access.host_ok(origin_host)
            )
            if not ok:
                return 403, f"cross-site request from {origin!r} refused"
        if self.access.token is not None and not self.token_ok(scope):
            return 401, (
                "this server needs its access token: open the URL printed when it started "
                "(…/?token=…), or send the header X-Convlens-Token"
            )
        return None

    def token_ok(self, scope: Scope) -> bool:
        expected = self.access.token
        assert expected is not None
        for given in _tokens(scope):
            if secrets.compare_digest(given.encode(), expected.encode()):
                return True
        return False

    def body_problem(self, scope: Scope, rule: BodyRule) -> tuple[int, str] | None:
        media = _media_type(_header(scope, b"content-type"))
        if media != rule.content_type:
            got = repr(media) if media else "none"
            return 415, (
                f"{scope['method']} {scope['path']} takes a {rule.content_type} body"
                f"{rule.hint}; the Content-Type sent was {got}"
            )
        declared = _header(scope, b"content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > rule.limit:
            return 413, f"request body is {int(declared):,} bytes; the limit is {rule.limit:,}"
        return None

    def _with_cookie(self, scope: Scope, send: Send) -> Send:
        """Set the token cookie on the answer to a request that brought ``?token=``."""
        token = self.access.token
        if token is None or not _query_tokens(scope):
            return send
        cookie = f"{TOKEN_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict".encode()

        async def wrapped(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", []), (b"set-cookie", cookie)]
                message = dict(message, headers=headers)
            await send(message)

        return wrapped


def _query_tokens(scope: Scope) -> list[str]:
    query = bytes(scope.get("query_string", b"")).decode("latin-1")
    return parse_qs(query).get(TOKEN_QUERY, [])


def _tokens(scope: Scope) -> list[str]:
    found = list(_query_tokens(scope))
    for key, value in scope.get("headers", []):
        text = bytes(value).decode("latin-1")
        if key == TOKEN_HEADER:
            found.append(text.strip())
        elif key == b"authorization" and text[:7].lower() == "bearer ":
            found.append(text[7:].strip())
        elif key == b"cookie":
            jar: SimpleCookie = SimpleCookie()
            try:
                jar.load(text)
            except Exception:  # a malformed cookie header carries no token
                continue
            if TOKEN_COOKIE in jar:
                found.append(jar[TOKEN_COOKIE].value)
    return found


def _counted(receive: Receive, limit: int) -> Receive:
    """``receive`` that raises :class:`BodyTooLarge` once more than ``limit`` bytes came."""
    seen = 0

    async def counted() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise BodyTooLarge(limit)
        return message

    return counted


def _without_body(send: Send) -> Send:
    async def head_send(message: Message) -> None:
        if message["type"] == "http.response.body":
            if message.get("more_body", False):
                return
            message = {"type": "http.response.body", "body": b""}
        await send(message)

    return head_send
