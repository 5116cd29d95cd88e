"""What ``train --watch`` costs: the demo recipe (Tiny VGG 1×28×28 on Fashion-MNIST, Adam,
batch 128) with and without snapshots, from the same initial weights.

Reports the training loop's wall seconds both ways, the seconds spent in snapshots (measured
inside the watcher) and the overhead at each ``--every``. Prints JSON.

    .venv/bin/python benchmarks/watch.py --limit 20000 --threads 1 --every 50 25
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from convlens.data.fashion_mnist import open_fashion_mnist
from convlens.model import build
from convlens.train import TrainConfig, train
from convlens.train.datasets import Subset
from convlens.train.watch import Watch

ARCH = "tiny-vgg:in_channels=1,input_size=28"


def run(limit: int, every: int | None, folder: Path) -> dict[str, float]:
    data = Subset(open_fashion_mnist("train"), limit, 0)
    test = Subset(open_fashion_mnist("test"), 1000, 0)
    model = build(ARCH, data.classes, seed=0)
    watch = Watch(every) if every else None
    t0 = time.perf_counter()
    train(model, data, test, folder, TrainConfig(epochs=1), watch=watch, overwrite=True)
    wall = time.perf_counter() - t0
    frames = len(json.loads((folder / "timeline/index.json").read_text())["frames"]) if watch else 0
    return {"wall_s": round(wall, 2), "snapshot_s": round(watch.seconds, 2) if watch else 0.0,
            "frames": frames}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=20000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--every", type=int, nargs="+", default=[50])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        base = run(args.limit, None, Path(tmp) / "plain")
        out = {"limit": args.limit, "threads": args.threads, "unwatched": base}
        for every in args.every:
            r = run(args.limit, every, Path(tmp) / f"every{every}")
            r["overhead_pct_wall"] = round(100 * (r["wall_s"] / base["wall_s"] - 1), 1)
            r["snapshot_pct"] = round(100 * r["snapshot_s"] / (r["wall_s"] - r["snapshot_s"]), 1)
            out[f"every_{every}"] = r
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
