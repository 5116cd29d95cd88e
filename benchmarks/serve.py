"""Latency of the web explainer's trace and the size of what it sends.

For the demo model and CNN Explainer's Tiny VGG: a pure forward pass (the baseline), the
traced forward that records every layer (``record_all``), the whole trace document built in
process (forward + stats + base64 + JSON), and ``GET /api/v1/trace`` over loopback HTTP from
a real uvicorn server (p50 and p99), plus the payload size (raw and gzip'd) and the
throughput of a burst of 50 concurrent requests. There is no peer library to compare with:
CNN Explainer computes its trace in the browser with TensorFlow.js.

    .venv/bin/python benchmarks/serve.py [--repeats 100] [--json out.json]

Timings on a shared machine are noisy; compare numbers from one run only.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import http.client
import json
import socket
import statistics
import sys
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import torch

from convlens.model import Model, build, load_model
from convlens.probe import record_all
from convlens.trace import build_trace
from convlens.web import create_app

CNN_EXPLAINER = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "cnn-explainer"


def percentiles(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {"p50_ms": statistics.median(ordered) * 1e3, "p99_ms": p99 * 1e3}


def timed(fn: Callable[[], Any], repeats: int, warmup: int = 3) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return percentiles(times)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveServer:
    """uvicorn on a free loopback port in a thread."""

    def __init__(self, model: Model, images: Path | None) -> None:
        import uvicorn

        self.port = free_port()
        config = uvicorn.Config(
            create_app(model, images_dir=images), "127.0.0.1", self.port, log_level="error"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        while not self.server.started:
            time.sleep(0.05)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


async def burst(url: str, n: int) -> float:
    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=n)) as ac:
        start = time.perf_counter()
        answers = await asyncio.gather(*(ac.get(url) for _ in range(n)))
        elapsed = time.perf_counter() - start
    assert all(a.status_code == 200 for a in answers)
    return elapsed


def get(conn: http.client.HTTPConnection, path: str) -> bytes:
    """One GET on a kept-alive connection. The stdlib client reads a 1 MB body in about a
    millisecond, where httpx's pure-Python parsing takes tens: this times the server."""
    try:
        conn.request("GET", path)
        response = conn.getresponse()
    except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
        conn.close()  # the server dropped an idle keep-alive connection: reconnect once
        conn.request("GET", path)
        response = conn.getresponse()
    body = response.read()
    assert response.status == 200, body[:200]
    return body


def bench_model(label: str, model: Model, images: Path | None, repeats: int) -> dict[str, Any]:
    model.eval()
    with LiveServer(model, images) as base:
        conn = http.client.HTTPConnection("127.0.0.1", int(base.rsplit(":", 1)[1]), timeout=60)
        path = "/api/v1/trace?image=sample-0"
        body = get(conn, path)
        shape = json.loads(body)["input"]["tensor"]["shape"]
        x = torch.rand(1, *shape)  # timing only: the values do not change the work
        with torch.inference_mode():
            forward = timed(lambda: model(x), repeats)
        traced = timed(lambda: record_all(model, x), repeats)
        in_process = timed(lambda: json.dumps(build_trace(model, x)), repeats)
        http_times = timed(lambda: get(conn, path), repeats)
        conn.close()
        burst_s = asyncio.run(burst(base + path, 50))
    return {
        "model": label,
        "input": shape,
        "layers": len(model.graph),
        "forward": forward,
        "record_all": traced,
        "trace_in_process": in_process,
        "trace_http": http_times,
        "payload_bytes": len(body),
        "payload_gzip_bytes": len(gzip.compress(body, 6)),
        "burst50_seconds": burst_s,
        "burst50_req_per_s": 50 / burst_s,
    }


def demo_model() -> tuple[str, Model]:
    try:
        return "demo", load_model("demo")
    except Exception as e:  # weights not generated in this checkout: same architecture
        print(f"(demo weights unavailable: {e}; timing its architecture)", file=sys.stderr)
        return "demo arch (random weights)", build("tiny-vgg:in_channels=1,input_size=28", seed=0)


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        f"{'model':28} {'forward':>15} {'record_all':>15} {'trace (proc)':>15} "
        f"{'GET /trace':>15} {'payload':>9} {'gzip':>9} {'50 conc.':>9}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:

        def pair(key: str, r: dict[str, Any] = r) -> str:
            return f"{r[key]['p50_ms']:6.2f}/{r[key]['p99_ms']:6.2f}"

        lines.append(
            f"{r['model']:28} {pair('forward'):>15} {pair('record_all'):>15} "
            f"{pair('trace_in_process'):>15} {pair('trace_http'):>15} "
            f"{r['payload_bytes'] / 1024:7.0f}KB {r['payload_gzip_bytes'] / 1024:7.0f}KB "
            f"{r['burst50_req_per_s']:6.1f}/s"
        )
    lines.append("times in ms as p50/p99; '50 conc.': requests per second in a burst of 50")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    torch.manual_seed(0)
    rows = []
    label, demo = demo_model()
    rows.append(bench_model(label, demo, None if demo.samples else CNN_EXPLAINER / "images",
                            args.repeats))  # fmt: skip
    if (CNN_EXPLAINER / "model.json").is_file():
        rows.append(
            bench_model(
                "cnn-explainer tiny-vgg", load_model(str(CNN_EXPLAINER)), None, args.repeats
            )
        )
    result = {"benchmark": "serve", "torch_threads": torch.get_num_threads(), "results": rows}
    print(json.dumps(result, indent=2))
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
