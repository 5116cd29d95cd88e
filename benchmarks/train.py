"""Training speed and accuracy of the demo recipe: convlens's loop next to a plain PyTorch loop.

Both train Tiny VGG (1×28×28, 10 filters per layer) on Fashion-MNIST with Adam (lr 3e-3,
cosine schedule, batch 128) from the same initial weights; the plain loop is the limit
(index a uint8 tensor, forward, backward, step: nothing else). convlens's loop adds seeded
per-epoch order, progress accounting, validation and an atomic checkpoint each epoch.
Per epoch: training seconds, images per second, wall seconds (incl. validation and
checkpoint) and test accuracy. Prints JSON, then a table.

    .venv/bin/python benchmarks/train.py --epochs 2 --limit 20000 --threads 1
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from typing import Any

import torch
import torch.nn.functional as F

from convlens.data import TensorImages
from convlens.data.fashion_mnist import open_fashion_mnist
from convlens.model import build
from convlens.train import TrainConfig, evaluate, train
from convlens.train.datasets import Subset
from convlens.train.loop import lr_factor

ARCH = "tiny-vgg:in_channels=1,input_size=28"


def plain_loop(
    images: torch.Tensor, labels: torch.Tensor, test: TensorImages, epochs: int,
    channels_last: bool,
) -> list[dict[str, Any]]:  # fmt: skip
    model = build(ARCH, test.classes, seed=0)
    net = model.net
    if channels_last:
        # torch accepts memory_format here; its type stubs list no overload with it
        net = net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    n, bs = len(images), 128
    steps = math.ceil(n / bs)
    rows = []
    for epoch in range(epochs):
        t0 = time.perf_counter()
        net.train()
        order = torch.randperm(n, generator=torch.Generator().manual_seed(epoch))
        for s in range(steps):
            for g in opt.param_groups:
                g["lr"] = 3e-3 * lr_factor("cosine", (epoch + s / steps) / epochs)
            idx = order[s * bs : (s + 1) * bs]
            x = images[idx].float().div_(255)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            loss = F.cross_entropy(net(x), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        seconds = time.perf_counter() - t0
        _, acc = evaluate(model, test)
        rows.append({"epoch": epoch + 1, "seconds": round(seconds, 2),
                     "images_per_s": round(n / seconds, 1), "wall_s": round(
                         time.perf_counter() - t0, 2), "test_acc": round(acc, 4)})  # fmt: skip
    return rows


def convlens_loop(
    data: Subset | TensorImages, test: TensorImages, epochs: int, channels_last: bool
) -> list[dict[str, Any]]:
    model = build(ARCH, test.classes, seed=0)
    config = TrainConfig(epochs=epochs, lr=3e-3, schedule="cosine", channels_last=channels_last)
    walls: list[float] = []
    last = [time.perf_counter()]

    def on_epoch(rec: dict[str, Any]) -> None:
        now = time.perf_counter()
        walls.append(now - last[0])
        last[0] = now

    with tempfile.TemporaryDirectory() as out:
        result = train(model, data, test, out, config, on_epoch=on_epoch)
    return [{"epoch": h["epoch"], "seconds": h["seconds"], "images_per_s": h["images_per_s"],
             "wall_s": round(w, 2), "test_acc": h["val_acc"]}
            for h, w in zip(result.history, walls, strict=True)]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--limit", type=int, default=None, help="training images (default all)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    full, test = open_fashion_mnist("train"), open_fashion_mnist("test")
    data: Subset | TensorImages = full if args.limit is None else Subset(full, args.limit)
    if isinstance(data, Subset):
        idx = torch.tensor(data.indices)
        images, labels = full.images[idx], full.labels[idx]
    else:
        images, labels = full.images, full.labels
    runs = {
        "plain PyTorch (NCHW)": plain_loop(images, labels, test, args.epochs, False),
        "plain PyTorch (channels_last)": plain_loop(images, labels, test, args.epochs, True),
        "convlens train (NCHW)": convlens_loop(data, test, args.epochs, False),
        "convlens train (channels_last, default)": convlens_loop(data, test, args.epochs, True),
    }
    print(json.dumps({"train_images": len(data), "threads": args.threads, "runs": runs}, indent=1))
    print(f"\n{'loop':42} {'epoch':>5} {'train s':>8} {'img/s':>8} {'wall s':>7} {'test acc':>8}")
    for name, rows in runs.items():
        for r in rows:
            print(f"{name:42} {r['epoch']:>5} {r['seconds']:>8.2f} {r['images_per_s']:>8,.0f} "
                  f"{r['wall_s']:>7.2f} {r['test_acc']:>8.2%}")  # fmt: skip


if __name__ == "__main__":
    main()
