"""Big models in the explainer: a quantized overview trace, exact numbers in the detail views.

The page quantizes the overview's trace (``encoding=uint8``) for a model above a size
threshold; ``?trace=uint8`` forces it here on CNN Explainer's Tiny VGG (a small model, quick
to serve). The detail views must still print the network's own numbers: they fetch the exact
maps (``GET /activations``, or the layer uncapped in float32), and the server answers those
from the forward pass it recorded for the trace (no second pass).
"""

from __future__ import annotations

import re
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
import torch.nn.functional as F
from PIL import Image

from convlens.model import Model, build, load_model
from convlens.model.core import Sample
from convlens.probe import record_all
from convlens.trace.encode import decode_tensor
from convlens.web import create_app
from convlens.web import server as server_mod
from convlens.web import traces as traces_mod
from convlens.web.guard import Access
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
    real = traces_mod.record

    def counted(m: Model, x: torch.Tensor) -> Any:
        passes.append(1)
        return real(m, x)

    monkeypatch.setattr(traces_mod, "record", counted)
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
        real = traces_mod.record

        def counted(m: Model, x: torch.Tensor) -> Any:
            passes.append(1)
            return real(m, x)

        mp.setattr(traces_mod, "record", counted)
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
    module = model.graph["conv_1_2"].module
    assert module is not None
    conv = model.net.get_submodule(module)
    assert isinstance(conv, torch.nn.Conv2d)
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


# ------------------------------------------------------------------ the first trace, early

STATIC = Path(__file__).resolve().parents[1] / "src" / "convlens" / "web" / "static"


def _sampled(tmp_path: Path, n: int = 2) -> Model:
    model = build("tiny-vgg:in_channels=1,input_size=16,num_classes=3", seed=0).eval()
    rng = np.random.default_rng(0)
    for k in range(n):
        path = tmp_path / f"s{k}.png"
        Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8), "L").save(path)
        model.samples.append(Sample(path, label=k))
    return model


def _slow_counted_record(monkeypatch: pytest.MonkeyPatch, seconds: float) -> list[int]:
    """Count the server's forward passes, each made to last ``seconds`` (so requests overlap)."""
    passes: list[int] = []
    real = traces_mod.record

    def slow(m: Model, x: torch.Tensor) -> Any:
        passes.append(1)
        time.sleep(seconds)
        return real(m, x)

    monkeypatch.setattr(traces_mod, "record", slow)
    return passes


def test_the_page_rule_and_the_server_rule_agree() -> None:
    """The server prepares and preloads the trace the page will ask for: the same caps and
    encoding rule on both sides (static/js/config.js and web/traces.py)."""
    config = (STATIC / "js" / "config.js").read_text()

    def js_number(name: str) -> int:
        found = re.search(rf"export const {name} = ([\d_]+);", config)
        assert found, f"{name} not in config.js"
        return int(found[1].replace("_", ""))

    assert js_number("OVERVIEW_MAX_SIZE") == traces_mod.OVERVIEW_MAX_SIZE
    assert js_number("QUANTIZE_ABOVE") == traces_mod.QUANTIZE_ABOVE
    assert js_number("PAGE_SIZE") == traces_mod.PAGE_SIZE
    big, small = build("vgg16"), build("tiny-vgg")
    # main.js's activationNumbers, independently: one forward pass's outputs, counted
    with torch.no_grad():
        acts, _ = record_all(small, torch.zeros(1, *small.spec.shape))
    assert traces_mod.activation_numbers(small) == sum(v[0].numel() for v in acts.values())
    assert traces_mod.overview_encoding(big) == "uint8"
    assert traces_mod.overview_encoding(small) == "float32"
    assert traces_mod.overview_encoding(small, "uint8") == "uint8"
    assert traces_mod.overview_encoding(big, "float32") == "float32"
    assert traces_mod.overview_encoding(big, "bogus") == "uint8"
    # api.js's getTrace puts image, max_size, encoding (only when not float32), then
    # top_channels (main.js asks for the first page of a quantized trace's maps only)
    assert traces_mod.overview_trace_query(big, "sample-0") == (
        "image=sample-0&max_size=64&encoding=uint8&top_channels=10"
    )
    assert traces_mod.overview_top_channels("float32") is None
    assert traces_mod.overview_trace_query(small, "sample-0") == "image=sample-0&max_size=64"


def _module_graph(entry: str, dynamic: bool) -> set[str]:
    """The modules ``entry`` imports, directly or not: statically only, or also by ``import()``."""
    static = r"""(?:\bimport\s+|\bfrom\s*)['"]\./([\w.-]+)['"]"""
    spec = re.compile(static + (r"""|\bimport\s*\(\s*['"]\./([\w.-]+)['"]""" if dynamic else ""))
    seen, todo = set(), [entry]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            found = spec.findall((STATIC / "js" / name).read_text())
            todo += [m for groups in found for m in (groups if dynamic else [groups]) if m]
    return seen


def test_the_modulepreload_list_is_the_first_draws_module_graph() -> None:
    """index.html preloads exactly the modules main.js imports statically, directly or not (a
    stale list would fetch a module the page never runs, or leave one to the import waterfall);
    the modules main.js imports after the first draw (``import()``) are not fetched before it."""
    html = (STATIC / "index.html").read_text()
    listed = re.findall(r'<link rel="modulepreload" href="/static/js/([\w.-]+)">', html)
    first = _module_graph("main.js", dynamic=False)
    assert len(listed) == len(set(listed))
    assert set(listed) == first
    later = _module_graph("main.js", dynamic=True) - first
    # the detail views and the panels, with every view they import
    assert {"detail.js", "conv-view.js", "softmax-view.js", "playground.js", "timeline.js"} <= later
    assert all((STATIC / "js" / name).is_file() for name in later)


def test_a_request_during_the_warm_up_waits_for_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The start-up's first trace and the page's request for it: one forward pass, one body,
    the same bytes as a server that computed it on request."""
    model = _sampled(tmp_path)
    passes = _slow_counted_record(monkeypatch, 0.5)
    app = create_app(model)
    state = app.state.convlens
    flight = state.traces.warm()
    assert flight is not None and not flight.done()  # in flight while the request comes
    with TestClient(app, base_url="http://127.0.0.1") as client:
        got = client.get("/api/v1/trace", params={"image": "sample-0", "max_size": 64})
        assert got.status_code == 200 and flight.done() and got.content == flight.result()
        assert len(passes) == 1
    with TestClient(create_app(model), base_url="http://127.0.0.1") as fresh:
        want = fresh.get("/api/v1/trace", params={"image": "sample-0", "max_size": 64})
    assert want.content == got.content
    assert len(passes) == 2  # the fresh server's own pass


def test_concurrent_requests_for_one_trace_run_it_once(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    model = _sampled(tmp_path)
    passes = _slow_counted_record(monkeypatch, 0.3)
    app = create_app(model)
    srv = LiveServer(app, model)
    try:
        params = {"image": "sample-1", "encoding": "uint8"}
        with ThreadPoolExecutor(3) as pool:
            answers = list(
                pool.map(lambda _: httpx.get(srv.url + "api/v1/trace", params=params), range(3))
            )
    finally:
        srv.stop()
    assert [r.status_code for r in answers] == [200] * 3
    assert answers[0].content == answers[1].content == answers[2].content
    assert len(passes) == 1
    # and a channel asked for while a trace of its image records: no second pass either
    with TestClient(app, base_url="http://127.0.0.1") as client:
        layer = next(lay.name for lay in model.graph if lay.kind == "conv")
        flight = app.state.convlens.traces.body(
            "sample-0", traces_mod.TraceOptions(max_channels=4, max_size=8)
        )
        got = client.get(f"/api/v1/activations/{layer}/0", params={"image": "sample-0"})
        assert got.status_code == 200 and flight.result(timeout=30)
    assert len(passes) == 2


def test_the_warm_up_keeps_to_the_budgets(tmp_path: Path) -> None:
    """No warm-up past the server's number budget (the page's request would be refused), none
    without samples, none when the trace queue is full; a failed one is not kept."""
    from convlens.web import ServerConfig

    model = _sampled(tmp_path)
    tight = create_app(model, config=ServerConfig(trace_max_numbers=10))
    assert tight.state.convlens.traces.warm() is None
    bare = build("tiny-vgg:in_channels=1,input_size=16,num_classes=3", seed=0).eval()
    assert create_app(bare).state.convlens.traces.warm() is None
    full = create_app(model, config=ServerConfig(trace_workers=1, queue=0))
    state = full.state.convlens
    gate = threading.Event()
    blocker = state.trace_pool.submit(gate.wait)
    try:
        assert state.traces.warm() is None  # 503 for it: the queue is the requests'
    finally:
        gate.set()
        blocker.result(timeout=10)
    state.shutdown()
    # a sample that cannot be read: the warm-up fails, quietly, and the request says why
    (tmp_path / "s0.png").write_bytes(b"not a png")
    broken = create_app(model).state.convlens
    flight = broken.traces.warm()
    assert flight is not None and flight.exception(timeout=30) is not None
    again = broken.traces.warm()  # the failure was not kept: tried anew
    assert again is not None and again is not flight and again.exception(timeout=30)
    broken.shutdown()


def test_the_page_gets_its_first_trace_preloaded(tmp_path: Path) -> None:
    """``GET /`` names the first trace for the browser to fetch beside ``/model``: the sample
    and caps the page asks for, the encoding by the page's rule or its ``?trace=``."""
    model = _sampled(tmp_path)
    with TestClient(create_app(model), base_url="http://127.0.0.1") as client:
        html = client.get("/").text
        assert html.count('rel="preload"') == 2
        assert (
            '<link rel="preload" href="/api/v1/trace?image=sample-0&amp;max_size=64" '
            'as="fetch" crossorigin="anonymous">'
        ) in html
        forced = client.get("/", params={"trace": "uint8"}).text
        assert (
            "/api/v1/trace?image=sample-0&amp;max_size=64&amp;encoding=uint8&amp;top_channels=10"
            in forced
        )
    bare = build("tiny-vgg:in_channels=1,input_size=16,num_classes=3", seed=0).eval()
    with TestClient(create_app(bare), base_url="http://127.0.0.1") as client:
        assert "/api/v1/trace" not in client.get("/").text  # no sample: nothing to preload


def test_the_app_answers_its_first_requests_once_at_start_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lifespan's start asks the page and a static file of the app itself (what FastAPI
    builds on a first request is then built before a visitor comes), through the routes only,
    and a failure there neither stops the start nor the visitor's own request."""
    model = _sampled(tmp_path)
    asked: list[str] = []
    real = server_mod.with_trace_preload

    def counted(html: str, state: Any, trace: str | None = None) -> str:
        asked.append(html[:15])
        return real(html, state, trace)

    monkeypatch.setattr(server_mod, "with_trace_preload", counted)
    app = create_app(model)
    with TestClient(app, base_url="http://127.0.0.1") as client:
        assert asked == ["<!doctype html>"]  # the page, once, before any client request
        assert client.get("/").status_code == 200 and len(asked) == 2
    asked.clear()  # a server with a token asks itself with it (the guard refuses others)
    with TestClient(create_app(model, access=Access(token="t")), base_url="http://127.0.0.1"):
        assert len(asked) == 1

    def broken(html: str, state: Any, trace: str | None = None) -> str:
        raise RuntimeError("no page")

    monkeypatch.setattr(server_mod, "with_trace_preload", broken)
    with TestClient(create_app(model), base_url="http://127.0.0.1") as client:
        assert client.get("/static/css/style.css").status_code == 200
        assert client.get("/api/v1/model").json()["name"] == model.name


@pytest.mark.browser
def test_the_preloaded_trace_is_the_one_the_page_uses(served: _Counted, page: Any) -> None:
    """One trace request at load (the preload, taken by the page's own fetch), and the page
    drew from it."""
    html = httpx.get(served.url, params={"trace": "uint8"}).text
    href = re.search(r'href="(/api/v1/trace\?[^"]+)"', html)
    assert href is not None
    traces = [u for u in page.requests if "/api/v1/trace?" in u]
    assert traces[0] == served.url.rstrip("/") + href[1].replace("&amp;", "&")
    used = page.evaluate(
        """() => performance.getEntriesByType('resource')
            .filter((e) => e.name.includes('/api/v1/trace?')).map((e) => e.initiatorType)"""
    )
    assert used[:1] == ["link"] and len(used) == len(set(traces))  # fetched once, by the link
    # index.html's inline script took both preloads and parsed them early; api.js used them
    assert sum(u.endswith("/api/v1/model") for u in page.requests) == 1
    assert page.evaluate("() => globalThis.convlensEarly.size") == 0


# ------------------------------------------------------------------ the first page of channels


def _wide(tmp_path: Path) -> Model:
    """Tiny VGG 24 channels wide (more than a page of 10) with one sample."""
    model = build("tiny-vgg:in_channels=1,input_size=16,num_classes=3,width=24", seed=0).eval()
    path = tmp_path / "wide.png"
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8), "L").save(path)
    model.samples.append(Sample(path, label=0))
    return model


@pytest.mark.parametrize("encoding", ["uint8", "float32"])
def test_top_channels_are_the_whole_traces_rows_of_the_most_active(
    tmp_path: Path, encoding: str
) -> None:
    """``top_channels=k``: of each map, the k channels with the largest maximum (ties to the
    lower index), their rows byte for byte the whole trace's (offset and scale included); the
    layer's paged rest (``layers=``) is the whole trace's too."""
    model = _wide(tmp_path)
    with TestClient(create_app(model), base_url="http://127.0.0.1") as client:
        params = {"image": "sample-0", "max_size": 8, "encoding": encoding}
        whole = client.get("/api/v1/trace", params=params).json()
        top = client.get("/api/v1/trace", params={**params, "top_channels": 10}).json()
        rest = client.get("/api/v1/trace", params={**params, "layers": "conv_1_1"}).json()
    with torch.no_grad():
        acts, _ = record_all(model, model.load_image(model.samples[0].path))
    paged = 0
    for name, t in top["activations"].items():
        full = whole["activations"][name]
        if len(full["shape"]) != 3 or full["shape"][0] <= 10:
            assert t == full and "channels" not in t  # nothing to cut: sent whole
            continue
        paged += 1
        # independently: the 10 largest channel maxima of the recorded pass, ties to the lower
        maxima = acts[name][0].flatten(1).amax(dim=1).tolist()[: full["shape"][0]]
        want = sorted(sorted(range(len(maxima)), key=lambda i: (-maxima[i], i))[:10])
        assert t["channels"] == want and t["of_channels"] == full["shape"][0]
        assert top["caps"][name]["top_channels"] == 10
        np.testing.assert_array_equal(decode_tensor(t), decode_tensor(full)[want])
        if encoding == "uint8":
            assert t["offset"] == [full["offset"][c] for c in want]
            assert t["scale"] == [full["scale"][c] for c in want]
    assert paged >= 4  # every conv/relu/pool map of the wide model
    assert top["stats"] == whole["stats"] and top["predicted"] == whole["predicted"]
    assert rest["activations"]["conv_1_1"] == whole["activations"]["conv_1_1"]
    assert len(httpx.Response(200, json=top).content) < len(httpx.Response(200, json=whole).content)


def test_top_channels_rule_matches_the_pages_channel_order() -> None:
    """The server's pick is the first page of draw-utils.js's ``channelOrder`` (node runs it),
    ties and values JSON cannot carry (null) included."""
    import json
    import shutil
    import subprocess

    from convlens.trace.document import top_channels

    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    rng = np.random.default_rng(3)
    cases: list[list[float | None]] = [
        [float(v) for v in rng.normal(size=24)],
        [1.0, 2.0, 2.0, 0.5, 2.0, 1.0, 1.0, 3.0, 0.0, 2.0, 2.0, 1.0, 2.0],
        [None, 0.5, -1.0, None, 0.0, 2.0, 0.0, -0.5, 1.5, None, 0.25, 0.75],
    ]
    script = (
        f"import('{(STATIC / 'js' / 'draw-utils.js').as_uri()}').then((U) => {{"
        f"const cases = {json.dumps(cases)};"
        "console.log(JSON.stringify(cases.map((c) => U.channelOrder(c, 10).slice(0, 10)"
        ".sort((a, b) => a - b))));});"
    )
    got = json.loads(subprocess.run([node, "-e", script], capture_output=True, text=True,
                                    check=True, timeout=60).stdout)  # fmt: skip
    assert got == [top_channels(c, len(c), 10) for c in cases]


@pytest.fixture(scope="module")
def wide(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    _browser_modules()
    model = _wide(tmp_path_factory.mktemp("wide"))
    srv = LiveServer(create_app(model), model)
    yield srv
    srv.stop()


# the page's own modules (the same URL, so the same instances): its store and decoder
_PAGE_TRACE = """async ([layer, query]) => {
  const store = await import('/static/js/store.js');
  const { decodeTensor } = await import('/static/js/api.js');
  const t = store.get('trace').activations[layer];
  const whole = await (await fetch(`/api/v1/trace?${query}`)).json();
  const w = decodeTensor(whole.activations[layer]);
  return { rows: t.rows ? [...t.rows].sort((a, b) => a - b) : null, shape: t.shape,
    page: Array.from(t.data), whole: Array.from(w.data), wholeShape: w.shape };
}"""


@pytest.mark.browser
def test_later_pages_of_channels_are_fetched_and_match_the_whole_trace(
    wide: LiveServer, page: Any
) -> None:
    browser = page.context.browser  # the module's Chromium (one sync Playwright at a time)
    pg = browser.new_page(viewport={"width": 1280, "height": 720})
    try:
        errors: list[str] = []
        requests: list[str] = []
        pg.on("pageerror", lambda e: errors.append(str(e)))
        pg.on("request", lambda r: requests.append(r.url))
        pg.goto(wide.url + "?trace=uint8")
        pg.wait_for_selector("body[data-ready=true]", timeout=20_000)
        assert pg.get_attribute("#overview", "data-missing") == ""  # the first page was sent
        first = [u for u in requests if "/api/v1/trace?" in u]
        assert len(first) == 1 and "top_channels=10" in first[0]
        query = "image=sample-0&max_size=64&encoding=uint8"
        before = pg.evaluate(_PAGE_TRACE, ["conv_1_1", query])
        assert before["shape"] == before["wholeShape"] == [24, 14, 14]
        assert len(before["rows"]) == 10
        per = 14 * 14
        for c in range(24):  # the sent rows are the whole trace's; the others not there yet
            got = before["page"][c * per : (c + 1) * per]
            want = before["whole"][c * per : (c + 1) * per] if c in before["rows"] else [0] * per
            assert got == want
        pg.click("button[aria-label='next channels of conv_1_1']")
        pg.wait_for_function(
            "() => document.querySelector('#overview').dataset.missing === ''"
            " && document.querySelectorAll(\"canvas.neuron[data-layer='conv_1_1']\").length > 0"
            " && [...document.querySelectorAll('#overview .pager span')].some("
            "(s) => s.textContent === '2/3')",
            timeout=20_000,
        )
        after = pg.evaluate(_PAGE_TRACE, ["conv_1_1", query])
        assert after["rows"] is None and after["page"] == after["whole"]  # the layer, whole
        assert any("layers=conv_1_1" in u for u in requests)
        # a neuron of the second page opens with the network's exact numbers
        shown = pg.locator("canvas.neuron[data-layer='conv_1_1']").first
        channel = int(shown.get_attribute("data-channel") or "-1")
        assert channel not in before["rows"]
        shown.click()
        pg.wait_for_selector("#detail[data-view=conv] #conv-result")
        pg.click("#detail button.step")
        result = pg.locator("#conv-result")
        i, j = int(result.get_attribute("data-row")), int(result.get_attribute("data-col"))
        exact = _exact(wide.model)["conv_1_1"][channel, i, j]
        assert float(result.get_attribute("data-value")) == pytest.approx(
            float(exact), rel=1e-5, abs=1e-6
        )
        assert not errors
    finally:
        pg.close()


@pytest.mark.browser
def test_panels_installed_after_the_first_draw_work(wide: LiveServer, page: Any) -> None:
    """The detail views and panels load after the first draw: a neuron chosen at once (before
    they are installed) still opens its view and fills the unit panel; the explanation panel
    and the playground are there and answer."""
    browser = page.context.browser  # the module's Chromium (one sync Playwright at a time)
    pg = browser.new_page(viewport={"width": 1280, "height": 720})
    try:
        errors: list[str] = []
        pg.on("pageerror", lambda e: errors.append(str(e)))
        module_requests: list[str] = []
        pg.on("request", lambda r: module_requests.append(r.url) if r.url.endswith(".js") else None)
        pg.goto(wide.url)
        # the first draw, then at once a click, while the panels may still be loading
        pg.wait_for_selector("body[data-ready-ms]", timeout=20_000)
        pg.locator("canvas.neuron[data-layer='relu_1_1']").first.click()
        pg.wait_for_selector("#detail[data-view=activation] #elementwise-formula", timeout=20_000)
        pg.wait_for_selector("body[data-ready=true]")
        pg.wait_for_selector("#unit-panel #unit-title[data-unit^='relu_1_1|']", timeout=20_000)
        panels = float(pg.get_attribute("body", "data-panels-ms") or "nan")
        assert panels >= float(pg.get_attribute("body", "data-ready-ms") or "nan")
        pg.keyboard.press("Escape")
        assert pg.locator("#explain-method option").count() >= 1
        pg.fill("#pg-n", "9")
        pg.locator("#pg-n").dispatch_event("change")
        assert "(9 + 2·0 − 3) / 1 + 1" in (pg.locator("#pg-formula").text_content() or "")
        names = [u.rsplit("/", 1)[-1] for u in module_requests]
        assert names.index("detail.js") > names.index("overview.js")
        assert not errors
    finally:
        pg.close()
