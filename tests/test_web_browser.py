"""The web explainer in a real headless Chromium (Playwright for Python, Debian's chromium).

The real server (``convlens.web.server.create_app`` under uvicorn, in a thread on a free
loopback port) serves the real front end; the assertions compare what the page shows with
what the model computes in this process. Screenshots go to ``tests/artifacts/``.
"""

from __future__ import annotations

import base64
import io
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from convlens.model import Model, build, load_model
from convlens.model.core import Sample
from web_harness import CHROMIUM, LiveServer

pytestmark = pytest.mark.browser

ARTIFACTS = Path(__file__).resolve().parent / "artifacts" / "web"
PAGE_SIZE = 10  # config.js PAGE_SIZE: neurons per column before paging

if not CHROMIUM.exists():
    pytest.skip("Debian's chromium is not installed at /usr/bin/chromium", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
uvicorn = pytest.importorskip("uvicorn", reason="uvicorn is not installed")
server_mod = pytest.importorskip("convlens.web.server", reason="the web server is not available")


# --------------------------------------------------------------------------- servers


def _demo_model(tmp: Path) -> Model:
    """The bundled demo model, or (until its weights land) Tiny VGG on 1×28×28 with samples."""
    try:
        return load_model("demo").eval()
    except Exception:
        model = build("tiny-vgg:in_channels=1,input_size=28", seed=0).eval()
        rng = np.random.default_rng(0)
        for k in range(3):
            path = tmp / f"sample-{k}.png"
            Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8), "L").save(path)
            model.samples.append(Sample(path, label=k))
        return model


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    srv = LiveServer.explainer(_demo_model(tmp_path_factory.mktemp("demo")))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def explainer_server() -> Iterator[LiveServer]:
    root = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "cnn-explainer"
    if not (root / "model.json").is_file():
        pytest.skip(f"CNN Explainer fixture not found at {root}")
    srv = LiveServer.explainer(load_model(str(root)).eval())
    yield srv
    srv.stop()


def _open(browser: Any, server: LiveServer) -> Any:
    page = browser.new_page(viewport={"width": 1280, "height": 720})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.errors = errors
    page.goto(server.url)
    page.wait_for_selector("body[data-ready=true]", timeout=15_000)
    return page


@pytest.fixture(scope="module")
def explainer_page(explainer_server: LiveServer, browser: Any) -> Iterator[Any]:
    page = _open(browser, explainer_server)
    yield page
    page.close()


def _shot(page: Any, name: str, full: bool = False) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=full)


def _number(text: str) -> float:
    """The last number of an arithmetic line, as the page prints it (with a real minus sign)."""
    found = re.findall(r"[−-]?\d+(?:\.\d+)?(?:e[−+-]?\d+)?", text.split("=")[-1])
    return float(found[-1].replace("−", "-"))


def _activations(model: Model, image: str | Path) -> dict[str, torch.Tensor]:
    from convlens.probe import record_all

    acts, _ = record_all(model, model.load_image(image))
    return {k: v[0] for k, v in acts.items()}


# --------------------------------------------------------------------------- tests


def _expected_counts(model: Model) -> tuple[int, int]:
    """Columns (every layer but dropout) and map neurons (channels up to a page per column)."""
    layers = [lay for lay in model.graph.layers if lay.kind != "dropout"]
    neurons = sum(
        min(lay.output_shape[0], PAGE_SIZE) for lay in layers[:-1] if len(lay.output_shape) == 3
    )
    return len(layers), neurons


@pytest.mark.parametrize("which", ["demo_server", "explainer_server"])
def test_overview_has_a_column_per_layer_and_a_neuron_per_channel(
    which: str, request: pytest.FixtureRequest, browser: Any
) -> None:
    server: LiveServer = request.getfixturevalue(which)
    page = _open(browser, server)
    columns, neurons = _expected_counts(server.model)
    assert page.get_attribute("#overview", "data-columns") == str(columns)
    assert page.locator("canvas.neuron").count() == neurons
    assert page.locator(".outrow").count() == len(server.model.classes)
    ms = page.get_attribute("#overview", "data-draw-ms")
    print(f"{which}: overview drawn in {ms} ms (noisy shared machine)")
    _shot(page, f"overview-{which}", full=True)
    # hovering a neuron highlights the neurons it reads and shows its value range
    conv = next(lay.name for lay in server.model.graph.layers if lay.kind == "conv")
    page.hover(f"canvas.neuron[data-layer='{conv}'] >> nth=0")
    reads = server.model.graph[conv].input_shapes[0][0]
    assert page.locator("canvas.neuron.reads").count() == min(reads, PAGE_SIZE)
    assert "values" in page.locator("#tooltip").inner_text()
    _shot(page, f"overview-{which}-hover")
    page.check("#show-details")
    page.select_option("#scale-mode", "global")
    # one range for every layer but the input (pixels), and it spans every layer's values
    ends = page.eval_on_selector_all(".stage .legend .ends", "es => es.map(e => e.innerText)")
    assert len(set(ends[1:])) == 1
    _shot(page, f"overview-{which}-details-global")
    assert not page.errors


def test_conv_view_arithmetic_equals_the_network(
    explainer_server: LiveServer, browser: Any
) -> None:
    model = explainer_server.model
    page = _open(browser, explainer_server)
    neuron = "canvas.neuron[data-layer='conv_1_2'][data-channel='4']"
    page.focus(neuron)  # keyboard reachable: Enter opens the view
    page.keyboard.press("Enter")
    page.wait_for_selector("#detail[data-view=conv] #conv-result")
    for _ in range(40):  # step the window along, as a user would
        page.click("#detail button.step")
    result = page.locator("#conv-result")
    i, j = int(result.get_attribute("data-row")), int(result.get_attribute("data-col"))
    assert (i, j) == (0, 40)
    expected = float(_activations(model, model.samples[0].path)["conv_1_2"][4, i, j])
    shown = _number(result.inner_text())
    assert shown == pytest.approx(expected, abs=1.5e-3)  # printed to 3 decimals
    assert float(result.get_attribute("data-value")) == pytest.approx(expected, rel=1e-4, abs=1e-5)
    # each channel's line is x×w products summing to its printed partial sum
    lines = page.locator("#conv-arith").inner_text().splitlines()
    assert len(lines) == 8 + 1  # 8 channels written out, the other 2 summed
    # hovering the input map (relu_1_1, 62×62) moves the window there: the centre, ±1 cell
    page.hover("#detail .conv-channels canvas.map >> nth=0")
    for attr in ("data-row", "data-col"):
        assert abs(int(result.get_attribute(attr) or -9) - 31) <= 1
    _shot(page, "view-conv")
    page.keyboard.press("Escape")
    assert page.locator("#detail").is_hidden()
    # back where we were: focus on the neuron, and the unit panel shows its 10 kernel slices
    assert page.evaluate("document.activeElement.dataset.key") == "conv_1_2|4"
    page.wait_for_selector("#unit-panel canvas")
    assert page.locator("#unit-panel canvas").count() == 10
    page.locator("#unit-panel").scroll_into_view_if_needed()
    _shot(page, "unit-panel")
    assert not page.errors


@pytest.mark.parametrize(
    ("selector", "view", "result"),
    [
        ("canvas.neuron[data-layer='relu_1_1'][data-channel='2']", "activation", None),
        ("canvas.neuron[data-layer='max_pool_1'][data-channel='3']", "pool", "#pool-result"),
        ("canvas.strip[data-layer='flatten']", "flatten", "#flatten-result"),
        (".outrow[data-channel='1']", "softmax", "#softmax-result"),
    ],
)
def test_detail_views_open_show_the_right_numbers_and_close(
    explainer_server: LiveServer, explainer_page: Any, selector: str, view: str, result: str | None
) -> None:
    model = explainer_server.model
    page = explainer_page  # one page for all four: each view must close cleanly for the next
    page.evaluate("window.scrollTo(0, 0)")
    page.click(selector)
    page.wait_for_selector(f"#detail[data-view={view}]")
    page.wait_for_selector("#detail .result")
    acts = _activations(model, model.samples[0].path)
    if view == "activation":
        text = page.locator("#elementwise-formula").inner_text()
        x = float(acts["conv_1_1"][2, 0, 0])
        assert text.startswith("[0, 0]") and "max(0," in text
        assert _number(text) == pytest.approx(max(0.0, x), abs=1.5e-3)
    elif view == "pool":
        expected = float(acts["max_pool_1"][3, 0, 0])
        assert _number(page.locator(result).inner_text()) == pytest.approx(expected, abs=1.5e-3)
    elif view == "flatten":
        assert page.locator(result).get_attribute("data-index") == "0"
        page.hover("#detail canvas.map >> nth=2")  # channel 2, the centre pixel of 13×13
        assert page.locator(result).get_attribute("data-index") == str(2 * 169 + 6 * 13 + 6)
    else:
        probs = model.probabilities(model.load_image(model.samples[0].path))[0]
        assert float(page.locator(result).get_attribute("data-value")) == pytest.approx(
            float(probs[1]), rel=1e-4, abs=1e-6
        )
        # the logit itself, written out from the flattened vector and the weights
        dense = page.locator("#dense-formula .result")
        assert float(dense.get_attribute("data-value") or "nan") == pytest.approx(
            float(acts["output"][1]), rel=1e-4, abs=1e-4
        )
        assert _number(dense.inner_text()) == pytest.approx(float(acts["output"][1]), abs=1.5e-3)
    _shot(page, f"view-{view}")
    page.keyboard.press("Escape")
    assert page.locator("#detail").is_hidden()
    assert not page.errors


def test_upload_updates_the_prediction(
    explainer_server: LiveServer, browser: Any, tmp_path: Path
) -> None:
    model = explainer_server.model
    page = _open(browser, explainer_server)
    # a red-and-yellow image: the model's answer for it, computed here
    arr = np.zeros((80, 120, 3), dtype=np.uint8)
    arr[:, :60] = (220, 30, 30)
    arr[:, 60:] = (240, 220, 20)
    path = tmp_path / "upload.png"
    Image.fromarray(arr).save(path)
    expected = model.classes[int(model.probabilities(model.load_image(path)).argmax())]
    before = page.get_attribute("#processed-img", "src")
    page.set_input_files("#file-input", str(path))
    page.wait_for_function(
        "before => document.getElementById('processed-img').src !== before", arg=before
    )
    page.wait_for_function(
        "name => document.getElementById('predicted-class')?.textContent === name", arg=expected
    )
    assert page.locator(".outrow.top .cls").inner_text() == expected
    assert "120×80" in page.locator("#original-cap").inner_text()
    _shot(page, "upload", full=True)
    # drag and drop takes the same way: drop a 10×10 image made in the page
    page.evaluate(
        """async () => {
        const c = Object.assign(document.createElement('canvas'), {width: 10, height: 10});
        c.getContext('2d').fillRect(0, 0, 5, 10);
        const blob = await new Promise((r) => c.toBlob(r, 'image/png'));
        const dt = new DataTransfer();
        dt.items.add(new File([blob], 'dropped.png', {type: 'image/png'}));
        window.dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true}));
        }"""
    )
    page.wait_for_function(
        "() => document.getElementById('original-cap').textContent.includes('10×10')"
    )
    # paste: the same, from the clipboard event's image
    page.evaluate(
        """async () => {
        const c = Object.assign(document.createElement('canvas'), {width: 12, height: 9});
        const blob = await new Promise((r) => c.toBlob(r, 'image/png'));
        const dt = new DataTransfer();
        dt.items.add(new File([blob], 'pasted.png', {type: 'image/png'}));
        window.dispatchEvent(new ClipboardEvent('paste', {clipboardData: dt}));
        }"""
    )
    page.wait_for_function(
        "() => document.getElementById('original-cap').textContent.includes('12×9')"
    )
    # a file that is not an image: the server's message, shown to the user
    bad = tmp_path / "notes.txt"
    bad.write_text("not an image")
    page.set_input_files("#file-input", str(bad))
    page.wait_for_selector("#upload-error")
    assert "Upload failed" in page.locator("#upload-error").inner_text()
    assert not page.errors


def test_a_late_answer_never_overwrites_a_newer_choice(
    explainer_server: LiveServer, browser: Any, tmp_path: Path
) -> None:
    """A sample's trace held back by the network arrives after a failed upload: the upload's
    error stays, and the held-back prediction is not drawn over it (it was, under load)."""
    page = _open(browser, explainer_server)
    held: list[Any] = []
    page.route("**/api/v1/trace?image=sample-3*", lambda route: held.append(route))
    page.locator("#samples button").nth(3).click()
    deadline = time.monotonic() + 10
    while not held and time.monotonic() < deadline:
        page.wait_for_timeout(50)
    assert held, "the sample's trace request was not made"
    bad = tmp_path / "notes.txt"
    bad.write_text("not an image")
    page.set_input_files("#file-input", str(bad))
    page.wait_for_selector("#upload-error")
    held[0].continue_()
    page.wait_for_timeout(1500)  # the held-back trace arrives and is dropped
    assert page.locator("#upload-error").is_visible()
    assert page.locator("#predicted-class").count() == 0


def test_playground_flags_a_stride_that_does_not_tile(
    demo_server: LiveServer, browser: Any
) -> None:
    page = _open(browser, demo_server)
    page.fill("#pg-n", "8")
    page.dispatch_event("#pg-n", "change")
    page.fill("#pg-s", "2")
    page.dispatch_event("#pg-s", "change")
    assert "does not tile" in page.locator("#pg-error").inner_text()
    assert page.get_attribute("#playground", "data-tiles") == "false"
    page.locator("#playground").scroll_into_view_if_needed()
    _shot(page, "playground-error")
    page.fill("#pg-n", "7")
    page.dispatch_event("#pg-n", "change")
    assert page.locator("#pg-error").inner_text() == ""
    assert "= 4 / 2 + 1 = 3" in page.locator("#pg-formula").inner_text()


def test_an_explanation_map_appears(explainer_server: LiveServer, browser: Any) -> None:
    page = _open(browser, explainer_server)
    names = page.eval_on_selector_all("#explain-method option", "os => os.map(o => o.value)")
    if not names:
        pytest.skip("this build has no explanation methods")
    for method in [m for m in ("saliency", "grad-cam") if m in names] or names[:1]:
        page.select_option("#explain-method", method)
        page.click("#explain-run")
        page.wait_for_selector(f".explain-card[data-method='{method}']", timeout=20_000)
    # a chosen target class: the card names it; the newest card comes first
    before = page.locator(".explain-card").count()
    page.select_option("#explain-target", "1")
    page.click("#explain-run")
    page.wait_for_function(
        "n => document.querySelectorAll('.explain-card').length === n + 1",
        arg=before,
        timeout=20_000,
    )
    assert (
        f"→ {explainer_server.model.classes[1]}" in page.locator(".explain-card").first.inner_text()
    )
    img = page.locator(".explain-card img").first
    src = img.get_attribute("src") or ""
    assert src.startswith("data:image/png;base64,")
    assert Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).size[0] > 0
    page.locator("#explain-panel").scroll_into_view_if_needed()
    _shot(page, "explain")
    assert not page.errors


@pytest.fixture(scope="module")
def resnet_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    model = build("resnet18:width=8,input_size=32,num_classes=5", seed=0).eval()
    path = tmp_path_factory.mktemp("resnet") / "sample.png"
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(path)
    model.samples.append(Sample(path, label=None))
    srv = LiveServer.explainer(model)
    yield srv
    srv.stop()


def test_branching_model_strided_padded_conv(resnet_server: LiveServer, browser: Any) -> None:
    """ResNet: skip arcs drawn; a stride-2, padding-1 conv's arithmetic at the padded corner."""
    model = resnet_server.model
    page = _open(browser, resnet_server)
    # every input that is not the column just before is drawn as one arc: the identity
    # shortcuts into each add, and the downsample convs reading their block's input
    layers = model.graph.layers
    skips = sum(
        name != layers[i - 1].name for i in range(1, len(layers)) for name in layers[i].inputs
    )
    assert skips == 8 + 3
    assert page.locator(".edge.skip").count() == skips
    layer = model.graph["layer2.0.conv1"]
    assert layer.hyper["stride"] == [2, 2] and layer.hyper["padding"] == [1, 1]
    neuron = page.locator("canvas.neuron[data-layer='layer2.0.conv1']").first  # most active
    channel = int(neuron.get_attribute("data-channel") or -1)
    neuron.click()
    page.wait_for_selector("#detail[data-view=conv] #conv-result")
    scrolled = page.eval_on_selector("#overview", "e => e.scrollLeft")
    # the whole network fits the window's width (smaller thumbnails), nothing to scroll
    assert page.eval_on_selector("#overview", "e => e.scrollWidth - e.clientWidth") <= 0
    acts = _activations(model, model.samples[0].path)["layer2.0.conv1"][channel : channel + 1]
    for step in range(3):  # (0, 0) reads the padding on two sides, then along the top row
        result = page.locator("#conv-result")
        assert (result.get_attribute("data-row"), result.get_attribute("data-col")) == (
            "0",
            str(step),
        )
        assert _number(result.inner_text()) == pytest.approx(float(acts[0, 0, step]), abs=1.5e-3)
        page.click("#detail button.step")
    _shot(page, "view-conv-resnet")
    page.keyboard.press("Escape")
    assert page.eval_on_selector("#overview", "e => e.scrollLeft") == scrolled  # same place
    page.locator("canvas.neuron[data-layer='add']").first.click()
    page.wait_for_selector("#detail[data-view=activation] #elementwise-formula .result")
    assert " + " in page.locator("#elementwise-formula").inner_text()
    _shot(page, "view-add-resnet")
    page.keyboard.press("Escape")
    # a 16-channel layer shows the 10 most active, then the other 6 on the next page
    name = "layer2.0.conv1"
    shown = page.eval_on_selector_all(
        f"canvas.neuron[data-layer='{name}']", "cs => cs.map(c => +c.dataset.channel)"
    )
    page.click(f"button[aria-label='next channels of {name}']")
    rest = page.eval_on_selector_all(
        f"canvas.neuron[data-layer='{name}']", "cs => cs.map(c => +c.dataset.channel)"
    )
    assert sorted(shown + rest) == list(range(16))
    peak = _activations(model, model.samples[0].path)[name].amax(dim=(1, 2))
    assert peak[shown].min() >= peak[rest].max()
    assert not page.errors
