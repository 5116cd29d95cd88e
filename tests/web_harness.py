"""What the browser and live-server tests share: Debian's Chromium and uvicorn in a thread.

Playwright's own browser download does not work here, so the tests drive the system Chromium
with the flags that keep it from reaching the network on its own.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from convlens.model import Model

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip


def free_port() -> int:
    """A loopback port nothing listens on (at the time of asking)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch_chromium(playwright: Any) -> Any:
    """Debian's Chromium under Playwright, headless and quiet."""
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)


def chromium_browser() -> Iterator[Any]:
    """One Chromium for a test module (the ``browser`` fixture); skips where it cannot run."""
    if not CHROMIUM.is_file():
        pytest.skip(f"Debian's chromium is not installed at {CHROMIUM}")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    with sync_api.sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            yield browser
        finally:
            browser.close()


class LiveServer:
    """An ASGI app served by uvicorn in a thread on a free loopback port; ``stop`` ends it."""

    def __init__(self, app: Any, model: Model | None = None) -> None:
        import uvicorn

        self._model = model
        self.port = free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.05)

    @classmethod
    def explainer(cls, model: Model, **app_options: Any) -> LiveServer:
        """convlens's explainer app on ``model``."""
        from convlens.web.server import create_app

        return cls(create_app(model, **app_options), model)

    @property
    def model(self) -> Model:
        """The model the app serves (only servers started with one have it)."""
        if self._model is None:
            raise AttributeError("this test server was started without a model")
        return self._model

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
