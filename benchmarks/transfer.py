"""Feature extraction with and without the feature cache, next to the body's forward pass.

Writes a folder of PNG images (two classes), cuts a zoo model at its last spatial layer with a
new head (``--mode features``: the body frozen) and trains the head for a few epochs through
convlens's loop, once computing the body every step (``--no-cache``) and once with the body's
outputs cached (:mod:`convlens.train.features`). The limit is one forward pass of the body
over the same images, decoding included: what the cache's first epoch must pay, and what every
uncached epoch pays again. Later cached epochs cost only the head. Prints JSON, then a table.

    .venv/bin/python benchmarks/transfer.py --images 256 --epochs 3 --threads 1
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from convlens.data.folder import FolderImages
from convlens.model import build
from convlens.model.headed import parse_head
from convlens.train import TrainConfig, train
from convlens.train.features import FeatureCache
from convlens.train.transfer import new_head


def write_images(root: Path, count: int, size: int) -> None:
    """Two classes of noisy images (dark and bright), ``count`` in all."""
    rng = np.random.default_rng(0)
    for i in range(count):
        label = i % 2
        folder = root / ("dark" if label == 0 else "bright")
        folder.mkdir(parents=True, exist_ok=True)
        arr = np.clip(60 + 100 * label + rng.normal(0, 40, (size, size, 3)), 0, 255)
        Image.fromarray(arr.astype(np.uint8)).save(folder / f"{i:05d}.png")


def make_model(arch: str, classes: list[str], head: str) -> Any:
    base = build(arch, seed=0)
    torch.manual_seed(0)
    return new_head(base, classes, parse_head(head), arch, "zoo", "unused")


def body_pass(arch: str, data: FolderImages, head: str, batch: int) -> dict[str, float]:
    """Seconds to decode every image, and to decode and run the body over every image."""
    model = make_model(arch, data.classes, head).eval()
    t0 = time.perf_counter()
    for _ in data.batches(batch):
        pass
    decode = time.perf_counter() - t0
    t0 = time.perf_counter()
    with torch.no_grad():
        for _, x, _ in data.batches(batch):
            model.net.features(model.normalize(x.contiguous(memory_format=torch.channels_last)))
    return {"decode_s": round(decode, 3), "decode_and_body_s": round(time.perf_counter() - t0, 3)}


def run(arch: str, data: FolderImages, head: str, epochs: int, batch: int, cached: bool
        ) -> list[dict[str, Any]]:  # fmt: skip
    model = make_model(arch, data.classes, head)
    model.net.to(memory_format=torch.channels_last)
    caches = (FeatureCache(model, data, channels_last=True), None) if cached else None
    walls: list[float] = []
    start = [time.perf_counter()]

    def on_epoch(rec: dict[str, Any]) -> None:
        now = time.perf_counter()
        walls.append(now - start[0])
        start[0] = now

    config = TrainConfig(epochs=epochs, batch_size=batch, mode="features", lr=0.01)
    with tempfile.TemporaryDirectory() as out:
        result = train(model, data, None, out, config, on_epoch=on_epoch, features=caches,
                       overwrite=True)  # fmt: skip
    if caches:
        caches[0].close()
    return [
        {"epoch": r["epoch"], "train_s": r["seconds"], "wall_s": round(w, 3),
         "train_loss": r["train_loss"]}
        for r, w in zip(result.history, walls, strict=True)
    ]  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet18:input_size=64")
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--head", default="dense:64,dropout:0.5")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        write_images(Path(tmp), args.images, args.size)
        spec = build(args.model).spec.shape
        data = FolderImages(tmp, "all", shape=spec)
        limit = body_pass(args.model, data, args.head, 64)
        runs = {
            "no cache": run(args.model, data, args.head, args.epochs, args.batch_size, False),
            "cache": run(args.model, data, args.head, args.epochs, args.batch_size, True),
        }
    doc = {"model": args.model, "images": args.images, "image_size": args.size,
           "threads": torch.get_num_threads(), "body_pass": limit, "runs": runs}  # fmt: skip
    print(json.dumps(doc, indent=1))
    print(f"\n{args.model} on {args.images} images of {args.size}×{args.size}, "
          f"{torch.get_num_threads()} threads")  # fmt: skip
    print(f"one pass of the body (the limit): {limit['decode_and_body_s']:.2f} s "
          f"(of which decoding {limit['decode_s']:.2f} s)")  # fmt: skip
    print(f"{'run':10} {'epoch':>5} {'train s':>8} {'wall s':>7} {'loss':>7}")
    for name, rows in runs.items():
        for r in rows:
            print(f"{name:10} {r['epoch']:>5} {r['train_s']:>8.3f} {r['wall_s']:>7.3f} "
                  f"{r['train_loss']:>7.4f}")  # fmt: skip


if __name__ == "__main__":
    main()
