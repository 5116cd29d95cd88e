"""How fast the web explainer's page draws, in headless Chromium.

For each model: the time from navigation to the drawn overview (``readyMs``, the page's own
``performance.now()``: page and module load, ``GET /model``, ``GET /trace`` with the server's
forward pass, decoding, layout and drawing), the overview's draw alone (``drawMs``), the trace
the page fetched (its encoding, chosen by the page's rule: uint8 above 1 M activation numbers,
and its bytes), and the time to open the convolution view on the first conv neuron (which
fetches its exact values). The first navigation is cold (the server runs the forward pass);
later ones find the server's trace cache warm, so both are reported. As the baseline, the
server's ``GET /api/v1/trace`` at the overview's caps over loopback HTTP.

    .venv/bin/python benchmarks/page.py [--repeats 5] [--vgg] [--json out.json]
    .venv/bin/python benchmarks/page.py --traces-only --vgg   # trace bytes and time, no browser

``--start-rounds N`` opens the page on N fresh servers with the start-up warm-up (the first
trace computed as ``convlens serve`` starts) and N without, alternated, ``--start-delay`` s
after each answers (``--only vgg`` for one model). The page now asks for its first trace
during start-up (index.html preloads it), so the time from that request to the drawn
overview includes the start-up; navigation → drawn compares across versions.

``--traces-only`` measures, per model, the overview's trace (``max_size=64``, the server's
channel cap) as float32 and as ``encoding=uint8`` (maps quantized per channel): bytes on the
wire, the cold time (a freshly uploaded copy of the image: forward pass, encoding, transfer)
and the cached time, and one channel's exact values (``GET /activations/...``) as a detail
view fetches them after the trace (from the server's recorded forward pass).

Medians over the repeats, each in a fresh page. The machine is shared (2 cores, other work
running), so the numbers are noisy; compare within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import uvicorn
from PIL import Image
from playwright.sync_api import sync_playwright

from convlens.model import Model, build, load_model
from convlens.model.core import Sample
from convlens.web.server import create_app

CNN_EXPLAINER = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "cnn-explainer"
CHROMIUM = "/usr/bin/chromium"


def _with_sample(model: Model, tmp: Path) -> Model:
    if not model.samples:
        rng = np.random.default_rng(0)
        c, h, w = model.spec.shape
        arr = rng.integers(0, 255, (h, w, c) if c == 3 else (h, w), dtype=np.uint8)
        path = tmp / f"{model.name}.png"
        Image.fromarray(arr).save(path)
        model.samples.append(Sample(path, label=None))
    return model


def models(tmp: Path, vgg: bool, only: str | None = None) -> dict[str, Model]:
    out: dict[str, Model] = {}
    try:
        out["demo"] = load_model("demo")
    except Exception:
        out["tiny-vgg 1×28×28 (demo stand-in)"] = build("tiny-vgg:in_channels=1,input_size=28")
    if (CNN_EXPLAINER / "model.json").is_file():
        out["cnn-explainer"] = load_model(str(CNN_EXPLAINER))
    out["resnet18 w8 64×64"] = build("resnet18:width=8,input_size=64,num_classes=7")
    if vgg:
        out["vgg16 224×224"] = build("vgg16")
    chosen = {k: m for k, m in out.items() if only is None or only in k}
    return {k: _with_sample(m.eval(), tmp) for k, m in chosen.items()}


class Server:
    """The explainer in a thread; ``warm``: start the first trace at once, as ``convlens serve``
    does (``web.server.serve``), before the server answers."""

    def __init__(self, model: Model, warm: bool = False) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        app = create_app(model)
        if warm:
            app.state.convlens.traces.warm()
        config = uvicorn.Config(app, port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{self.port}/"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


# The trace the page fetched: its URL, bytes and time in the page (Resource Timing).
_TRACE_ENTRY = """() => {
  const e = performance.getEntriesByType('resource').find((r) => r.name.includes('/api/v1/trace?'));
  if (!e) return null;
  const ms = e.responseEnd - e.startTime;
  return { url: e.name, bytes: e.encodedBodySize, ms, start: e.startTime };
}"""


def measure(browser: Any, srv: Server, model: Model, repeats: int) -> dict[str, Any]:
    ready, draw, opened, trace, fetched, from_trace = [], [], [], [], [], []
    entry: dict[str, Any] = {}
    first_conv = next((lay.name for lay in model.graph if lay.kind == "conv"), None)
    for _ in range(repeats):
        page = browser.new_page(viewport={"width": 1280, "height": 720})
        page.goto(srv.url)
        page.wait_for_selector("body[data-ready=true]", timeout=120_000)
        ready.append(float(page.get_attribute("body", "data-ready-ms") or "nan"))
        draw.append(float(page.get_attribute("#overview", "data-draw-ms") or "nan"))
        entry = page.evaluate(_TRACE_ENTRY) or {}
        fetched.append(float(entry.get("ms", "nan")))
        from_trace.append(ready[-1] - float(entry.get("start", "nan")))
        neuron = page.locator(f"canvas.neuron[data-layer='{first_conv}']").first
        t = time.perf_counter()
        neuron.click()
        page.wait_for_selector("#detail .result", timeout=120_000)
        opened.append(1000 * (time.perf_counter() - t))
        page.close()
    with httpx.Client(timeout=300) as client:
        for _ in range(repeats):
            t = time.perf_counter()
            client.get(f"{srv.url}api/v1/trace", params={"image": "sample-0", "max_size": 64})
            trace.append(1000 * (time.perf_counter() - t))
    med = statistics.median
    warm = ready[1:] or ready
    return {
        "page_trace_encoding": "uint8" if "encoding=uint8" in entry.get("url", "") else "float32",
        "page_trace_mb": entry.get("bytes", 0) / 1e6,
        "page_trace_fetch_cold_ms": fetched[0],
        "ready_cold_ms": ready[0],
        "ready_ms": med(warm),
        # from the page asking for the trace to the overview drawn (what the model's size
        # changes; the page's own start-up before it is the same for every model)
        "trace_to_ready_cold_ms": from_trace[0],
        "trace_to_ready_ms": med(from_trace[1:] or from_trace),
        "overview_draw_ms": med(draw),
        "first_detail_view_cold_ms": opened[0],
        "first_detail_view_ms": med(opened[1:] or opened),
        "trace_http_float32_cached_ms": med(trace),
    }


def load_page(browser: Any, url: str) -> dict[str, float]:
    """One fresh page (its own context: nothing cached): navigation → drawn, and the trace."""
    page = browser.new_page(viewport={"width": 1280, "height": 720})
    try:
        page.goto(url)
        page.wait_for_selector("body[data-ready=true]", timeout=120_000)
        ready = float(page.get_attribute("body", "data-ready-ms") or "nan")
        page.wait_for_selector("body[data-painted-ms]", timeout=120_000)
        entry = page.evaluate(_TRACE_ENTRY) or {}
        return {
            "ready_ms": ready,
            # the frame after the draw (its style, layout and paint), and the panels installed
            # after it (the detail views, explanations, unit, playground, timeline)
            "painted_ms": float(page.get_attribute("body", "data-painted-ms") or "nan"),
            "panels_ms": float(page.get_attribute("body", "data-panels-ms") or "nan"),
            "trace_mb": float(entry.get("bytes", 0)) / 1e6,
            "trace_start_ms": float(entry.get("start", "nan")),
            "trace_to_ready_ms": ready - float(entry.get("start", "nan")),
            "trace_fetch_ms": float(entry.get("ms", "nan")),
        }
    finally:
        page.close()


def measure_start(
    browser: Any, model: Model, rounds: int, delay: float, modes: list[str]
) -> dict[str, Any]:
    """Fresh servers, the page opened ``delay`` s after each starts answering: with the start-up
    warm-up (``convlens serve``) and without it, alternated so both see the same load."""
    runs: dict[str, list[dict[str, float]]] = {mode: [] for mode in modes}
    for _ in range(rounds):
        for mode in runs:
            srv = Server(model, warm=mode == "warm_up")
            try:
                time.sleep(delay)
                runs[mode].append(load_page(browser, srv.url))
            finally:
                srv.stop()
    out: dict[str, Any] = {"rounds": rounds, "delay_s": delay}
    for mode, loads in runs.items():
        for k in loads[0]:
            values = [d[k] for d in loads]
            out[f"{mode}_{k}_median"] = statistics.median(values)
            out[f"{mode}_{k}_all"] = [round(v, 2) if k == "trace_mb" else round(v) for v in values]
    return out


def measure_traces(srv: Server, model: Model, repeats: int) -> dict[str, float]:
    """The overview's trace as float32 and as uint8 (bytes, cold and cached ms), and one exact
    channel after it."""
    out: dict[str, float] = {}
    conv = next((lay.name for lay in model.graph if lay.kind == "conv"), None)
    png = model.samples[0].path.read_bytes()
    with httpx.Client(timeout=300) as client:
        for encoding in ("float32", "uint8"):
            # a fresh upload of the same pixels: nothing of it is cached on the server yet
            up = client.post(f"{srv.url}api/v1/images", files={"file": ("x.png", png)})
            params = {"image": up.json()["image_id"], "encoding": encoding, "max_size": 64}
            times, size = [], 0
            for _ in range(repeats + 1):
                t = time.perf_counter()
                r = client.get(f"{srv.url}api/v1/trace", params=params)
                times.append(1000 * (time.perf_counter() - t))
                size = len(r.content)
            out[f"trace_{encoding}_mb"] = size / 1e6
            out[f"trace_{encoding}_cold_ms"] = times[0]
            out[f"trace_{encoding}_cached_ms"] = statistics.median(times[1:])
            if conv is not None and encoding == "uint8":
                t = time.perf_counter()
                r = client.get(
                    f"{srv.url}api/v1/activations/{conv}/0", params={"image": params["image"]}
                )
                out["exact_channel_ms"] = 1000 * (time.perf_counter() - t)
                out["exact_channel_kb"] = len(r.content) / 1e3
    return out


def launch(playwright: Any) -> Any:
    """Debian's headless Chromium (Playwright's own browser download fails here)."""
    return playwright.chromium.launch(
        executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"]
    )


def traces_only(args: argparse.Namespace) -> None:
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, model in models(Path(tmp), args.vgg, args.only).items():
            srv = Server(model)
            try:
                results[name] = measure_traces(srv, model, args.repeats)
            finally:
                srv.stop()
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def start_only(args: argparse.Namespace) -> None:
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as p:
        browser = launch(p)
        for name, model in models(Path(tmp), args.vgg, args.only).items():
            first = Server(model)
            load_page(browser, first.url)  # torch's and Chromium's first-use costs
            first.stop()
            load = os.getloadavg()[0]
            results[name] = measure_start(
                browser, model, args.start_rounds, args.start_delay, args.start_modes.split(",")
            )
            results[name]["load_average_1min"] = [round(load, 2), round(os.getloadavg()[0], 2)]
        browser.close()
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)
    cols = ["ready_ms", "painted_ms", "panels_ms", "trace_start_ms", "trace_mb"]
    print(f"\n{'model, mode (medians)':40}" + "".join(f"{c:>16}" for c in cols) + "    load")
    for name, r in results.items():
        for mode in args.start_modes.split(","):
            row = [r.get(f"{mode}_{c}_median", float("nan")) for c in cols]
            load_text = "-".join(str(v) for v in r["load_average_1min"])
            print(
                f"{name + ', ' + mode:40}"
                + "".join(f"{v:>16.2f}" for v in row)
                + f"    {load_text}"
            )
        first_mode = args.start_modes.split(",")[0]
        print(f"  {first_mode} ready_ms each load: {r.get(f'{first_mode}_ready_ms_all')}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--vgg", action="store_true", help="also VGG-16 at 224×224 (slow)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--traces-only", action="store_true", help="trace sizes and times only")
    ap.add_argument("--only", help="only the models whose name contains this")
    ap.add_argument(
        "--start-rounds",
        type=int,
        default=0,
        help="also open the page on N fresh servers each with and without the start-up warm-up",
    )
    ap.add_argument(
        "--start-delay",
        type=float,
        default=0.0,
        help="seconds between a fresh server answering and the page opening (default 0)",
    )
    ap.add_argument("--start-modes", default="warm_up,no_warm_up", help="which of the two")
    args = ap.parse_args()
    if args.traces_only:
        traces_only(args)
        return
    if args.start_rounds:
        start_only(args)
        return
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as p:
        browser = launch(p)
        for name, model in models(Path(tmp), args.vgg, args.only).items():
            srv = Server(model)
            try:
                results[name] = measure(browser, srv, model, args.repeats)
            finally:
                srv.stop()
        browser.close()
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)
    cols = ["page_trace_mb", "ready_cold_ms", "ready_ms", "trace_to_ready_ms"]
    cols += ["overview_draw_ms", "first_detail_view_ms"]
    print(f"\n{'model':34}" + "".join(f"{c:>22}" for c in cols))
    for name, r in results.items():
        print(f"{name:34}" + "".join(f"{r[c]:>22.2f}" for c in cols))
    print("\n(medians; shared 2-core machine, noisy)")


if __name__ == "__main__":
    main()
