"""Loading time of every model format, and the speed of the converted networks.

For Tiny VGG (3×64×64, batch 32) and ResNet-18 (3×224×224, batch 8, random weights) the
script writes the model as a safetensors state dict, a torch.export program (``.pt2``), a
TorchScript archive and an ONNX file, then measures ``load_model`` on each (median of
``--repeat`` runs), and the forward pass of the loaded network next to the original's
(the baseline: conversion should cost nothing at run time), with the largest logit
difference. CNN Explainer's TF.js model is timed too when the shared fixture is present.
Other work on the machine makes the timings noisy.

    .venv/bin/python benchmarks/formats.py              # JSON, then a table
    .venv/bin/python benchmarks/formats.py --models tiny --repeat 5
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from convlens.model import Model, build, load_model

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT.parent / "shared" / "fixtures" / "cnn-explainer" / "model.json"
MODELS = {"tiny": ("tiny-vgg", 32), "resnet18": ("resnet18", 8)}


def median_seconds(fn: Callable[[], Any], repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def forward_seconds(model: Model, x: torch.Tensor, repeat: int) -> float:
    with torch.inference_mode():
        return median_seconds(lambda: model(x), repeat)


def paired_forward(a: Model, b: Model, x: torch.Tensor, repeat: int) -> tuple[float, float]:
    """Medians of ``a(x)`` and ``b(x)`` timed alternately, so load drift hits both alike."""
    ta: list[float] = []
    tb: list[float] = []
    with torch.inference_mode():
        a(x), b(x)  # warm-up
        for _ in range(repeat):
            for model, times in ((a, ta), (b, tb)):
                t = time.perf_counter()
                model(x)
                times.append(time.perf_counter() - t)
    return statistics.median(ta), statistics.median(tb)


def write_all(model: Model, folder: Path) -> dict[str, tuple[Path, dict[str, Any]]]:
    """The model in every format, with the options ``load_model`` needs for each."""
    example = (torch.zeros(1, *model.spec.shape),)
    spec = model.spec.to_dict()
    arch = model.arch or {}
    args = ",".join(f"{k}={v}" for k, v in arch.get("args", {}).items())
    out: dict[str, tuple[Path, dict[str, Any]]] = {}
    state = {k: v.contiguous() for k, v in model.net.state_dict().items()}
    save_file(state, folder / "w.safetensors")
    out["safetensors"] = (folder / "w.safetensors", {"arch": f"{arch['name']}:{args}".rstrip(":")})
    torch.export.save(torch.export.export(model.net, example), folder / "net.pt2")
    out["pt2"] = (folder / "net.pt2", {"input_spec": spec})
    torch.jit.trace(model.net, example).save(str(folder / "net.ts"))
    out["torchscript"] = (
        folder / "net.ts",
        {"input_spec": spec, "format": "torchscript", "trust_pickle": True},
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.net, example, str(folder / "net.onnx"), dynamo=False)
    out["onnx"] = (folder / "net.onnx", {"input_spec": spec})
    return out


def bench_model(key: str, repeat: int) -> list[dict[str, Any]]:
    name, batch = MODELS[key]
    model = build(name, seed=0).eval()
    x = torch.rand(batch, *model.spec.shape, generator=torch.Generator().manual_seed(0))
    base = forward_seconds(model, x, repeat)
    with torch.inference_mode():
        want = model(x)
    rows = [{"model": name, "format": "original", "load_s": None, "forward_s": base,
             "forward_vs_original": 1.0, "max_abs_diff": 0.0}]  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for fmt, (path, opts) in write_all(model, Path(tmp)).items():
            load_s = median_seconds(functools.partial(load_model, path, **opts), repeat)
            loaded = load_model(path, **opts)
            orig, fwd = paired_forward(model, loaded, x, repeat)
            with torch.inference_mode():
                diff = float((loaded(x) - want).abs().max())
            rows.append({"model": name, "format": fmt, "load_s": load_s, "forward_s": fwd,
                         "forward_vs_original": fwd / orig, "max_abs_diff": diff})  # fmt: skip
    return rows


def bench_tfjs(repeat: int) -> list[dict[str, Any]]:
    if not FIXTURE.is_file():
        return []
    load_s = median_seconds(lambda: load_model(FIXTURE), repeat)
    model = load_model(FIXTURE)
    x = torch.rand(32, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    return [{"model": "cnn-explainer", "format": "tfjs", "load_s": load_s,
             "forward_s": forward_seconds(model, x, repeat), "forward_vs_original": None,
             "max_abs_diff": None}]  # fmt: skip


def table(rows: list[dict[str, Any]]) -> str:
    def cell(v: Any, f: str) -> str:
        return f"{'-':>{f[:-3]}}" if v is None else format(v, f)

    lines = [
        f"{'model':<14} {'format':<12} {'load ms':>9} {'fwd ms':>8} {'fwd/orig':>8} {'max|Δ|':>9}"
    ]
    for r in rows:
        lines.append(
            f"{r['model']:<14} {r['format']:<12} {cell(r['load_s'] and r['load_s'] * 1e3, '9.1f')} "
            f"{r['forward_s'] * 1e3:8.2f} {cell(r['forward_vs_original'], '8.2f')} "
            f"{cell(r['max_abs_diff'], '9.1e')}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rows = bench_tfjs(args.repeat)
    for key in args.models:
        rows += bench_model(key, args.repeat)
    print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(),
                      "rows": rows}, indent=1))  # fmt: skip
    print(table(rows))


if __name__ == "__main__":
    main()
