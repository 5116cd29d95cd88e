"""``convlens.show`` in a real JupyterLab with anywidget's own front end: opt-in.

JupyterLab is not a test dependency of convlens; where it is installed (with anywidget's lab
extension), this starts a JupyterLab server with no token on a free loopback port, opens a
notebook in headless Chromium, runs ``convlens.show`` in a real kernel and checks the widget's
state both ways through Jupyter's own message bus. It skips otherwise (the in-suite check of
the same protocol is ``test_notebook_widget.py``). Measured: passes in ~80 s with JupyterLab
4.6.6 and anywidget 0.11.0 (lab extensions found through ``JUPYTER_PATH`` when they live in
another prefix).
"""

from __future__ import annotations

import importlib.util
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
FIXTURE = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "cnn-explainer"
SRC = Path(__file__).resolve().parents[1] / "src"

for needed in ("jupyterlab", "anywidget", "nbformat", "fastapi"):
    if importlib.util.find_spec(needed) is None:
        pytest.skip(f"{needed} is not installed (opt-in test)", allow_module_level=True)
if not CHROMIUM.is_file() or not (FIXTURE / "model.json").is_file():
    pytest.skip("needs /usr/bin/chromium and the CNN Explainer fixture", allow_module_level=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    import nbformat

    root = tmp_path_factory.mktemp("lab")
    images = [str(FIXTURE / "images" / n) for n in ("panda_1.jpeg", "bus_1.jpeg")]
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(
            f"import convlens\nw = convlens.show({str(FIXTURE)!r}, {images!r}, height=600)\nw"
        ),
        nbformat.v4.new_code_cell("print(repr((w.image, w.selected)))"),
        nbformat.v4.new_code_cell("w.image = 'sample-0'"),
    ]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3"}
    nbformat.write(nb, str(root / "show.ipynb"))
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    env["JUPYTER_PATH"] = os.pathsep.join(
        p for p in (str(Path(sys.prefix) / "share" / "jupyter"), env.get("JUPYTER_PATH")) if p
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", f"--port={port}",
         "--ServerApp.ip=127.0.0.1", "--ServerApp.token=", "--ServerApp.password=",
         f"--ServerApp.root_dir={root}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


def _run_cell(page: Any, k: int) -> None:
    """Run cell ``k`` once the kernel is idle (a cell run before it connects is dropped)."""
    page.get_by_text(re.compile(r"\| Idle$")).first.wait_for(timeout=90_000)
    cell = page.locator(".jp-Cell").nth(k)
    cell.click()
    page.keyboard.press("Shift+Enter")
    prompt = cell.locator(".jp-InputPrompt")
    page.wait_for_function(
        "el => /\\[\\d+\\]|\\[\\*\\]/.test(el.textContent)", arg=prompt.element_handle()
    )


@pytest.mark.browser
@pytest.mark.slow
def test_show_in_jupyterlab_keeps_state_both_ways(lab: str) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        errors: list[str] = []
        outside: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        local = (lab, lab.replace("http", "ws"), "data:", "blob:", "about:")

        def refuse(route: Any) -> None:  # the page must not reach outside the lab
            outside.append(route.request.url)
            route.abort()

        page.route(lambda u: not u.startswith(local), refuse)
        try:
            page.goto(f"{lab}/lab/tree/show.ipynb")
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
            _run_cell(page, 0)
            frame = page.frame_locator(".jp-OutputArea iframe").first
            frame.locator("body[data-ready=true]").wait_for(state="attached", timeout=90_000)
            assert frame.locator("#predicted-class").inner_text() == "red panda"
            frame.locator("#samples button[data-id='sample-1']").click(timeout=60_000)
            frame.locator("#predicted-class:text('school bus')").wait_for(timeout=30_000)
            frame.locator("canvas.neuron[data-layer='conv_2_1'][data-channel='3']").click()
            frame.locator("#detail[data-view=conv] #conv-result").wait_for(timeout=30_000)
            frame.locator("#detail-close").click()
            _run_cell(page, 1)
            out = page.locator(".jp-Cell").nth(1).locator(".jp-OutputArea-output")
            out.first.wait_for(timeout=30_000)
            assert out.first.inner_text().strip() == (
                "('sample-1', {'layer': 'conv_2_1', 'channel': 3})"
            )
            _run_cell(page, 2)
            frame.locator("#predicted-class:text('red panda')").wait_for(timeout=30_000)
            assert not outside, outside
            assert not errors, errors
        finally:
            browser.close()
