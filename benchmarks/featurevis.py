"""Feature-visualization speed and quality, next to the limit and to Lucent.

Two models, 10 channels rendered at once (one image per channel, batch 10), Fourier
parameterization with decorrelated colour, Adam at 0.05 and Lucent's standard transforms in
absolute pixels (pad 12, jitter 8, scale ±10%, rotation ±10°, jitter 4) on both sides:

- ``tiny``: CNN Explainer's Tiny VGG (64×64; the zoo's tiny-vgg with random weights if the
  fixture is absent), channels 0-9 of ``conv_2_2``;
- ``resnet18``: ResNet-18 at 224×224 with random weights, channels 0-9 of ``layer3.1.conv2``.

For each: render steps per second (ours), one forward + backward to the input of the same
batch (the limit: a render step cannot be cheaper), and Lucent's steps per second on the same
settings, run in ``.venv-peers`` (torch + torchvision + torch-lucent) in a subprocess, or "not
installed". Then the objective reached after ``--value-steps`` steps (256 by default): the
mean over the 10 images of each channel's mean activation, measured by convlens on the final
images of both tools without transforms, so the numbers are comparable.

The machine is shared, so timings are noisy; compare ratios measured in the same run.

    .venv/bin/python benchmarks/featurevis.py                    # JSON, then a table
    .venv/bin/python benchmarks/featurevis.py --models tiny --value-steps 64 --threads 1

On a crowded machine, ``--threads 1`` avoids the thread contention that can make two torch
threads many times slower than one.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import convlens
import convlens.featurevis as fv
from convlens.model import Model, build

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT.parent / "shared" / "fixtures" / "cnn-explainer" / "model.json"
PEERS_PYTHON = ROOT / ".venv-peers" / "bin" / "python"
CHANNELS = list(range(10))

# The Lucent side: builds the same network from a state dict, renders, saves the images.
LUCENT_SCRIPT = r"""
import json, sys, time
import numpy as np, torch
from torch import nn
from lucent.optvis import objectives, param, render

cfg = json.loads(sys.argv[1])
torch.set_num_threads(cfg["threads"])
torch.manual_seed(0)
if cfg["arch"] == "tiny":
    layers = []
    c = 3
    for b in (1, 2):
        for k in (1, 2):
            layers += [(f"conv_{b}_{k}", nn.Conv2d(c, 10, 3)), (f"relu_{b}_{k}", nn.ReLU())]
            c = 10
        layers.append((f"max_pool_{b}", nn.MaxPool2d(2)))
    from collections import OrderedDict
    size = cfg["size"]
    for _ in range(2):
        size = (size - 4) // 2
    layers += [("flatten", nn.Flatten()), ("output", nn.Linear(10 * size * size, 10))]
    net = nn.Sequential(OrderedDict(layers))
else:
    import torchvision
    net = torchvision.models.resnet18()
net.load_state_dict(torch.load(cfg["weights"]))

class Wrapped(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(cfg["mean"]).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(cfg["std"]).view(1, -1, 1, 1))
    def forward(self, x):
        return self.net((x - self.mean) / self.std)

model = Wrapped().eval()
name = "net_" + cfg["layer"].replace(".", "_")
obj = sum(objectives.channel(name, c, batch=i) for i, c in enumerate(cfg["channels"]))
n = len(cfg["channels"])
fixed = cfg["size"] if cfg["size"] < 224 else None
out = {}
for key, steps in (("timing", cfg["time_steps"]), ("value", cfg["value_steps"])):
    t0 = time.perf_counter()
    imgs = render.render_vis(
        model, obj, lambda: param.image(cfg["size"], batch=n), thresholds=(steps,),
        preprocess=False, progress=False, show_image=False, fixed_image_size=fixed,
    )
    out[key + "_seconds"] = time.perf_counter() - t0
    if key == "value":
        np.save(cfg["images"], imgs[-1])
out["torch"] = torch.__version__
print(json.dumps(out))
"""


def load(which: str) -> tuple[Model, str, str]:
    if which == "tiny":
        if FIXTURE.is_file():
            return convlens.load_model(str(FIXTURE)).eval(), "conv_2_2", "CNN Explainer Tiny VGG"
        return build("tiny-vgg", seed=0).eval(), "conv_2_2", "tiny-vgg (random; fixture absent)"
    return build("resnet18", seed=0).eval(), "layer3.1.conv2", "ResNet-18 224×224 (random)"


def per_second(fn: Any, repeat: int) -> float:
    fn()  # warm-up
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    return repeat / (time.perf_counter() - t0)


def limit(model: Model, batch: int) -> float:
    """Forward + backward to the input per second: the cost floor of one render step."""
    x = torch.rand(batch, *model.spec.shape, requires_grad=True)

    def step() -> None:
        torch.autograd.grad(model(x).sum(), x)

    return per_second(step, 5)


def lucid_transforms() -> fv.Compose:
    """Lucent's standard transforms in absolute pixels, as Lucent applies them at any size
    (our ``standard`` preset shrinks them on small images; here both tools do the same)."""
    return fv.Compose(
        [
            fv.Pad(12),
            fv.Jitter(8),
            fv.Scale(tuple(1 + (i - 5) / 50 for i in range(11))),
            fv.Rotate(tuple(float(a) for a in range(-10, 11)) + (0.0,) * 5),
            fv.Jitter(4),
        ]
    )


def ours(model: Model, layer: str, steps: int, value_steps: int) -> dict[str, float]:
    objective = fv.channel(layer, CHANNELS)
    kw: dict[str, Any] = {"transforms": lucid_transforms(), "seed": 0}
    fv.render(model, objective, steps=2, **kw)  # warm-up
    t0 = time.perf_counter()
    fv.render(model, objective, steps=steps, **kw)
    rate = steps / (time.perf_counter() - t0)
    r = fv.render(model, objective, steps=value_steps, **kw)
    value = float(fv.evaluate(model, objective, r.images).mean())
    return {"steps_per_s": rate, "objective": value}


def lucent(model: Model, layer: str, which: str, steps: int, value_steps: int) -> dict[str, Any]:
    if not PEERS_PYTHON.is_file():
        return {"status": "not installed (.venv-peers absent)"}
    check = subprocess.run([str(PEERS_PYTHON), "-c", "import lucent"], capture_output=True)
    if check.returncode != 0:
        return {"status": "not installed (lucent not importable in .venv-peers)"}
    with tempfile.TemporaryDirectory() as tmp:
        weights, images = Path(tmp) / "w.pt", Path(tmp) / "imgs.npy"
        torch.save(model.net.state_dict(), weights)
        cfg = {
            "arch": which, "weights": str(weights), "images": str(images), "layer": layer,
            "channels": CHANNELS, "size": model.spec.height, "mean": list(model.spec.mean),
            "std": list(model.spec.std), "time_steps": steps, "value_steps": value_steps,
            "threads": torch.get_num_threads(),
        }  # fmt: skip
        proc = subprocess.run(
            [str(PEERS_PYTHON), "-c", LUCENT_SCRIPT, json.dumps(cfg)],
            capture_output=True, text=True, timeout=3600,
        )  # fmt: skip
        if proc.returncode != 0:
            return {"status": "failed", "stderr": proc.stderr[-2000:]}
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        imgs = torch.from_numpy(np.load(images)).permute(0, 3, 1, 2).float()  # (B,H,W,C) -> BCHW
    value = float(fv.evaluate(model, fv.channel(layer, CHANNELS), imgs).mean())
    return {
        "status": "ok",
        "torch": out["torch"],
        # Lucent's first call includes hooking and setup; per-step rate over the timing run.
        "steps_per_s": steps / out["timing_seconds"],
        "objective": value,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["tiny", "resnet18"])
    ap.add_argument("--steps", type=int, default=0, help="timed steps (0: 50 tiny, 10 resnet)")
    ap.add_argument("--value-steps", type=int, default=256)
    ap.add_argument("--no-lucent", action="store_true")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    for which in args.models:
        model, layer, desc = load(which)
        steps = args.steps or (50 if which == "tiny" else 10)
        row: dict[str, Any] = {"model": desc, "layer": layer, "batch": len(CHANNELS)}
        row["fwd_bwd_per_s"] = limit(model, len(CHANNELS))
        row["convlens"] = ours(model, layer, steps, args.value_steps)
        row["lucent"] = (
            {"status": "skipped"}
            if args.no_lucent
            else lucent(model, layer, which, steps, args.value_steps)
        )
        rows.append(row)
        print(json.dumps(row), flush=True)
    print_table(rows, args.value_steps)


def print_table(rows: list[dict[str, Any]], value_steps: int) -> None:
    print()
    head = f"{'model':34} {'fwd+bwd/s':>10} {'ours step/s':>12} {'lucent step/s':>14} "
    head += f"{'ours obj@' + str(value_steps):>14} {'lucent obj':>11}"
    print(head)
    for r in rows:
        lu = r["lucent"]
        ok = lu.get("status") == "ok"
        lu_rate = f"{lu['steps_per_s']:.1f}" if ok else str(lu["status"])[:14]
        lu_obj = f"{lu['objective']:.3f}" if ok else "-"
        print(
            f"{r['model']:34} {r['fwd_bwd_per_s']:10.1f} {r['convlens']['steps_per_s']:12.1f} "
            f"{lu_rate:>14} {r['convlens']['objective']:14.3f} {lu_obj:>11}"
        )
    print("(shared 2-core machine: timings are noisy; compare ratios within one run)")


if __name__ == "__main__":
    main()
