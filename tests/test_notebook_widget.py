"""``convlens.show``: the explainer widget, its state and its API messages, Python ↔ JS.

What the browser test proves, and what it does not: the widget's real ESM (``widget.js``) runs
in headless Chromium and renders the real page (the web front end in its frame) against a small
stand-in for the anywidget model (``get/set/on/off/send/save_changes``, as anywidget's
front-end module API names them). Every message the ESM sends goes to the real Python widget
through ipywidgets' own ``Widget._handle_msg`` (custom messages and state updates), and
everything the widget sends (``Widget.send``, trait updates) comes back through its comm. So
the protocol on both sides is the real one; only Jupyter's message bus and its model class are
replaced by the relay below (JupyterLab itself is not installed here).
"""

from __future__ import annotations

import base64
import collections
import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn as nn

pytest.importorskip("anywidget", reason="the notebook extra (anywidget) is not installed")
pytest.importorskip("fastapi", reason="the web extra is not installed")

import convlens
from convlens.errors import ConvlensError
from convlens.io.spec import InputSpec
from convlens.model import load_model
from convlens.notebook.widget import ExplainerWidget

FIXTURE = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "cnn-explainer"
ARTIFACTS = Path(__file__).resolve().parent / "artifacts" / "notebook"
ORIGIN = "http://notebook.test"  # the harness page's origin, answered by the test itself


# --------------------------------------------------------------------------- without a browser


def test_show_refuses_what_it_cannot_display() -> None:
    with pytest.raises(ConvlensError, match=r"cannot display an object of type int; it shows"):
        convlens.show(42)
    with pytest.raises(ConvlensError, match=r"nn.Module needs input_spec"):
        convlens.show(nn.Conv2d(3, 4, 3))
    with pytest.raises(ConvlensError, match=r"cannot use a dict as image 0; it takes"):
        convlens.show("tiny-vgg", {"not": "an image"})
    with pytest.raises(ConvlensError, match=r"shape \(2, 3, 8, 8\)"):
        convlens.show("tiny-vgg", torch.rand(2, 3, 8, 8))


def test_show_names_an_unreadable_image(tmp_path: Path) -> None:
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(ConvlensError, match=r"cannot read image .*broken\.png"):
        convlens.show("tiny-vgg", bad)


class _Cell(nn.Module):
    """A network as one would write it in a notebook cell."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flat = nn.Flatten()
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flat(self.pool(self.relu(self.conv(x)))))


def test_a_live_module_is_wrapped_and_answered_in_process() -> None:
    torch.manual_seed(0)
    net = _Cell()
    image = torch.rand(3, 16, 16)
    w = convlens.show(net, image, input_spec=InputSpec(3, 16, 16), classes=["cat", "dog"])
    assert isinstance(w, ExplainerWidget)
    try:
        doc = w.api.get("/model").json()
        assert doc["classes"] == ["cat", "dog"]
        assert [s["id"] for s in doc["samples"]] == ["sample-0"]
        trace = w.api.get("/trace?image=sample-0").json()
        # the kernel's trace is the module's own output on the (PNG round-tripped) image
        x = load_model(net, input_spec=InputSpec(3, 16, 16)).load_image(
            w.api.state.store.samples["sample-0"].path
        )
        with torch.no_grad():
            logits = net(x)[0]
        assert trace["logits"] == pytest.approx(logits.tolist(), abs=1e-5)
    finally:
        w.close()


# --------------------------------------------------------------------------- in a browser


class _Relay:
    """Carries messages between the page's stand-in model and the real Python widget."""

    def __init__(self, widget: Any) -> None:
        self.widget = widget
        self.to_page: collections.deque[dict[str, Any]] = collections.deque()
        self.to_python: collections.deque[dict[str, Any]] = collections.deque()
        self.requests = 0

        def publish(msg_type: str, data: Any = None, metadata: Any = None, buffers: Any = None,
                    **keys: Any) -> None:  # fmt: skip
            b64 = [base64.b64encode(bytes(b)).decode() for b in buffers or []]
            self.to_page.append({**(data or {}), "buffers": b64})

        widget.comm.publish_msg = publish  # the comm's one way out (a DummyComm off-kernel)

    def from_page(self, msg: dict[str, Any]) -> None:  # called by Playwright: just queue it
        self.to_python.append(msg)

    def pump(self, page: Any, until: Callable[[], bool], timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            while self.to_python:
                msg = self.to_python.popleft()
                buffers = [base64.b64decode(b) for b in msg.pop("buffers", [])]
                if msg.get("method") == "custom":
                    self.requests += 1
                self.widget._handle_msg({"content": {"data": msg}, "buffers": buffers})
            while self.to_page:
                page.evaluate("m => window.fromPython(m)", self.to_page.popleft())
            if until():
                return
            page.wait_for_timeout(25)
        raise AssertionError("the widget did not reach the expected state in time")


HARNESS = """<!doctype html><meta charset="utf-8"><title>widget harness</title>
<body><div id="out"></div><script type="module">
const state = JSON.parse(document.getElementById('state').textContent);
const listeners = {};
let dirty = {};
const fire = (ev, ...args) => (listeners[ev] || []).slice().forEach((f) => f(...args));
const b64 = (buf) => {
  const bytes = new Uint8Array(buf);
  let text = '';
  for (let k = 0; k < bytes.length; k += 8192) {
    text += String.fromCharCode(...bytes.subarray(k, k + 8192));
  }
  return btoa(text);
};
const unb64 = (s) => Uint8Array.from(atob(s), (c) => c.charCodeAt(0));
const model = {
  get: (k) => state[k],
  set: (k, v) => {
    if (JSON.stringify(state[k]) === JSON.stringify(v)) return;
    state[k] = v; dirty[k] = v; fire(`change:${k}`);
  },
  on: (ev, f) => { (listeners[ev] ||= []).push(f); },
  off: (ev, f) => { listeners[ev] = (listeners[ev] || []).filter((g) => g !== f); },
  send: (content, callbacks, buffers = []) =>
    window.toPython({ method: 'custom', content, buffers: buffers.map(b64) }),
  save_changes: () => {
    const s = dirty;
    dirty = {};
    window.toPython({ method: 'update', state: s });
  },
};
window.fromPython = (m) => {
  if (m.method === 'update' || m.method === 'echo_update') {
    for (const [k, v] of Object.entries(m.state)) {
      if (JSON.stringify(state[k]) !== JSON.stringify(v)) { state[k] = v; fire(`change:${k}`); }
    }
  } else if (m.method === 'custom') {
    fire('msg:custom', m.content, m.buffers.map((s) => new DataView(unb64(s).buffer)));
  }
};
const url = URL.createObjectURL(new Blob([state._esm], { type: 'text/javascript' }));
const esm = await import(url);
esm.default.render({ model, el: document.getElementById('out') });
window.rendered = true;
</script></body>"""


@pytest.fixture(scope="module")
def model() -> Any:
    if not (FIXTURE / "model.json").is_file():
        pytest.skip(f"CNN Explainer fixture not found at {FIXTURE}")
    return load_model(str(FIXTURE)).eval()


def _number(text: str) -> float:
    found = re.findall(r"[−-]?\d+(?:\.\d+)?(?:e[−+-]?\d+)?", text.split("=")[-1])
    return float(found[-1].replace("−", "-"))


@pytest.mark.browser
@pytest.mark.slow
def test_widget_state_and_requests_round_trip(model: Any, browser: Any) -> None:
    from convlens.probe import record_all

    images = [FIXTURE / "images" / "panda_1.jpeg", FIXTURE / "images" / "bus_1.jpeg"]
    widget = convlens.show(model, images, height=900)
    assert isinstance(widget, ExplainerWidget)
    relay = _Relay(widget)
    state = widget.get_state()
    html = HARNESS.replace(
        "<body>",
        '<body><script id="state" type="application/json">'
        + json.dumps(state).replace("<", "\\u003c")
        + "</script>",
    )
    page = browser.new_page(viewport={"width": 1300, "height": 1000})
    errors: list[str] = []
    outside: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)

    def answer(route: Any) -> None:
        if route.request.url.startswith(ORIGIN):
            route.fulfill(status=200, content_type="text/html", body=html)
        else:
            outside.append(route.request.url)
            route.abort()

    page.route("**/*", answer)
    page.expose_function("toPython", relay.from_page)
    try:
        page.goto(f"{ORIGIN}/notebook")
        ready = "() => document.querySelector('iframe')?.contentDocument?.body?.dataset.ready"
        relay.pump(page, lambda: page.evaluate(ready) == "true")
        frame = page.frame_locator("iframe")
        probs = model.probabilities(model.load_image(images[0]))[0]
        assert frame.locator("#predicted-class").inner_text() == model.classes[int(probs.argmax())]
        assert widget.image == "sample-0"

        # JS -> Python: choosing the second image in the page sets the widget's `image`
        frame.locator("#samples button[data-id='sample-1']").click()
        relay.pump(page, lambda: widget.image == "sample-1")
        bus = model.probabilities(model.load_image(images[1]))[0]
        relay.pump(page, lambda: frame.locator("#predicted-class").inner_text()
                   == model.classes[int(bus.argmax())])  # fmt: skip

        # Python -> JS: setting `image` in Python shows that image in the page
        widget.image = "sample-0"
        relay.pump(page, lambda: frame.locator("#samples button[aria-selected=true]")
                   .get_attribute("data-id") == "sample-0"
                   and frame.locator("#predicted-class").inner_text()
                   == model.classes[int(probs.argmax())])  # fmt: skip

        # a neuron clicked in the page: `selected` in Python, and its conv view's arithmetic
        # computed from the kernel's answers equals the network's own activation
        frame.locator("canvas.neuron[data-layer='conv_1_2'][data-channel='4']").click()
        relay.pump(page, lambda: widget.selected == {"layer": "conv_1_2", "channel": 4})
        relay.pump(page, lambda: frame.locator("#detail[data-view=conv] #conv-result").count() > 0)
        result = frame.locator("#conv-result")
        i, j = int(result.get_attribute("data-row")), int(result.get_attribute("data-col"))
        acts, _ = record_all(model, model.load_image(images[0]))
        expected = float(acts["conv_1_2"][0, 4, i, j])
        assert float(result.get_attribute("data-value")) == pytest.approx(expected, abs=1e-4)
        assert _number(result.inner_text()) == pytest.approx(expected, abs=1.5e-3)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "widget-conv.png"))
        frame.locator("#detail-close").click()
        # and a neuron chosen in Python opens its view in the page
        widget.selected = {"layer": "max_pool_1", "channel": 3}
        relay.pump(page, lambda: frame.locator("#detail[data-view=pool] .result").count() > 0)
        frame.locator("#detail-close").click()

        # an explanation computed by the kernel (a POST with a JSON body)
        frame.locator("#explain-method").select_option("saliency")
        frame.locator("#explain-run").click()
        relay.pump(page, lambda: frame.locator("#explain-cards .explain-card").count() == 1)
        assert frame.locator("#explain-cards .explain-card").get_attribute("data-method") == (
            "saliency"
        )
        # an upload (bytes as a message buffer, posted as multipart to the same route)
        frame.locator("#file-input").set_input_files(str(FIXTURE / "images" / "koala_1.jpeg"))
        relay.pump(page, lambda: widget.image.startswith("upload-"))
        koala = model.probabilities(model.load_image(FIXTURE / "images" / "koala_1.jpeg"))[0]
        relay.pump(page, lambda: frame.locator("#predicted-class").inner_text()
                   == model.classes[int(koala.argmax())])  # fmt: skip
        page.screenshot(path=str(ARTIFACTS / "widget.png"), full_page=True)
        assert relay.requests >= 6
        assert not outside, f"the widget tried the network: {outside}"
        assert not errors, errors
    finally:
        page.close()
        widget.close()
