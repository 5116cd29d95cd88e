"""Big models in the explainer: a quantized overview trace, exact numbers in the detail views.

The page quantizes the overview's trace (``encoding=uint8``) for a model above a size
threshold; ``?trace=uint8`` forces it here on CNN Explainer's Tiny VGG (a small model, quick
to serve). The detail views must still print the network's own numbers: they fetch the exact
maps (``GET /activations``, or the layer uncapped in float32), and the server answers those
from the forward pass it recorded for the trace (no second pass).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from convlens.model import Model, build, load_model
from convlens.model.core import Sample
from convlens.probe import record_all
from convlens.trace.encode import decode_tensor
from convlens.web import api as api_mod
from convlens.web import create_app
from web_harness import CHROMIUM, LiveServer, launch_chromium

with warnings.catch_warnings():  # Starlette prefers the httpx2 package; httpx works
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

FIXTURE = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "cnn-explainer"


def test_exact_channels_and_repeated_traces_reuse_the_recorded_pass(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """API level (no browser): one forward pass per image serves its traces and channels."""
    model = build("tiny-vgg:in_channels=1,input_size=16,num_classes=3", seed=0).eval()
    rng = np.random.default_rng(0)
    for k in range(2):
        path = tmp_path / f"s{k}.png"
        Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8), "L").save(path)
        model.samples.append(Sample(path, label=k))
    passes: list[int] = []
    real = api_mod.record

    def counted(m: Model, x: torch.Tensor) -> Any:
        passes.append(1)
        return real(m, x)

    monkeypatch.setattr(api_mod, "record", counted)
    with TestClient(create_app(model), base_url="http://127.0.0.1") as client:
        first = client.get("/api/v1/trace", params={"image": "sample-0", "encoding": "uint8"})
        again = client.get("/api/v1/trace", params={"image": "sample-0", "encoding": "uint8"})
        assert first.status_code == 200 and again.content == first.content
        layer = next(lay.name for lay in model.graph if lay.kind == "conv")
        got = client.get(f"/api/v1/activations/{layer}/1", params={"image": "sample-0"})
        assert len(passes) == 1  # the trace's recording served the channel
        with torch.no_grad():
            acts, _ = record_all(model, model.load_image(model.samples[0].path))
        np.testing.assert_array_equal(decode_tensor(got.json()["map"]), acts[layer][0, 1].numpy())
        client.get("/api/v1/trace", params={"image": "sample-1"})
        assert len(passes) == 2  # another image: its own pass


def _browser_modules() -> Any:
    """Playwright's sync API, or a skip when the browser tests cannot run here."""
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed at /usr/bin/chromium")
    pytest.importorskip("uvicorn", reason="uvicorn is not installed")
    return pytest.importorskip("playwright.sync_api", reason="playwright is not installed")


class _Counted(LiveServer):
    passes: list[int]  # one entry per forward pass the server ran


@pytest.fixture(scope="module")
def served() -> Iterator[_Counted]:
    """The explainer on CNN Explainer's Tiny VGG, counting its forward passes (``passes``)."""
    _browser_modules()
    if not (FIXTURE / "model.json").is_file():
        pytest.skip(f"CNN Explainer fixture not found at {FIXTURE}")
    with pytest.MonkeyPatch.context() as mp:
        passes: list[int] = []
        real = api_mod.record

        def counted(m: Model, x: torch.Tensor) -> Any:
            passes.append(1)
            return real(m, x)

        mp.setattr(api_mod, "record", counted)
        model = load_model(str(FIXTURE)).eval()
        srv = _Counted(create_app(model), model)
        srv.passes = passes
        yield srv
        srv.stop()


@pytest.fixture(scope="module")
def page(served: _Counted) -> Iterator[Any]:
    sync_api = _browser_modules()
    with sync_api.sync_playwright() as p:
        browser = launch_chromium(p)
        pg = browser.new_page(viewport={"width": 1280, "height": 720})
        pg.requests = []
        pg.errors = []
        pg.on("request", lambda r: pg.requests.append(r.url))
        pg.on("pageerror", lambda e: pg.errors.append(str(e)))
        pg.goto(served.url + "?trace=uint8")
        pg.wait_for_selector("body[data-ready=true]", timeout=15_000)
        yield pg
        browser.close()


def _exact(model: Model | None) -> dict[str, torch.Tensor]:
    assert model is not None
    with torch.no_grad():
        acts, _ = record_all(model, model.load_image(model.samples[0].path))
    return {k: v[0] for k, v in acts.items()}


@pytest.mark.browser
def test_conv_view_prints_exact_numbers_from_a_quantized_trace(served: _Counted, page: Any) -> None:
    model = served.model
    assert model is not None
    traces = [u for u in page.requests if "/api/v1/trace?" in u]
    assert traces and "encoding=uint8" in traces[0]  # the overview came quantized
    page.click("canvas.neuron[data-layer='conv_1_2'][data-channel='4']")
    page.wait_for_selector("#detail[data-view=conv] #conv-result")
    for _ in range(5):
        page.click("#detail button.step")
    result = page.locator("#conv-result")
    i, j = int(result.get_attribute("data-row")), int(result.get_attribute("data-col"))
    exact = _exact(model)
    expected = float(exact["conv_1_2"][4, i, j])
    shown = float(result.get_attribute("data-value"))
    assert shown == pytest.approx(expected, rel=1e-5, abs=1e-6)  # float32 rounding only
    # the same arithmetic on the overview's quantized input misses by far more than that
    doc = httpx.get(
        served.url + "api/v1/trace",
        params={"image": "sample-0", "encoding": "uint8", "layers": "relu_1_1"},
    ).json()
    x_q = torch.from_numpy(decode_tensor(doc["activations"]["relu_1_1"]))
    conv = model.net.get_submodule(model.graph["conv_1_2"].module)
    with torch.no_grad():
        approx = float(F.conv2d(x_q[None], conv.weight, conv.bias)[0, 4, i, j])
    assert abs(approx - expected) > 100 * max(1e-5 * abs(expected), 1e-6)
    # the output channel came exact through GET /activations; one forward pass in all
    assert any("/api/v1/activations/conv_1_2/4?" in u for u in page.requests)
    assert served.passes == [1]
    page.keyboard.press("Escape")
    assert not page.errors


@pytest.mark.browser
def test_relu_view_prints_exact_values(served: _Counted, page: Any) -> None:
    page.click("canvas.neuron[data-layer='relu_1_1'][data-channel='2']")
    page.wait_for_selector("#detail[data-view=activation] #elementwise-formula .result")
    page.hover("#detail canvas.map >> nth=0", position={"x": 30, "y": 40})
    plot = page.locator("#relu-plot")
    exact = _exact(served.model)
    xs = exact["conv_1_1"][2].numpy()
    ys = exact["relu_1_1"][2].numpy()
    x, y = float(plot.get_attribute("data-x")), float(plot.get_attribute("data-y"))
    # the hovered cell's input and output, both exact (float32 values, printed as float64)
    hit = np.argwhere(np.abs(xs - np.float32(x)) <= 1e-7 * max(1.0, abs(x)))
    assert len(hit), f"{x} is not an exact conv_1_1 value of channel 2"
    r, q = hit[0]
    assert y == pytest.approx(float(ys[r, q]), abs=1e-7)
    assert served.passes == [1]
    page.keyboard.press("Escape")
    assert not page.errors


@pytest.mark.browser
def test_pool_and_flatten_views_print_exact_values(served: _Counted, page: Any) -> None:
    exact = _exact(served.model)
    page.click("canvas.neuron[data-layer='max_pool_1'][data-channel='3']")
    page.wait_for_selector("#detail[data-view=pool] #pool-result")
    page.click("#detail button.step")
    text = page.locator("#pool-arith").inner_text()
    i, j = (int(v) for v in re.findall(r"out\[(\d+), (\d+)\]", text)[0])
    shown = float(page.locator("#pool-result").get_attribute("data-value") or "nan")
    assert shown == float(exact["max_pool_1"][3, i, j])  # a max of exact values is exact
    page.keyboard.press("Escape")
    page.click("canvas.strip[data-layer='flatten']")
    page.wait_for_selector("#detail[data-view=flatten] #flatten-result")
    page.hover("#detail canvas.map >> nth=1", position={"x": 5, "y": 5})
    line = page.locator("#flatten-formula").inner_text()
    k = int(page.locator("#flatten-result").get_attribute("data-index") or "-1")
    value = float(re.findall(r"= ([−\-\d.e+]+)$", line.strip())[0].replace("−", "-"))
    assert value == pytest.approx(float(exact["flatten"][k]), abs=1.5e-3)  # printed to 3 places
    assert served.passes == [1]
    page.keyboard.press("Escape")
    assert not page.errors
