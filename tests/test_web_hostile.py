"""Hostile requests against the web server (issue 11): each finding, sent as described.

Everything runs on loopback with bounded counts and time. Memory is measured where it is the
point: the server runs in its own process and its peak RSS (``VmHWM``, reset through
``/proc/PID/clear_refs`` after a warm-up) is read after the hostile uploads.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import select
import socket
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from convlens.model import Model, build
from convlens.trace import trace_numbers
from convlens.web import ServerConfig, create_app
from convlens.web.guard import LOOPBACK_NAMES, Access
from convlens.web.server import configure_access, uvicorn_options
from web_harness import free_port

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

LOCAL = "http://127.0.0.1"
API = "/api/v1"
ACCEPTED = "accepted: PNG, JPEG, BMP, GIF, WebP"


def encode(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def upload(client: TestClient, data: bytes) -> httpx.Response:
    return client.post(f"{API}/images", files={"file": ("x", data)})


@pytest.fixture(scope="module")
def model() -> Model:
    return build("tiny-vgg:in_channels=3,input_size=32", seed=0).eval()


@pytest.fixture(scope="module")
def client(model: Model) -> Iterator[TestClient]:
    with TestClient(create_app(model), base_url=LOCAL) as c:
        yield c


@pytest.fixture(scope="module")
def sample_id(client: TestClient) -> str:
    r = upload(client, encode(Image.new("RGB", (40, 32), (200, 30, 30))))
    assert r.status_code == 200, r.text
    return str(r.json()["image_id"])


# ----------------------------------------------------------------- images too big to resample


@pytest.fixture(scope="session")
def strips() -> dict[str, bytes]:
    """The issue's uploads, written by Pillow: 1×10⁶ and 1×10⁷ gray strips (a few KB each)."""
    return {
        "1x1e6": encode(Image.new("L", (1, 1_000_000))),
        "1x1e7": encode(Image.new("L", (1, 10_000_000))),
    }


@pytest.fixture(scope="session")
def deep_png() -> bytes:
    """The issue's 6300×6300 16-bit gray PNG of zeros (~300 KB, 79 MB decoded), by Pillow."""
    return encode(Image.new("I;16", (6300, 6300)))


def test_a_strip_is_refused_by_its_aspect_ratio_before_any_resize(
    client: TestClient, strips: dict[str, bytes]
) -> None:
    for name in ("1x1e6", "1x1e7"):
        assert len(strips[name]) < 40_000
        start = time.perf_counter()
        r = upload(client, strips[name])
        assert r.status_code == 413, r.text
        assert "aspect ratio" in r.json()["error"] and "the limit is 50:1" in r.json()["error"]
        assert time.perf_counter() - start < 2.0  # refused from the header


def test_undocumented_formats_are_never_decoded(client: TestClient) -> None:
    img = Image.new("RGB", (16, 16), (10, 200, 10))
    for fmt in ("EPS", "ICO", "PCX", "TGA", "PPM", "TIFF", "SGI", "DDS"):
        r = upload(client, encode(img, fmt))
        assert r.status_code == 415, (fmt, r.text)
        assert ACCEPTED in r.json()["error"]
    for fmt in ("PNG", "JPEG", "BMP", "GIF", "WEBP"):
        assert upload(client, encode(img, fmt)).status_code == 200, fmt


# ----------------------------------------------------------------- content types, Host, token


def test_bodies_only_in_their_routes_content_type(client: TestClient, sample_id: str) -> None:
    body = json.dumps({"image_id": sample_id, "method": "saliency"})
    for content_type in ("text/plain", "application/x-www-form-urlencoded", None):
        headers = {"content-type": content_type} if content_type else {}
        r = client.post(f"{API}/explain", content=body, headers=headers)
        assert r.status_code == 415 and "application/json" in r.json()["error"], r.text
    r = client.post(f"{API}/explain", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    png = encode(Image.new("L", (8, 8)))
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "image/png"):
        r = client.post(f"{API}/images", content=png, headers={"content-type": content_type})
        assert r.status_code == 415 and "multipart/form-data" in r.json()["error"], r.text


@pytest.mark.parametrize(
    "host", ["attacker.example", "attacker.example:8765", "127.0.0.1.nip.io", "10.0.0.8"]
)
def test_host_header_must_name_this_server(client: TestClient, host: str) -> None:
    """A DNS-rebinding page's requests carry the attacker's host name: refused."""
    r = client.get(f"{API}/model", headers={"host": host})
    assert r.status_code == 403, r.text
    assert "not this server's address" in r.json()["error"]


@pytest.mark.parametrize("host", ["127.0.0.1:8765", "localhost:8765", "[::1]:8765", "LOCALHOST"])
def test_loopback_hosts_are_accepted(client: TestClient, host: str) -> None:
    assert client.get(f"{API}/model", headers={"host": host}).status_code == 200


def test_cross_site_origin_is_refused(client: TestClient, sample_id: str) -> None:
    body = {"image_id": sample_id, "method": "saliency"}
    r = client.post(f"{API}/explain", json=body, headers={"origin": "https://attacker.example"})
    assert r.status_code == 403 and "cross-site" in r.json()["error"]
    r = (
        upload(client, b"x")
        if False
        else client.post(
            f"{API}/images",
            files={"file": ("x", encode(Image.new("L", (8, 8))))},
            headers={"origin": "https://attacker.example"},
        )
    )
    assert r.status_code == 403
    for origin in ("null", "http://[::1", "file://"):  # sandboxed frames, garbage
        r = client.post(f"{API}/explain", json=body, headers={"origin": origin})
        assert r.status_code == 403, origin
    ok = client.post(f"{API}/explain", json=body, headers={"origin": "http://127.0.0.1:8765"})
    assert ok.status_code == 200, ok.text


def test_bound_beyond_loopback_requires_the_token(model: Model) -> None:
    generated = Access.for_bind("0.0.0.0")
    assert generated.token is not None and len(generated.token) >= 40 and generated.hosts is None
    assert Access.for_bind("127.0.0.1").token is None
    named = Access.for_bind("192.168.1.5")
    assert named.token is not None and named.hosts == LOOPBACK_NAMES | {"192.168.1.5"}

    app = create_app(model, access=Access.for_bind("0.0.0.0", token="s3cret-token"))
    with TestClient(app, base_url="http://192.168.1.5:8765") as c:
        r = c.get(f"{API}/model")
        assert r.status_code == 401 and "token" in r.json()["error"]
        assert c.get("/").status_code == 401  # the page too
        assert c.get(f"{API}/model", headers={"x-convlens-token": "wrong"}).status_code == 401
        assert (
            c.get(f"{API}/model", headers={"x-convlens-token": "s3cret-token"}).status_code == 200
        )
        bearer = {"authorization": "Bearer s3cret-token"}
        assert c.get(f"{API}/model", headers=bearer).status_code == 200
        r = c.get("/?token=s3cret-token")  # the printed URL: sets the cookie for the page
        assert r.status_code == 200
        cookie = r.headers["set-cookie"]
        assert "convlens_token=s3cret-token" in cookie
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        assert c.get(f"{API}/model").status_code == 200  # the cookie alone now
        # a wildcard bind accepts any Host, but a page from elsewhere is still refused
        r = c.get(f"{API}/model", headers={"origin": "http://attacker.example"})
        assert r.status_code == 403


def test_serve_prints_the_token_and_configures_uvicorn(
    model: Model, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import uvicorn

    import convlens.web.server as server
    from convlens.web.server import serve

    runs: list[uvicorn.Config] = []
    monkeypatch.setattr(server, "listen_socket", lambda host, port: socket.socket())
    monkeypatch.setattr(uvicorn.Config, "configure_logging", lambda self: None)
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets: runs.append(self.config))
    app = create_app(model)
    serve(app, "0.0.0.0", 9003)
    out = capsys.readouterr().out
    token = app.state.access.token
    assert token and f"http://127.0.0.1:9003/?token={token}" in out
    (config,) = runs
    assert config.timeout_keep_alive == 5 and config.h11_max_incomplete_event_size == 16 * 1024
    assert config.limit_concurrency == 1024
    assert isinstance(config.http, type) and config.http.__name__ == "HeaderTimeoutH11"
    assert configure_access(app, "127.0.0.1").token is None  # back on loopback: no token


def test_head_is_answered_like_get(client: TestClient) -> None:
    for path in (f"{API}/model", "/", f"{API}/openapi.json"):
        get, head = client.get(path), client.head(path)
        assert head.status_code == 200 == get.status_code, path
        assert head.content == b""
        assert head.headers["content-type"] == get.headers["content-type"]
        assert head.headers["content-length"] == get.headers["content-length"]
    assert client.head(f"{API}/nope").status_code == 404


# ----------------------------------------------------------------- bounded parameters


NAN_BODY = '{"image_id": "%s", "method": "%s", "params": {"%s": %s}}'


@pytest.mark.parametrize(
    ("method", "params", "words"),
    [
        ("smoothgrad", {"n_samples": 10**9}, "n_samples must be a positive integer (1..1000)"),
        ("smoothgrad", {"n_samples": True}, "n_samples must be a positive integer"),
        ("smoothgrad", {"n_samples": 5.5}, "n_samples must be a positive integer"),
        ("smoothgrad", {"seed": 2**70}, "seed must be an integer in 0..4294967295"),
        ("smoothgrad", {"noise": -1}, "noise must be a finite number in 0..10"),
        ("integrated-gradients", {"n_steps": 5000}, "n_steps must be an integer in 2..1000"),
        ("integrated-gradients", {"n_steps": 10**30}, "2..1000"),
        ("integrated-gradients", {"baseline": 1e308}, "baseline must be 'black', 'white'"),
        ("integrated-gradients", {"baseline": "grey"}, "-1000..1000"),
        (
            "integrated-gradients",
            {"chunk_size": 0},
            "chunk_size must be a positive integer (1..1024)",
        ),
        ("occlusion", {"window": 0}, "window must be a positive integer (1..4096)"),
        ("occlusion", {"window": [2, 2, 2]}, "a list of up to 2"),
        ("occlusion", {"stride": {"a": 1}}, "stride must be"),
        ("occlusion", {"fill": [0.5, 1e300]}, "fill must be 'mean'"),
        ("score-cam", {"chunk_size": 10**12}, "(1..1024)"),
    ],
)
def test_out_of_range_parameters_are_422_naming_the_range(
    client: TestClient, sample_id: str, method: str, params: dict[str, Any], words: str
) -> None:
    r = client.post(
        f"{API}/explain", json={"image_id": sample_id, "method": method, "params": params}
    )
    assert r.status_code == 422, r.text
    assert words in r.json()["error"]


@pytest.mark.parametrize(
    ("method", "name", "literal"),
    [
        ("integrated-gradients", "baseline", "NaN"),
        ("integrated-gradients", "baseline", "-Infinity"),
        ("occlusion", "fill", "NaN"),
        ("occlusion", "fill", "[NaN, 0, 0]"),
        ("smoothgrad", "noise", "Infinity"),
    ],
)
def test_nan_and_infinite_parameters_are_refused(
    client: TestClient, sample_id: str, method: str, name: str, literal: str
) -> None:
    """Python's JSON reader takes ``NaN``; before, these answered 200 with an all-NaN map."""
    body = NAN_BODY % (sample_id, method, name, literal)
    r = client.post(f"{API}/explain", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert "finite number" in r.json()["error"]


def test_chunk_size_is_bounded_by_the_servers_pixels_per_pass(model: Model) -> None:
    config = ServerConfig(max_chunk_pixels=64 * 32 * 32)
    with TestClient(create_app(model, config=config), base_url=LOCAL) as c:
        sid = upload(c, encode(Image.new("RGB", (32, 32)))).json()["image_id"]
        body = {"image_id": sid, "method": "smoothgrad", "params": {"chunk_size": 65}}
        r = c.post(f"{API}/explain", json=body)
        assert r.status_code == 422 and "at most 64 here" in r.json()["error"], r.text
        body["params"] = {"chunk_size": 64, "n_samples": 2}
        assert c.post(f"{API}/explain", json=body).status_code == 200


@pytest.mark.parametrize("target", ["²", "٣", "1e3", 2**70, -1])
def test_odd_targets_are_400(client: TestClient, sample_id: str, target: object) -> None:
    body = {"image_id": sample_id, "method": "saliency", "target": target}
    r = client.post(f"{API}/explain", json=body)
    assert r.status_code == 400, r.text
    assert "class" in r.json()["error"]


@pytest.mark.parametrize(
    "body",
    [
        {"target": False},  # found by schemathesis: pydantic's lax mode made it class 0
        {"target": True},
        {"target": 1.5},
        {"image_id": 7},
        {"params": []},
        {"colour": "red"},  # unknown fields are refused, not ignored
    ],
)
def test_explain_body_types_are_strict(
    client: TestClient, sample_id: str, body: dict[str, Any]
) -> None:
    r = client.post(f"{API}/explain", json={"image_id": sample_id, "method": "saliency", **body})
    assert r.status_code == 422, r.text
    assert r.json()["error"].startswith("invalid request")


def test_bounds_are_published_in_model_and_openapi(client: TestClient) -> None:
    methods = {m["name"]: m for m in client.get(f"{API}/model").json()["capabilities"]["methods"]}
    n_steps = methods["integrated-gradients"]["params"]["n_steps"]
    assert (n_steps["minimum"], n_steps["maximum"]) == (2, 1000)
    assert methods["occlusion"]["params"]["window"]["max_items"] == 2
    doc = client.get(f"{API}/openapi.json").json()
    params = doc["components"]["schemas"]["ExplainRequest"]["properties"]["params"]
    by_title = {o["title"]: o for o in params["anyOf"]}
    assert by_title["smoothgrad"]["properties"]["n_samples"] == {
        "type": "integer",
        "minimum": 1,
        "maximum": 1000,
    }


def test_the_same_bounds_hold_outside_the_server(model: Model) -> None:
    import convlens
    from convlens.methods import ParamError

    with pytest.raises(ParamError, match=r"n_steps must be an integer in 2\.\.1000"):
        convlens.explain(model, torch.rand(1, 3, 32, 32), "integrated-gradients", n_steps=5000)
    with pytest.raises(ParamError, match="finite"):
        convlens.explain(model, torch.rand(1, 3, 32, 32), "occlusion", fill=float("nan"))
    with pytest.raises(ParamError, match="baseline"):
        nan_image = torch.full((1, 3, 32, 32), float("nan"))
        convlens.explain(
            model, torch.rand(1, 3, 32, 32), "integrated-gradients", baseline=nan_image
        )


def test_gauss_legendre_nodes_match_numpy_in_linear_memory() -> None:
    from convlens.methods.gradient import gauss_legendre

    for n in (2, 3, 7, 50, 301):
        x, w = gauss_legendre(n)
        ref_x, ref_w = np.polynomial.legendre.leggauss(n)
        assert np.abs(x - ref_x).max() < 1e-13 and np.abs(w - ref_w).max() < 1e-12
    x, w = gauss_legendre(1000)  # numpy would build a 1000×1000 companion matrix
    assert abs(w.sum() - 2.0) < 1e-12 and np.all(np.diff(x) > 0)
    assert abs((w * x**10).sum() - 2 / 11) < 1e-12  # exact for polynomials of degree < 2n


def test_trace_caps_are_bounded_by_the_server(model: Model) -> None:
    budget = trace_numbers(model, 2, 128)
    config = ServerConfig(trace_max_channels=2, trace_max_numbers=budget)
    with TestClient(create_app(model, config=config), base_url=LOCAL) as c:
        sid = upload(c, encode(Image.new("RGB", (32, 32)))).json()["image_id"]
        assert c.get(f"{API}/trace", params={"image": sid}).status_code == 200
        r = c.get(f"{API}/trace", params={"image": sid, "max_channels": 64})
        assert r.status_code == 422 and f"at most {budget:,}" in r.json()["error"]
        ok = c.get(f"{API}/trace", params={"image": sid, "max_channels": 64, "layers": "output"})
        assert ok.status_code == 200  # few layers: the same caps fit
        for value in (0, 4097, 10**30):
            r = c.get(f"{API}/trace", params={"image": sid, "max_size": value})
            assert r.status_code == 422, value


def test_the_worker_pools_outlive_a_lifespan(model: Model) -> None:
    """Found by schemathesis, which starts and stops the app around requests: the pools shut
    down with the first lifespan and every later upload was a 500."""
    app = create_app(model)
    png = encode(Image.new("RGB", (32, 32)))
    for _ in range(2):
        with TestClient(app, base_url=LOCAL) as c:
            assert upload(c, png).status_code == 200
            sid = upload(c, png).json()["image_id"]
            assert c.get(f"{API}/trace", params={"image": sid}).status_code == 200
            body = {"image_id": sid, "method": "saliency"}
            assert c.post(f"{API}/explain", json=body).status_code == 200


# ----------------------------------------------------------------- bodies


def _chunks(total: int, size: int = 64 * 1024) -> Iterator[bytes]:
    sent = 0
    while sent < total:
        n = min(size, total - sent)
        sent += n
        yield b" " * n


def test_chunked_bodies_are_counted_as_they_stream(client: TestClient) -> None:
    """No Content-Length (Transfer-Encoding: chunked): refused once past the limit."""
    r = client.post(
        f"{API}/explain", content=_chunks(3 * 2**20), headers={"content-type": "application/json"}
    )
    assert r.status_code == 413 and "limit of 1,048,576 bytes" in r.json()["error"], r.text
    boundary = "xyz"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\n'
    ).encode()

    def body() -> Iterator[bytes]:
        yield head
        yield from _chunks(17 * 2**20)

    r = client.post(
        f"{API}/images",
        content=body(),
        headers={"content-type": f"multipart/form-data; boundary={boundary}"},
    )
    assert r.status_code == 413, r.text


# ----------------------------------------------------------------- a live server


@pytest.fixture
def live(request: pytest.FixtureRequest) -> Iterator[tuple[str, int]]:
    """uvicorn in a thread with the options ``serve`` uses; ``config`` via indirect param."""
    import uvicorn

    config: ServerConfig = getattr(request, "param", ServerConfig())
    # the slow-explanation test needs work well past its budget on a quiet machine too:
    # 1000 forward+backward passes at 128² take ~10 s here (at 64² a quiet run finished in 2.9 s)
    size = 128 if config.explain_seconds < 30 else 32
    model = build(f"tiny-vgg:in_channels=3,input_size={size}", seed=0).eval()
    port = free_port()
    app = create_app(model, config=config)
    options = uvicorn_options(config)
    server = uvicorn.Server(uvicorn.Config(app, "127.0.0.1", port, log_level="error", **options))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", port
    server.should_exit = True
    thread.join(timeout=10)


@pytest.mark.parametrize("live", [ServerConfig(explain_seconds=3.0)], indirect=True)
def test_a_slow_explanation_holds_up_neither_model_nor_traces(live: tuple[str, int]) -> None:
    """Integrated gradients, 1000 steps one image per pass (~10 s here): GET /model and traces
    answer at once meanwhile, and the explanation stops at its 3 s budget with a 422."""
    url, _ = live
    with httpx.Client(base_url=url, timeout=30) as c:
        png = encode(Image.new("RGB", (128, 128), (90, 20, 160)))
        sid = c.post(f"{API}/images", files={"file": ("x", png)}).json()["image_id"]
        c.get(f"{API}/trace", params={"image": sid})  # warm
        slow: dict[str, Any] = {}

        def explain() -> None:
            start = time.perf_counter()
            body = {"image_id": sid, "method": "integrated-gradients",
                    "params": {"n_steps": 1000, "chunk_size": 1}}  # fmt: skip
            slow["response"] = httpx.post(f"{url}{API}/explain", json=body, timeout=60)
            slow["seconds"] = time.perf_counter() - start

        worker = threading.Thread(target=explain)
        worker.start()
        time.sleep(0.5)  # in flight
        latencies = []
        for _ in range(5):
            start = time.perf_counter()
            assert c.get(f"{API}/model").status_code == 200
            latencies.append(time.perf_counter() - start)
            assert c.get(f"{API}/trace", params={"image": sid}).status_code == 200
        assert "response" not in slow  # still running while those answered
        worker.join(timeout=30)
    print(f"GET /model during a slow explanation: max {max(latencies) * 1000:.0f} ms")
    assert max(latencies) < 1.0
    r = slow["response"]
    assert r.status_code == 422 and "time budget of 3 s" in r.json()["error"], r.text
    assert slow["seconds"] < 3.0 + 3.0


def _head_only(port: int, text: bytes) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(text)
    return s


def _closed_within(s: socket.socket, seconds: float) -> bool:
    """Whether the server closed ``s`` (EOF or reset) within ``seconds``."""
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        ready, _, _ = select.select([s], [], [], left)
        if not ready:
            return False
        try:
            if s.recv(65536) == b"":
                return True  # EOF
        except ConnectionResetError:
            return True
    return False


@pytest.mark.parametrize("live", [ServerConfig(header_timeout=1.0, keep_alive=1)], indirect=True)
def test_half_open_connections_are_dropped(live: tuple[str, int]) -> None:
    """200 connections that never finish their request head (the issue held 1,100 for 30 s)
    and one that drips a header byte at a time: all closed after the 1 s head timeout, while
    a normal client is served."""
    url, port = live
    start = time.monotonic()
    half_open = [_head_only(port, b"GET /api/v1/model HTTP/1.1\r\nHost: 127.0.0.1\r\n")
                 for _ in range(200)]  # fmt: skip
    drip = _head_only(port, b"GET / HTTP/1.1\r\n")
    with httpx.Client(base_url=url, timeout=5) as c:
        assert c.get(f"{API}/model").status_code == 200  # served meanwhile
    for _ in range(6):  # a byte every 0.3 s keeps no connection open
        time.sleep(0.3)
        try:
            drip.sendall(b"X")
        except OSError:
            break
    deadline = start + 1.0 + 4.0
    for s in [*half_open, drip]:
        assert _closed_within(s, max(0.1, deadline - time.monotonic()))
        s.close()
    elapsed = time.monotonic() - start
    print(f"200 half-open connections closed after {elapsed:.1f} s")
    # an oversized request head (over 16 KiB) is refused, not buffered
    big = _head_only(port, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 40_000)
    big.settimeout(5)
    answer = big.recv(100)
    assert answer == b"" or answer.startswith(b"HTTP/1.1 400"), answer
    big.close()


def test_chunked_body_stops_being_read_past_the_limit(live: tuple[str, int]) -> None:
    """The issue's chunked 300 MB JSON body: the 413 comes after about the 1 MiB limit, long
    before 300 MB are sent (at most 16 MiB are offered)."""
    _, port = live
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(
        b"POST /api/v1/explain HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    chunk = b"10000\r\n" + b" " * 0x10000 + b"\r\n"
    sent = 0
    answer = b""
    while sent < 16 * 2**20:
        try:
            s.sendall(chunk)
        except OSError:
            break
        sent += 0x10000
        ready, _, _ = select.select([s], [], [], 0)
        if ready:
            break
    s.settimeout(10)
    answer = s.recv(65536)
    s.close()
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    print(f"chunked body: 413 after {sent / 2**20:.1f} MiB offered")
    assert sent < 8 * 2**20, sent


@pytest.mark.slow
def test_fifty_requests_a_second_soak(live: tuple[str, int]) -> None:
    """50 requests/s for ``CONVLENS_SOAK_SECONDS`` (default 5): model documents, traces,
    explanations and uploads, all answered, none 5xx."""
    url, _ = live
    seconds = float(os.environ.get("CONVLENS_SOAK_SECONDS", "5"))
    png = encode(Image.new("RGB", (48, 40), (20, 120, 220)))

    async def soak() -> list[tuple[int, float]]:
        async with httpx.AsyncClient(base_url=url, timeout=60) as ac:
            sid = (await ac.post(f"{API}/images", files={"file": ("x", png)})).json()["image_id"]

            async def one(k: int) -> tuple[int, float]:
                start = time.perf_counter()
                kind = k % 4
                if kind == 0:
                    r = await ac.get(f"{API}/model")
                elif kind == 1:
                    r = await ac.get(f"{API}/trace", params={"image": sid})
                elif kind == 2:
                    r = await ac.post(
                        f"{API}/explain", json={"image_id": sid, "method": "grad-cam"}
                    )
                else:
                    r = await ac.post(f"{API}/images", files={"file": ("x", png)})
                return r.status_code, time.perf_counter() - start

            tasks = []
            for k in range(int(seconds * 50)):
                tasks.append(asyncio.create_task(one(k)))
                await asyncio.sleep(0.02)
            return list(await asyncio.gather(*tasks))

    results = asyncio.run(soak())
    statuses = [s for s, _ in results]
    latencies = sorted(t for _, t in results)
    p95 = latencies[int(0.95 * (len(latencies) - 1))]
    p50 = latencies[len(latencies) // 2]
    print(
        f"soak: {len(results)} requests, statuses {sorted(set(statuses))}, "
        f"p50 {p50 * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms"
    )
    assert all(s == 200 for s in statuses), sorted(set(statuses))


# ----------------------------------------------------------------- memory, in its own process


_SERVER = textwrap.dedent(
    """
    import sys, uvicorn
    from convlens.model import build
    from convlens.web import ServerConfig, create_app
    from convlens.web.server import uvicorn_options
    config = ServerConfig()
    app = create_app(build("tiny-vgg:in_channels=3,input_size=32", seed=0), config=config)
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="error",
                **uvicorn_options(config))
    """
)


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_server_memory_stays_bounded_under_hostile_images(
    strips: dict[str, bytes], deep_png: bytes
) -> None:
    port = free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", _SERVER, str(port)], env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"{url}{API}/model", timeout=2)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.2)
        warm = encode(Image.new("RGB", (300, 200)))
        assert httpx.post(f"{url}{API}/images", files={"file": ("w", warm)}).status_code == 200
        base = _status_kb(proc.pid, "VmRSS")
        Path(f"/proc/{proc.pid}/clear_refs").write_text("5")  # peak RSS := current RSS

        for name in ("1x1e6", "1x1e7"):
            r = httpx.post(f"{url}{API}/images", files={"file": ("x", strips[name])}, timeout=30)
            assert r.status_code == 413
        strip_peak = _status_kb(proc.pid, "VmHWM") - base

        async def eight() -> list[int]:
            async with httpx.AsyncClient(timeout=120) as ac:
                calls = [
                    ac.post(f"{url}{API}/images", files={"file": ("x", deep_png)}) for _ in range(8)
                ]
                return [r.status_code for r in await asyncio.gather(*calls)]

        start = time.perf_counter()
        statuses = asyncio.run(eight())
        took = time.perf_counter() - start
        peak = _status_kb(proc.pid, "VmHWM") - base
        kept = _status_kb(proc.pid, "VmRSS") - base
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    print(
        f"server RSS above baseline: strips peak {strip_peak / 1024:.0f} MB; 8 concurrent "
        f"6300x6300 16-bit PNGs peak {peak / 1024:.0f} MB, kept {kept / 1024:.0f} MB "
        f"({took:.1f} s)"
    )
    assert statuses == [200] * 8
    assert strip_peak < 50 * 1024  # refused from the header: nothing decoded
    # two decodes at a time, each ~79 MB of 16-bit pixels plus its 8-bit copy and the
    # display/model copies (the issue measured 5.7 GB peak, 5.1 GB kept)
    assert peak < 700 * 1024
    assert kept < 400 * 1024


# ----------------------------------------------------------------------------- image kinds


def test_image_errors_carry_their_kind(tmp_path: Path) -> None:
    """Callers (the upload route among them) branch on ``kind``, never on the message."""
    from convlens.io.image import DecodeLimits, ImageError, ImageProblem, decode_image
    from convlens.web.errors import ApiError
    from convlens.web.uploads import STATUS, decode_upload

    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (9, 9, 9)).save(buf, "PNG")
    good = buf.getvalue()
    buf = io.BytesIO()
    Image.effect_noise((20, 20), 50).save(buf, "PNG")  # 400 pixels: within the limit
    small = buf.getvalue()
    limits = DecodeLimits(max_bytes=10_000, max_pixels=1000, formats=("PNG",))
    cases: dict[bytes | Path, ImageProblem] = {
        b"": ImageProblem.EMPTY,
        good: ImageProblem.TOO_LARGE,  # 1200 pixels > 1000
        b"x" * 20_000: ImageProblem.TOO_LARGE,  # bytes
        b"GIF89a" + bytes(40): ImageProblem.NOT_AN_IMAGE,  # a format not accepted here
        small[: len(small) // 2]: ImageProblem.CORRUPT,  # a PNG cut in half
        tmp_path / "absent.png": ImageProblem.MISSING,
    }
    for source, kind in cases.items():
        with pytest.raises(ImageError) as info:
            decode_image(source, limits)
        assert info.value.kind is kind, (source, info.value)
        if isinstance(source, bytes):
            with pytest.raises(ApiError) as api:
                decode_upload(source, limits)
            assert api.value.status == STATUS.get(kind, 400)
