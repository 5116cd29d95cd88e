"""The explainer's listening socket: bound once, by convlens, and handed to uvicorn.

A port checked free and then bound again by uvicorn could be taken in between (by another
program); these tests play that other program at the moment of the race.
"""

from __future__ import annotations

import contextlib
import errno
import socket
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("uvicorn", reason="the web extra is not installed")
pytest.importorskip("fastapi", reason="the web extra is not installed")

import uvicorn

import convlens.web
from convlens.cli import main
from convlens.errors import ConvlensError
from convlens.model.zoo import build

MODEL = "tiny-vgg:input_size=32"


@pytest.fixture(autouse=True)
def _keep_logging(monkeypatch: pytest.MonkeyPatch) -> None:
    """uvicorn.Config reconfigures the process's logging (dictConfig closes every handler
    registered so far, some of which write to pytest's captured streams); the server these
    tests build never runs, so its logging is left alone."""
    monkeypatch.setattr(uvicorn.Config, "configure_logging", lambda self: None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _taken(port: int) -> Iterator[None]:
    """Another program listening on ``port``."""
    with socket.socket() as other:
        other.bind(("127.0.0.1", port))
        other.listen()
        yield


def _bind_errno(port: int) -> int:
    """What another program gets when it tries to bind ``port`` now (0: it succeeds)."""
    with socket.socket() as other:
        try:
            other.bind(("127.0.0.1", port))
        except OSError as e:
            return e.errno or -1
    return 0


def test_serve_holds_its_port_from_the_check_to_uvicorn(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    port = _free_port()
    during_build: list[int] = []
    served: list[tuple[int, int]] = []
    real_create_app = convlens.web.create_app

    def create_app(*args: Any, **kw: Any) -> Any:
        during_build.append(_bind_errno(port))  # another program tries while the app builds
        return real_create_app(*args, **kw)

    def run(self: uvicorn.Server, sockets: list[socket.socket] | None = None) -> None:
        assert sockets is not None
        (sock,) = sockets
        served.append((sock.getsockname()[1], _bind_errno(port)))

    monkeypatch.setattr(convlens.web, "create_app", create_app)
    monkeypatch.setattr(uvicorn.Server, "run", run)
    assert main(["serve", "-m", MODEL, "--port", str(port), "--no-browser"]) == 0
    assert during_build == [errno.EADDRINUSE]
    assert served == [(port, errno.EADDRINUSE)]  # uvicorn got our socket, still ours
    assert f"127.0.0.1:{port}/" in capsys.readouterr().out
    assert _bind_errno(port) == 0  # and it is released after the server stops


def test_a_port_taken_after_the_check_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`demo` checks the port, loads the model, then serves: a port taken during the load is
    one line and exit 2, and no 'explainer at' line is printed."""
    import convlens.cli.demo as demo

    port = _free_port()
    real_open = demo.open_model
    stack = contextlib.ExitStack()

    def open_model(*args: Any, **kw: Any) -> Any:
        stack.enter_context(_taken(port))  # after the check, before the server binds
        return real_open(*args, **kw)

    monkeypatch.setattr(demo, "open_model", open_model)
    monkeypatch.setattr(uvicorn.Server, "run", lambda *a, **k: pytest.fail("served"))
    with stack:
        code = main(["demo", "-m", MODEL, "--port", str(port), "--no-browser"])
    captured = capsys.readouterr()
    assert code == 2, captured.err
    err = captured.err.strip()
    assert err == (
        f"error: port {port} on 127.0.0.1 is already in use; stop the other server or choose "
        "another with --port"
    )
    assert "explainer at" not in captured.out


def test_library_serve_on_a_busy_port_raises_before_printing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    port = _free_port()
    app = convlens.web.create_app(build("tiny-vgg", input_size=32))
    with _taken(port), pytest.raises(ConvlensError, match=f"port {port} .* already in use"):
        convlens.web.serve(app, "127.0.0.1", port)
    assert capsys.readouterr().out == ""
