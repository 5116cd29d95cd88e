"""The explainer's layout at common window sizes and its second-pass interactions, in a real
headless Chromium (Playwright, Debian's chromium) against the real server.

Every check reads element boxes from the page (``getBoundingClientRect``) and compares them
with the viewport; nothing is judged by eye. One server per model and one browser for the
whole module keep this lean. With ``CONVLENS_WEB_SHOTS=1`` screenshots go to
``tests/artifacts/web/layout/`` (docs/img/ holds the ones docs/explainer.md shows).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from convlens.model import Model, build, load_model
from convlens.model.core import Sample
from web_harness import CHROMIUM, LiveServer

pytestmark = pytest.mark.browser

ARTIFACTS = Path(__file__).resolve().parent / "artifacts" / "web" / "layout"
EXPLAINER = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "cnn-explainer"
SIZES = [(1280, 800), (1366, 768), (1920, 1080), (800, 1000), (1024, 768)]

if not CHROMIUM.exists():
    pytest.skip("Debian's chromium is not installed at /usr/bin/chromium", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
uvicorn = pytest.importorskip("uvicorn", reason="uvicorn is not installed")
server_mod = pytest.importorskip("convlens.web.server", reason="the web server is not available")


def _resnet18(tmp: Path) -> Model:
    """The zoo's ResNet-18 (all its layers, 1000 classes) with seeded random weights and one
    sample, at 112×112 input: the same 60 columns, a quarter of 224×224's trace to send."""
    model = build("resnet18:input_size=112", seed=0).eval()
    path = tmp / "noise.png"
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 255, (112, 112, 3), dtype=np.uint8)).save(path)
    model.samples.append(Sample(path, label=None))
    return model


def _no_samples() -> Model:
    model = build("tiny-vgg:in_channels=1,input_size=28", seed=0).eval()
    model.samples.clear()
    return model


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, LiveServer]]:
    if not (EXPLAINER / "model.json").is_file():
        pytest.skip(f"CNN Explainer fixture not found at {EXPLAINER}")
    made = {
        "demo": LiveServer.explainer(load_model("demo").eval()),
        "explainer": LiveServer.explainer(load_model(str(EXPLAINER)).eval()),
        "resnet18": LiveServer.explainer(_resnet18(tmp_path_factory.mktemp("resnet18"))),
    }
    yield made
    for srv in made.values():
        srv.stop()


def _open(browser: Any, server: LiveServer, size: tuple[int, int] = (1280, 800)) -> Any:
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
    """A screenshot when CONVLENS_WEB_SHOTS is set (each costs seconds; docs/img/ is made so)."""
    if not os.environ.get("CONVLENS_WEB_SHOTS"):
        return
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
  const parts = [...ov.querySelectorAll(
    'canvas.neuron, canvas.strip, .outrow, svg text, .stage > .legend')];
  const legends = [...ov.querySelectorAll('.stage > .legend')].map(box)
    .sort((a, b) => a.left - b.left);
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
    mapColumns: new Set([...ov.querySelectorAll('canvas.neuron')].map((n) => n.dataset.layer)).size,
    legends: legends.length,
    legendOverlaps: legends.filter((b, i) => i > 0 && b.left < legends[i - 1].right - 0.5).length,
    wide: [...ov.querySelectorAll('.stage > *, svg *')]
      .filter((e) => e.getBoundingClientRect().right > ov.getBoundingClientRect().right)
      .map((e) => e.className.baseVal ?? e.className).slice(0, 5),
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


@pytest.mark.slow
@pytest.mark.parametrize("which", ["demo", "explainer", "resnet18"])
def test_every_class_and_the_whole_overview_fit_each_window(
    servers: dict[str, LiveServer], browser: Any, which: str
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
        # a colour key under every map column where one fits (not under ResNet-18's 60)
        if which != "resnet18":
            assert got["legends"] == got["mapColumns"], f"{where}: {got['legends']} legends"
        assert got["legendOverlaps"] == 0, where
        _shot(page, f"{which}-{size[0]}x{size[1]}")
    assert not page.errors and not page.console_errors, (page.errors, page.console_errors)
    page.close()


# --------------------------------------------------------------------------- interactions


@pytest.fixture(scope="module")
def nosamples_server() -> Iterator[LiveServer]:
    srv = LiveServer.explainer(_no_samples())
    yield srv
    srv.stop()


def test_a_failed_upload_keeps_the_layout(
    servers: dict[str, LiveServer], browser: Any, tmp_path: Path
) -> None:
    page = _open(browser, servers["demo"], (1280, 800))
    boxes = "() => [...document.querySelectorAll('#samples button')].map((b) => {" \
        " const r = b.getBoundingClientRect(); return [r.left, r.top, r.width]; })"  # fmt: skip
    before = page.evaluate(boxes)
    assert len({round(t) for _, t, _ in before}) >= 2  # a grid: several rows and columns
    bad = tmp_path / ("not-an-image-" + "x" * 80 + ".png")
    bad.write_bytes(b"this is not a PNG " * 50)
    page.set_input_files("#file-input", str(bad))
    page.wait_for_selector("#upload-error")
    assert page.evaluate(boxes) == before  # the thumbnails stay where they were
    err = page.evaluate(
        "() => { const r = document.querySelector('.upload-error').getBoundingClientRect();"
        " return {left: r.left, right: r.right, page: document.documentElement.scrollWidth}; }"
    )
    assert err["left"] >= 0 and err["right"] <= 1280 and err["page"] <= 1280, err
    _shot(page, "upload-error-1280x800")
    page.click("button[aria-label='dismiss the upload error']")
    assert page.locator("#upload-error").count() == 0
    assert not page.errors
    page.close()


_DELAY_JS = """(needle) => {
  const real = window.fetch;
  window.__delayed = 0;
  window.fetch = (url, opts) => {
    if (String(url).includes(needle) && window.__delayed++ === 0) {  // only the first one
      return new Promise((ok) => setTimeout(() => ok(real(url, opts)), 1500));
    }
    return real(url, opts);
  };
}"""


@pytest.mark.slow
def test_stale_unit_and_explanation_results_never_show(
    servers: dict[str, LiveServer], browser: Any
) -> None:
    page = _open(browser, servers["explainer"], (1280, 800))
    # the unit panel: the first (slow) click's answer comes after the second's and is dropped
    page.evaluate(_DELAY_JS, "/units/conv_1_1/")
    page.locator("canvas.neuron[data-layer='conv_1_1']").first.click()
    page.keyboard.press("Escape")
    second = page.locator("canvas.neuron[data-layer='conv_1_2']").first
    key = second.get_attribute("data-key")
    second.click()
    page.keyboard.press("Escape")
    page.wait_for_selector(f"#unit-title[data-unit='{key}']")
    page.wait_for_timeout(1800)  # the slow answer has come back by now
    assert page.get_attribute("#unit-title", "data-unit") == key
    # explanations: a result for the previous image is dropped, cards name their image
    page.evaluate(_DELAY_JS, "/explain")
    page.select_option("#explain-method", "saliency")
    page.click("#explain-run")
    page.locator("#samples button").nth(2).click()
    page.wait_for_function("() => document.querySelector('#explain-status').textContent"
                           ".includes('dropped')")  # fmt: skip
    assert page.locator(".explain-card").count() == 0
    image = page.get_attribute("#samples button >> nth=2", "data-id")
    page.click("#explain-run")
    page.wait_for_selector(f".explain-card[data-image='{image}']")
    label = page.locator(".explain-card .card-image").inner_text()
    name = servers["explainer"].model.samples[2].path.name
    assert name in label
    page.locator("#samples button").nth(5).click()
    page.wait_for_function("() => !document.querySelector('.explain-card')")
    assert not page.errors
    page.close()


def test_the_colour_maps_of_page_and_server_are_one_definition() -> None:
    """color.js's explanation stops are io/color.py's anchors, hex for hex."""
    from convlens.io import color

    js = (Path(server_mod.__file__).parent / "static" / "js" / "color.js").read_text()
    for js_name, py_name in (("RDBU", "rdbu"), ("VIRIDIS", "viridis")):
        block = re.search(rf"export const {js_name} = \[(.*?)\]\.map", js, re.S)
        assert block, js_name
        assert re.findall(r"#[0-9a-f]{6}", block.group(1)) == list(color._ANCHORS[py_name])


# The overlay's heat colours (unblended: heat = 2·overlay − image, alpha 0.5) and the map
# canvas's colours, each measured as the distance to the nearest colour of the card's legend
# scale (its 256-entry table), and to the nearest of another map (PuOr) for contrast.
_COLOURS_JS = """async (card) => {
  const c = document.querySelector(`.explain-card[data-method='${card}']`);
  const key = c.querySelector('.explain-legend');
  const stops = JSON.parse(key.dataset.stops);
  const table = (st) => Array.from({length: 256}, (_, k) => { const u = k / 255 * (st.length - 1);
    const i = Math.min(st.length - 2, Math.floor(u)); const f = u - i;
    return [0, 1, 2].map((q) => Math.round(st[i][q] + (st[i + 1][q] - st[i][q]) * f)); });
  const puor = [[179, 88, 6], [241, 163, 64], [254, 224, 182], [247, 247, 247],
    [216, 218, 235], [153, 142, 195], [84, 39, 136]];  // the overview's map, for contrast
  const near = (t, p) => Math.min(...t.map((q) => Math.hypot(q[0] - p[0], q[1] - p[1],
    q[2] - p[2])));
  const pixels = async (src) => { const im = new Image(); im.src = src; await im.decode();
    const cv = document.createElement('canvas');
    [cv.width, cv.height] = [im.naturalWidth, im.naturalHeight];
    const g = cv.getContext('2d'); g.drawImage(im, 0, 0);
    return g.getImageData(0, 0, cv.width, cv.height); };
  const ov = await pixels(c.querySelector('img.overlay').src);
  const base = await pixels(document.getElementById('processed-img').src);
  const mapCv = c.querySelector('canvas.map');
  const mp = mapCv.getContext('2d').getImageData(0, 0, mapCv.width, mapCv.height);
  const [T, P] = [table(stops), table(puor)];
  const heat = []; const mapPx = [];
  for (let k = 0; k < ov.data.length; k += 4) {
    const p = [0, 1, 2].map((q) => 2 * ov.data[k + q] - base.data[k + q]);
    if (near([[247, 247, 247]], p) > 40) heat.push(p); // not the zero white both maps share
  }
  for (let k = 0; k < mp.data.length; k += 4 * 3) {
    mapPx.push([mp.data[k], mp.data[k + 1], mp.data[k + 2]]);
  }
  const median = (a) => a.sort((x, y) => x - y)[Math.floor(a.length / 2)];
  return { same: [ov.width, ov.height, base.width, base.height],
    n: heat.length, heat: median(heat.map((p) => near(T, p))),
    heatOther: median(heat.map((p) => near(P, p))),
    map: Math.max(...mapPx.map((p) => near(T, p))), lo: +key.dataset.lo, hi: +key.dataset.hi,
    ends: [...key.querySelectorAll('.ends span')].map((s) => s.textContent) };
}"""


@pytest.mark.slow
def test_overlay_map_and_legend_share_one_colour_map(
    servers: dict[str, LiveServer], browser: Any
) -> None:
    page = _open(browser, servers["demo"], (1280, 800))
    for method, signed in (("occlusion", True), ("saliency", False)):
        page.select_option("#explain-method", method)
        page.click("#explain-run")
        page.wait_for_selector(f".explain-card[data-method='{method}']", timeout=30_000)
        got = page.evaluate(_COLOURS_JS, method)
        assert got["same"][:2] == got["same"][2:]  # overlay at the input's size
        assert got["map"] == 0, got  # the map is painted from the legend's table
        assert got["n"] >= 20, got  # enough coloured pixels to judge
        assert got["heat"] <= 6 and got["heatOther"] > 3 * max(2.0, got["heat"]), got
        assert (got["lo"] == -got["hi"]) is signed, got
        words = page.locator(f".explain-card[data-method='{method}'] .legend-words").inner_text()
        assert ("white = 0" in words) is signed
    page.locator("#explain-panel").scroll_into_view_if_needed()
    _shot(page, "explanations-1280x800")
    page.close()


@pytest.mark.slow
def test_relu_plot_softmax_steps_flatten_edges(
    servers: dict[str, LiveServer], browser: Any
) -> None:
    srv = servers["explainer"]
    page = _open(browser, srv, (1280, 800))
    # ReLU: the hovered element sits on the plotted curve y = max(0, x)
    page.locator("canvas.neuron[data-layer='relu_1_1']").first.click()
    page.wait_for_selector("#relu-plot path.curve")
    seen = set()
    for x, y in ((20, 20), (150, 150), (250, 60)):
        page.hover("#detail canvas.map >> nth=0", position={"x": x, "y": y})
        px, py = (float(page.get_attribute("#relu-plot", a) or "nan") for a in ("data-x", "data-y"))
        assert py == pytest.approx(max(0.0, px), abs=1e-6)
        seen.add(px)
    assert len(seen) == 3
    _shot(page, "relu-plot-1280x800")
    page.keyboard.press("Escape")
    # softmax: the steps come one after another, logits coloured, e^z = exp(z)
    k = 1
    page.locator(f".outrow[data-channel='{k}']").click()
    page.wait_for_selector("#softmax-table")
    page.evaluate("() => { window.__stages = [];"
                  " const t = document.getElementById('softmax-table');"
                  " new MutationObserver(() => window.__stages.push(t.dataset.stage))"
                  ".observe(t, {attributes: true}); }")  # fmt: skip
    page.wait_for_selector("#softmax-table[data-stage='4']")
    stages = page.evaluate("() => window.__stages")
    assert stages[-3:] == ["2", "3", "4"], stages
    cells = page.eval_on_selector_all(
        "#softmax-table tr[data-k]",
        "rs => rs.map(r => [r.children[1].textContent, r.children[2].textContent,"
        " getComputedStyle(r.children[1]).backgroundColor])",
    )
    z = [float(a.replace("−", "-")) for a, _, _ in cells]
    for (_, e, _), zi in zip(cells, z, strict=True):
        assert float(e.replace("−", "-")) == pytest.approx(np.exp(zi), rel=2e-3, abs=2e-3)
    colours = {c for _, _, c in cells}
    assert len(colours) >= len(cells) - 1  # coloured by value
    _shot(page, "softmax-1280x800")
    # flatten, reached from the class: an edge per unit into class k, coloured by the weight
    page.click("#flatten-link")
    page.wait_for_selector(f"#flatten-edges[data-target='{k}']")
    linear = [m for m in srv.model.modules() if isinstance(m, __import__("torch").nn.Linear)][-1]
    w = linear.weight.detach().numpy()[k]
    edges = page.eval_on_selector_all(
        "#flatten-edges .fedge",
        "ps => ps.map(p => [+p.dataset.j, +p.dataset.w, p.getAttribute('stroke')])",
    )
    assert len(edges) == w.size == 1690
    for j, wj, stroke in edges[::97]:
        assert wj == pytest.approx(float(w[j]), abs=1e-6)
        r, _, b = (int(v) for v in stroke[4:-1].split(","))
        assert (r > b) == (wj > 0), (j, wj, stroke)  # red for positive, blue for negative
    _shot(page, "flatten-edges-1280x800")
    assert not page.errors
    page.close()


@pytest.mark.slow
def test_playground_numbers_up_to_32(servers: dict[str, LiveServer], browser: Any) -> None:
    page = _open(browser, servers["demo"], (800, 1000))
    page.fill("#pg-n", "40")  # over the cap: held at 32
    page.dispatch_event("#pg-n", "change")
    assert page.input_value("#pg-n") == "32"
    page.fill("#pg-p", "1")
    page.dispatch_event("#pg-p", "change")
    read = "ts => ts.map(t => +t.textContent.replace('−', '-'))"
    x = np.array(page.eval_on_selector_all("#pg-input text", read)).reshape(34, 34)
    w = np.array(page.eval_on_selector_all("#pg-kernel text", read)).reshape(3, 3)
    y = np.array(page.eval_on_selector_all("#pg-output text", read)).reshape(32, 32)
    assert (x[0] == 0).all() and (x[:, -1] == 0).all()  # the padding ring shows its zeros
    want = np.array([[(x[i : i + 3, j : j + 3] * w).sum() for j in range(32)] for i in range(32)])
    assert (y == want).all()
    cell = page.evaluate("() => document.querySelector('#pg-input rect').getBBox().width")
    font = page.evaluate(
        "() => parseFloat(document.querySelector('#pg-output text').style.fontSize)"
    )
    assert cell >= 12 and font >= 7  # readable
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 800
    page.locator("#playground").scroll_into_view_if_needed()
    _shot(page, "playground-800x1000")
    page.close()


def test_the_detail_view_expands_in_place(servers: dict[str, LiveServer], browser: Any) -> None:
    page = _open(browser, servers["explainer"], (1366, 768))
    neuron = page.locator("canvas.neuron[data-layer='conv_2_1']").nth(2)
    box = neuron.bounding_box()
    wrap = page.locator(".overview-wrap").bounding_box()
    page.evaluate(  # record every animation started, with its first frame's clip
        "() => { window.__anims = []; const real = Element.prototype.animate;"
        " Element.prototype.animate = function (frames, opts) {"
        " window.__anims.push([this.id, frames[0].clipPath, opts.duration]);"
        " return real.call(this, frames, opts); }; }"
    )
    neuron.click()
    page.wait_for_selector("#detail #conv-result")
    anims = page.evaluate("() => window.__anims")
    assert [a[0] for a in anims] == ["detail"] and anims[0][2] > 0, anims  # it grows ...
    top, right, _, left = (float(v) for v in re.findall(r"(-?[\d.]+)px", anims[0][1])[:4])
    assert abs(left - (box["x"] - wrap["x"])) <= 2 and abs(top - (box["y"] - wrap["y"])) <= 2
    assert abs(wrap["width"] - left - right - box["width"]) <= 3  # ... out of the clicked map
    page.wait_for_selector("#detail[data-expanding=false]")
    page.wait_for_selector("#detail #conv-result")
    inside = page.evaluate(
        "() => document.getElementById('detail').parentElement.classList.contains('overview-wrap')"
    )
    assert inside  # in place, inside the overview's box, not a separate dialog
    got = page.locator("#detail").bounding_box()
    assert abs(got["x"] - wrap["x"]) <= 2 and abs(got["width"] - wrap["width"]) <= 3  # its border
    _shot(page, "expanded-conv-1366x768")
    page.keyboard.press("Escape")
    assert page.locator("#detail").is_hidden()
    page.close()


def test_no_sample_images_no_broken_pictures_no_404(
    nosamples_server: LiveServer, browser: Any
) -> None:
    page = _open(browser, nosamples_server, (1280, 800))
    assert "upload one" in page.locator("#status").inner_text()
    broken = page.evaluate(
        "() => [...document.images].filter((i) => i.getClientRects().length"
        " && getComputedStyle(i).visibility !== 'hidden' && !i.naturalWidth).length"
    )
    assert broken == 0
    page.wait_for_timeout(300)
    assert not page.console_errors and not page.errors, page.console_errors
    page.close()
