"""Images per second of ``convlens scan`` on Ray (1 and 2 workers) next to the local engine and
a forward pass alone, and the cost of the driver's merge. Numbers for ``docs/scale.md``.

Case: ResNet-18 (torchvision's layout, seeded weights) on 3×224×224 over a folder of 256×256
JPEGs (made once), scanning ``layer4.1.relu2`` and ``layer3.1.relu2`` with k = 16: decoding,
resizing, the forward pass and the map all count, as on ImageNet. Every engine gets one thread
per worker (Ray gives each worker one CPU), so "per worker" compares like with like.

For Ray two rates are given: the wall rate (including starting the workers, each a fresh
Python importing torch and loading the model) and the steady rate between the first and the
last shard result, which is what a long scan sees.

    .venv/bin/python benchmarks/scale.py            # 192 images
    .venv/bin/python benchmarks/scale.py --n 64     # quicker
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scan import make_folder  # the scan benchmark's JPEG folder

LAYERS = ["layer4.1.relu2", "layer3.1.relu2"]
BATCH = 16


def setup(n: int) -> tuple[Any, Any]:
    from convlens.data import FolderImages
    from convlens.model import build

    model = build("resnet18:input_size=224,num_classes=10", seed=0).eval()
    data = FolderImages(make_folder(n), "all", shape=(3, 224, 224))
    data.items = data.items[:n]
    return model, data


def forward_only(model: Any, data: Any) -> float:
    t0 = time.perf_counter()
    with torch.inference_mode():
        for _, images, _ in data.batches(BATCH):
            model(images)
    return len(data) / (time.perf_counter() - t0)


def local_scan(model: Any, data: Any) -> float:
    from convlens.analysis import scan

    t0 = time.perf_counter()
    scan(model, data, LAYERS, k=16, batch_size=BATCH, progress=False)
    return len(data) / (time.perf_counter() - t0)


def ray_scan_rates(model: Any, data: Any, workers: int) -> dict[str, float]:
    from convlens.analysis.ray_engine import ray_scan

    marks: list[tuple[float, int]] = []
    t0 = time.perf_counter()
    ray_scan(model, data, LAYERS, k=16, batch_size=BATCH, workers=workers,
             progress=lambda done, _t: marks.append((time.perf_counter(), done)))  # fmt: skip
    wall = time.perf_counter() - t0
    (ta, da), (tb, db) = marks[0], marks[-1]
    steady = (db - da) / (tb - ta) if tb > ta else float("nan")
    return {"wall_img_s": len(data) / wall, "steady_img_s": steady, "wall_s": wall}


def merge_cost(model: Any, data: Any, shards: int = 64) -> dict[str, float]:
    """Driver-side cost per shard state: decode (safetensors) + merge, for this case's layers."""
    from convlens.analysis.ray_engine import decode_state, encode_state, tree_merge
    from convlens.analysis.scan import scan_indices

    state, _ = scan_indices(model, data, LAYERS, range(BATCH), k=16, batch_size=BATCH)
    raw = encode_state(state)
    t0 = time.perf_counter()
    states = [decode_state(raw) for _ in range(shards)]
    t1 = time.perf_counter()
    tree_merge(states)
    t2 = time.perf_counter()
    return {"state_kib": len(raw) / 1024, "decode_ms": 1e3 * (t1 - t0) / shards,
            "merge_ms": 1e3 * (t2 - t1) / shards}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=192, help="images")
    parser.add_argument("--workers", default="1,2", help="Ray worker counts to measure")
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    model, data = setup(args.n)
    results: dict[str, Any] = {"images": len(data), "batch": BATCH, "layers": LAYERS}
    results["forward_img_s"] = forward_only(model, data)
    results["local_scan_img_s"] = local_scan(model, data)
    results["merge"] = merge_cost(model, data)
    from convlens.analysis.ray_engine import ray_session

    t0 = time.perf_counter()
    with ray_session(None, workers=max(int(w) for w in args.workers.split(","))):
        results["ray_start_s"] = time.perf_counter() - t0
        for w in args.workers.split(","):
            results[f"ray_{w}_workers"] = ray_scan_rates(model, data, int(w))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
