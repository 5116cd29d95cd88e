"""Seconds and memory of the code maps: t-SNE of 10,000 codes (openTSNE, as ``convlens map``
runs it), PCA, optionally UMAP and scikit-learn's t-SNE as a peer, and the image-grid assignment.

Codes are the demo model's penultimate layer (a seeded Tiny VGG of the same shape if the demo
weights are absent) on Fashion-MNIST's test images. Each step runs in its own process, so its
peak memory (VmHWM above the resident size before the step) is its own.

    .venv/bin/python benchmarks/map.py [--n 10000] [--umap] [--peer]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

CODES = Path("/tmp/convlens-bench-codes.npy")


def rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def codes(n: int) -> np.ndarray:
    """The penultimate codes of ``n`` Fashion-MNIST test images (cached between steps)."""
    if CODES.is_file():
        c = np.load(CODES)
        if len(c) >= n:
            return c[:n]
    from convlens.analysis.embed import compute_codes
    from convlens.data import open_dataset
    from convlens.model import build, load_model

    try:
        model = load_model("demo")
    except Exception:
        model = build("tiny-vgg:in_channels=1,input_size=28", seed=0)
    data = open_dataset("fashion-mnist", "test")
    c = compute_codes(model, data, list(range(min(n, len(data))))).numpy()
    np.save(CODES, c)
    return c


def step(name: str, n: int, jobs: int) -> dict[str, Any]:
    x = codes(n)
    before = rss_kb("VmRSS")
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM)
    t0 = time.perf_counter()
    if name == "grid":
        from convlens.analysis.embed import assign_grid

        pts = np.random.default_rng(0).random((min(n, 2000), 2))
        assign_grid(pts, 40, 40)
        label = "grid assignment 2000 points → 40×40 cells (scipy LSA)"
    elif name == "sklearn-tsne":
        from sklearn.manifold import TSNE

        from convlens.analysis.embed import pca

        TSNE(random_state=0, n_jobs=jobs).fit_transform(pca(x, 50) if x.shape[1] > 50 else x)
        label = f"scikit-learn t-SNE (Barnes-Hut), {jobs} thread(s)"
    else:
        from convlens.analysis.embed import embed

        embed(x, name, seed=0, n_jobs=jobs)
        label = {
            "tsne": f"openTSNE (convlens map), {jobs} thread(s)",
            "pca": "PCA (numpy, scatter-matrix eigh)",
            "umap": "UMAP (umap-learn, incl. numba compilation)",
        }[name]
    seconds = time.perf_counter() - t0
    return {
        "step": name, "what": label, "n": len(x), "dims": int(x.shape[1]), "jobs": jobs,
        "seconds": round(seconds, 2),
        "delta_peak_mb": round((rss_kb("VmHWM") - before) / 1024, 1),
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--umap", action="store_true")
    ap.add_argument("--peer", action="store_true", help="also scikit-learn's t-SNE")
    ap.add_argument("--one", nargs=3, metavar=("STEP", "N", "JOBS"))
    args = ap.parse_args()
    if args.one:
        print(json.dumps(step(args.one[0], int(args.one[1]), int(args.one[2]))))
        return
    codes(args.n)  # compute once, outside the timings
    plan = [("pca", 1), ("tsne", 1), ("tsne", torch.get_num_threads()), ("grid", 1)]
    plan += [("umap", 1)] if args.umap else []
    plan += [("sklearn-tsne", 1)] if args.peer else []
    results = []
    for name, jobs in plan:
        cmd = [sys.executable, __file__, "--one", name, str(args.n), str(jobs)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    print(json.dumps(results, indent=1))
    print(f"\n{'step':<58} {'n':>6} {'seconds':>8} {'Δpeak MB':>9}")
    for r in results:
        print(f"{r['what']:<58} {r['n']:>6} {r['seconds']:>8.1f} {r['delta_peak_mb']:>9.1f}")
    print("(one run each on a shared 2-core machine: figures are noisy)")


if __name__ == "__main__":
    main()
