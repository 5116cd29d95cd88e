"""The explainer's layout at common window sizes and its second-pass interactions, in a real
headless Chromium (Playwright, Debian's chromium) against the real server.

Every check reads element boxes from the page (``getBoundingClientRect``) and compares them
with the viewport; nothing is judged by eye. One server per model and one browser for the
whole module keep this lean. Screenshots go to ``tests/artifacts/web/layout/``.
"""

from __future__ import annotations

import base64
import io
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from convlens.model import Model, build, load_model
from convlens.model.core import Sample

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent / "artifacts" / "web" / "layout"
EXPLAINER = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "cnn-explainer"
SIZES = [(1280, 800), (1366, 768), (1920, 1080), (800, 1000)]

if not CHROMIUM.exists():
    pytest.skip("Debian's chromium is not installed at /usr/bin/chromium", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
uvicorn = pytest.importorskip("uvicorn", reason="uvicorn is not installed")
server_mod = pytest.importorskip("convlens.web.server", reason="the web server is not available")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Server:
    """uvicorn in a thread on a free loopback port."""

    def __init__(self, model: Model) -> None:
        self.model = model
        self.port = _free_port()
        config = uvicorn.Config(
            server_mod.create_app(model), host="127.0.0.1", port=self.port, log_level="warning"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started:
            if time.time() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def _resnet18(tmp: Path) -> Model:
    """The zoo's ResNet-18 (224×224, 1000 classes) with seeded random weights and one sample."""
    model = build("resnet18", seed=0).eval()
    path = tmp / "noise.png"
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 255, (224, 224, 3), dtype=np.uint8)).save(path)
    model.samples.append(Sample(path, label=None))
    return model


def _no_samples() -> Model:
    model = build("tiny-vgg:in_channels=1,input_size=28", seed=0).eval()
    model.samples.clear()
    return model


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, _Server]]:
    if not (EXPLAINER / "model.json").is_file():
        pytest.skip(f"CNN Explainer fixture not found at {EXPLAINER}")
    made = {
        "demo": _Server(load_model("demo").eval()),
        "explainer": _Server(load_model(str(EXPLAINER)).eval()),
        "resnet18": _Server(_resnet18(tmp_path_factory.mktemp("resnet18"))),
    }
    yield made
    for srv in made.values():
        srv.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=str(CHROMIUM),
            args=[
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run",
            ],
        )  # fmt: skip
        yield b
        b.close()


def _open(browser: Any, server: _Server, size: tuple[int, int] = (1280, 800)) -> Any:
    page = browser.new_page(viewport={"width": size[0], "height": size[1]})
    page.errors = []
    page.console_errors = []
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    page.on(
        "console", lambda m: m.type == "error" and page.console_errors.append(m.text)
    )  # a 404 shows here
    page.goto(server.url)
    page.wait_for_selector("body[data-ready=true]", timeout=20_000)
    return page


def _shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))


# Boxes of everything that must be seen, and whatever sticks out of the viewport sideways.
_LAYOUT_JS = """() => {
  const W = window.innerWidth;
  const box = (e) => { const r = e.getBoundingClientRect();
    return {left: r.left, right: r.right, width: r.width, height: r.height}; };
  const out = (b) => b.left < -0.5 || b.right > W + 0.5 || b.width <= 0 || b.height <= 0;
  const rows = [...document.querySelectorAll('#overview .outrow')];
  const names = rows.map((r) => r.querySelector('.cls'));
  const bars = rows.map((r) => r.querySelector('.bar'));
  const ov = document.getElementById('overview');
  const parts = [...ov.querySelectorAll('canvas.neuron, canvas.strip, .outrow, svg text')];
  return {
    W, pageWidth: document.documentElement.scrollWidth, rows: rows.length,
    overviewScroll: ov.scrollWidth - ov.clientWidth,
    stage: box(ov.querySelector('.stage')),
    badNames: names.filter((n) => out(box(n)) || n.scrollWidth > n.clientWidth + 1)
      .map((n) => n.textContent),
    badBars: bars.filter((b) => out(box(b))).length,
    badParts: parts.filter((p) => { const b = box(p); return b.left < -0.5 || b.right > W + 0.5; })
      .map((p) => p.dataset?.key || p.textContent),
    neurons: ov.querySelectorAll('canvas.neuron').length,
    wide: [...ov.querySelectorAll('.stage > *, svg *')].filter((e) => e.getBoundingClientRect().right
      > ov.getBoundingClientRect().right).map((e) => e.className.baseVal ?? e.className).slice(0, 5),
  };
}"""


def _resize(page: Any, size: tuple[int, int]) -> None:
    """Resize the window and wait for the overview to be redrawn for the new width."""
    page.set_viewport_size({"width": size[0], "height": size[1]})
    page.wait_for_function(
        "() => { const o = document.getElementById('overview');"
        " return o.dataset.width === String(o.clientWidth); }",
        timeout=10_000,
    )


@pytest.mark.parametrize("which", ["demo", "explainer", "resnet18"])
def test_every_class_and_the_whole_overview_fit_each_window(
    servers: dict[str, _Server], browser: Any, which: str
) -> None:
    page = _open(browser, servers[which], SIZES[0])
    for size in SIZES:
        _resize(page, size)
        got = page.evaluate(_LAYOUT_JS)
        where = f"{which} at {size[0]}×{size[1]}"
        assert got["pageWidth"] <= size[0], f"{where}: the page scrolls sideways ({got})"
        assert got["overviewScroll"] <= 0, f"{where}: the overview scrolls sideways ({got['wide']})"
        assert got["stage"]["right"] <= size[0] and got["stage"]["left"] >= 0, where
        assert got["rows"] == min(10, len(servers[which].model.classes)), where
        assert got["badNames"] == [] and got["badBars"] == 0, f"{where}: {got['badNames']}"
        assert got["badParts"] == [], f"{where}: outside the window: {got['badParts'][:5]}"
        assert got["neurons"] > 0
        _shot(page, f"{which}-{size[0]}x{size[1]}")
    assert not page.errors and not page.console_errors, (page.errors, page.console_errors)
    page.close()
