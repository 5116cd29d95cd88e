"""Speed and memory of ``convlens.analysis.scan`` next to a forward pass alone over the same data.

Cases:

* ``fmnist``: the demo model (Tiny VGG on Fashion-MNIST; a seeded Tiny VGG of the same shape if
  the demo weights are absent) over Fashion-MNIST's training images, scanning its last conv
  layer, and all four conv ReLUs plus the logits.
* ``resnet``: ResNet-18 (torchvision's layout) on 3×224×224 over a folder of JPEGs (made once
  in a temporary folder), scanning ``layer4.1.relu2``; ``resnet-all`` scans all 17 ReLUs and
  the logits (the "all-layer scan" of issue #15).

Besides wall-clock time each measurement records the process's CPU time: on a shared machine
a process waiting for a core loses wall time but not CPU time, so "scan/fwd (CPU)" is the
steadier figure (cache and memory-bandwidth contention still move it).

Each measurement runs in its own process, so its peak memory (VmHWM, reset just before the
timed loop) is its own; "Δ peak" is the peak minus the resident size before the loop, i.e.
what the scan itself holds. Memory is checked at ``n`` and ``10 n`` images. The forward
baseline reads the same batches and runs the same model under ``inference_mode``: the limit.

    .venv/bin/python benchmarks/scan.py            # full sizes (minutes)
    .venv/bin/python benchmarks/scan.py --quick    # small sizes
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

FOLDER = Path(tempfile.gettempdir()) / "convlens-bench-folder"


def rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def reset_peak() -> None:
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (Linux >= 4.0)


def make_folder(n: int) -> Path:
    """``n`` random 256×256 JPEGs in two classes (made once, reused)."""
    from PIL import Image

    have = sorted(FOLDER.glob("*/*.jpg"))
    if len(have) >= n:
        return FOLDER
    rng = np.random.default_rng(0)
    for i in range(len(have), n):
        cls = FOLDER / ("a" if i % 2 else "b")
        cls.mkdir(parents=True, exist_ok=True)
        base = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
        img = Image.fromarray(base).resize((256, 256), Image.Resampling.BILINEAR)
        img.save(cls / f"{i:06d}.jpg", quality=85)
    return FOLDER


def setup(case: str, n: int) -> tuple[Any, Any, list[str]]:
    from convlens.data import FolderImages, TensorImages, open_dataset
    from convlens.model import build, load_model

    if case.startswith("fmnist"):
        try:
            model = load_model("demo")
        except Exception:
            model = build("tiny-vgg:in_channels=1,input_size=28", seed=0)
        full = open_dataset("fashion-mnist", "train")
        assert isinstance(full, TensorImages)  # held in memory, so it can be repeated
        reps = -(-n // len(full))  # 10× Fashion-MNIST: the training set repeated
        images = full.images.repeat(reps, 1, 1, 1)[:n]
        labels = full.labels.repeat(reps)[:n]
        data = TensorImages(images, labels, full.classes, "fashion-mnist")
        convs = [lay.name for lay in model.graph if lay.kind == "activation"]
        layers = convs[-1:] if case == "fmnist" else [*convs, model.graph.output.name]
        return model, data, layers
    model = build("resnet18:input_size=224,num_classes=10", seed=0).eval()
    root = make_folder(n)
    folder = FolderImages(root, "all", shape=(3, 224, 224))
    folder.items = folder.items[:n]
    relus = [lay.name for lay in model.graph if lay.kind == "activation"]
    layers = ["layer4.1.relu2"] if case == "resnet" else [*relus, model.graph.output.name]
    return model, folder, layers


def measure(model: Any, data: Any, layers: list[str], mode: str, bs: int) -> dict[str, float]:
    from convlens.analysis import scan

    before = rss_kb("VmRSS")
    reset_peak()
    t0, c0 = time.perf_counter(), time.process_time()
    if mode == "forward":
        with torch.inference_mode():
            for _, images, _ in data.batches(bs):
                model(images)
    else:
        with timed_scan_steps() as spent:
            scan(model, data, layers, k=16, batch_size=bs, progress=False)
    seconds = time.perf_counter() - t0
    out = {
        "seconds": seconds,
        "cpu_seconds": time.process_time() - c0,
        "delta_peak_mb": (rss_kb("VmHWM") - before) / 1024,
    }
    if mode == "scan":  # the share of the scan's own work: robust to the machine's load drifting
        out["map_merge_share"] = spent[0] / seconds
    return out


@contextlib.contextmanager
def timed_scan_steps() -> Any:
    """Time spent in the scan's map and merge steps (wrapping them where the scan calls them)."""
    scan_module = importlib.import_module("convlens.analysis.scan")  # not the function

    spent = [0.0]
    originals = {name: getattr(scan_module, name) for name in ("map_sorted", "merge_many")}

    def wrap(fn: Any) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[0] += time.perf_counter() - t

        return timed

    for name, fn in originals.items():
        setattr(scan_module, name, wrap(fn))
    try:
        yield spent
    finally:
        for name, fn in originals.items():
            setattr(scan_module, name, fn)


def run_one(case: str, n: int, batch_size: int, reps: int = 3) -> dict[str, Any]:
    """Forward and scan alternately in one process (so both see the same machine load), the
    best of ``reps`` runs each."""
    model, data, layers = setup(case, n)
    model.graph  # noqa: B018  (build the layer graph outside the timing)
    runs: dict[str, list[dict[str, float]]] = {"forward": [], "scan": []}
    for _ in range(reps):
        for mode in ("forward", "scan"):
            runs[mode].append(measure(model, data, layers, mode, batch_size))
    out: dict[str, Any] = {"case": case, "n": n, "layers": layers, "batch_size": batch_size,
                           "threads": torch.get_num_threads()}  # fmt: skip
    out["map_merge_share"] = round(min(r["map_merge_share"] for r in runs["scan"]), 3)
    for mode, rs in runs.items():
        best = min(r["seconds"] for r in rs)
        out[mode] = {
            "seconds": round(best, 3),
            "cpu_seconds": round(min(r["cpu_seconds"] for r in rs), 3),
            "images_per_s": round(n / best, 1),
            "delta_peak_mb": round(max(r["delta_peak_mb"] for r in rs), 1),
        }
    out["scan_over_forward"] = round(
        out["scan"]["images_per_s"] / out["forward"]["images_per_s"], 3
    )
    out["scan_over_forward_cpu"] = round(
        out["forward"]["cpu_seconds"] / out["scan"]["cpu_seconds"], 3
    )
    return out


def child(case: str, n: int, batch_size: int, threads: int) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--one", case, str(n), str(batch_size), str(threads)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--one", nargs=4, metavar=("CASE", "N", "BATCH", "THREADS"))
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (0: torch's default). 1 by default: on a shared, oversubscribed "
        "machine every parallel region waits for busy cores, which blurs the comparison",
    )
    ap.add_argument("--cases", default="fmnist,fmnist-all,resnet,resnet-all")
    args = ap.parse_args()
    if args.one:
        case, n, bs, threads = args.one
        if int(threads) > 0:
            torch.set_num_threads(int(threads))
        print(json.dumps(run_one(case, int(n), int(bs))))
        return
    sizes = {"fmnist": (6000, 60000), "fmnist-all": (6000,), "resnet": (32, 320),
             "resnet-all": (96,)}  # fmt: skip
    if args.quick:
        sizes = {"fmnist": (600, 6000), "fmnist-all": (600,), "resnet": (4, 40),
                 "resnet-all": (8,)}  # fmt: skip
    batch = {"fmnist": 256, "fmnist-all": 256, "resnet": 32, "resnet-all": 32}
    results = []
    for case in args.cases.split(","):
        for n in sizes[case]:
            results.append(child(case, n, batch[case], args.threads))
            print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    print(json.dumps(results, indent=1))
    head = ("case", "images", "forward img/s", "scan img/s", "scan/fwd", "(CPU)", "map+merge",
            "fwd Δpeak MB", "scan Δpeak MB")  # fmt: skip
    widths = (-11, 7, 14, 11, 9, 6, 10, 13, 14)
    print(
        "\n"
        + " ".join(
            f"{h:<{-w}}" if w < 0 else f"{h:>{w}}" for h, w in zip(head, widths, strict=True)
        )
    )
    for r in results:
        f, s = r["forward"], r["scan"]
        print(f"{r['case']:<11} {r['n']:>7} {f['images_per_s']:>14.0f} {s['images_per_s']:>11.0f} "
              f"{r['scan_over_forward']:>9.0%} {r['scan_over_forward_cpu']:>6.0%} "
              f"{r['map_merge_share']:>10.1%} "
              f"{f['delta_peak_mb']:>13.1f} "
              f"{s['delta_peak_mb']:>14.1f}")  # fmt: skip
    print(
        "(best of three alternating runs each, in one process per row; the machine is shared, "
        "so figures are noisy)"
    )


if __name__ == "__main__":
    main()
