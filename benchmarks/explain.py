"""Time and peak memory of every attribution method, next to the limits and the peers.

Three models: CNN Explainer's Tiny VGG (64×64, batch 32; the zoo's tiny-vgg with random weights
if the fixture is absent), ResNet-18 and MobileNetV2 (224×224, batch 8, random weights; the
zoo's torchvision-layout networks, ``--models mobilenet``). For each:

- the limits: one forward pass (inference mode) and one forward + backward to the input;
- every convlens method (``convlens.explain``);
- Captum's implementation of the same method (in this venv) with its default and its best
  batching settings;
- pytorch-grad-cam's (it needs torchvision, so it runs in ``.venv-peers`` in a subprocess,
  which also measures its own forward + backward limit there: compare ratios, not seconds,
  across the two venvs);
- with ``--sweep``: occlusion throughput over chunk sizes and memory layouts.

Peak memory is the rise of the process's resident set (``VmHWM`` after resetting it through
``/proc/self/clear_refs``); the script re-executes itself with glibc's mmap threshold lowered
so that freed tensors go back to the system and every measurement starts from the same RSS.
Timings are medians over ``--repeat`` runs after one warm-up run. Other work on the machine
makes them noisy.

    .venv/bin/python benchmarks/explain.py                 # everything, JSON + table
    .venv/bin/python benchmarks/explain.py --models tiny --sweep
    .venv/bin/python benchmarks/explain.py --occlusion-goal --threads 1   # issue #15's rows
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT.parent / "shared" / "fixtures" / "cnn-explainer" / "model.json"
PEERS_PYTHON = ROOT / ".venv-peers" / "bin" / "python"


def reexec_with_malloc_env() -> None:
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") is None:
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
        os.execve(sys.executable, [sys.executable, *sys.argv], env)


# --------------------------------------------------------------------------- measuring


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _reset_peak() -> None:
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def measure(fn: Callable[[], Any], repeat: int, label: str = "") -> dict[str, float]:
    """Median seconds over ``repeat`` runs after a warm-up that also gives the peak memory."""
    gc.collect()
    rss0 = _status_kib("VmRSS")
    _reset_peak()
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    peak = max(0, _status_kib("VmHWM") - rss0) / 1024
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    res = {
        "seconds": statistics.median(times) if times else first,
        "min_seconds": min(times) if times else first,
        "peak_mib": round(peak, 1),
    }
    if label:
        print(
            f"  {label}: {res['seconds']:.4f} s, {res['peak_mib']} MiB", file=sys.stderr, flush=True
        )
    return res


# --------------------------------------------------------------------------- models


def load(name: str) -> tuple[Any, torch.Tensor, str]:
    import convlens
    from convlens.model import build

    gen = torch.Generator().manual_seed(0)
    if name == "tiny":
        if FIXTURE.is_file():
            model = convlens.load_model(str(FIXTURE))
            imgs = torch.cat([model.load_image(s.path) for s in model.samples])
            x = torch.cat([imgs, imgs])[:32]
            return model, x, "CNN Explainer Tiny VGG, 64×64, batch 32"
        model = build("tiny-vgg", seed=0).eval()
        return model, torch.rand(32, 3, 64, 64, generator=gen), "tiny-vgg (random), 64×64, b32"
    if name == "mobilenet":
        model = build("mobilenet_v2", seed=0).eval()
        x = torch.rand(8, 3, 224, 224, generator=gen)
        return model, x, "MobileNetV2 (random), 224×224, b8"
    model = build("resnet18", seed=0).eval()
    return model, torch.rand(8, 3, 224, 224, generator=gen), "ResNet-18 (random), 224×224, b8"


# method -> per-model parameters (kept small enough for a 2-core machine)
PARAMS: dict[str, dict[str, dict[str, Any]]] = {
    "tiny": {
        "smoothgrad": {"n_samples": 25},
        "integrated-gradients": {"n_steps": 50},
        "occlusion": {"window": 8, "stride": 4},
    },
    "resnet": {
        "smoothgrad": {"n_samples": 4},
        "integrated-gradients": {"n_steps": 8},
        "occlusion": {"window": 56, "stride": 56},
    },
}
PARAMS["mobilenet"] = PARAMS["resnet"]
SCORECAM_BATCH = {
    "tiny": 32,
    "resnet": 1,
    "mobilenet": 1,
}  # Score-CAM on ResNet: 512 passes per image


def limits(model: Any, x: torch.Tensor, repeat: int) -> dict[str, Any]:
    target = model(x).argmax(1)

    def forward() -> None:
        with torch.inference_mode():
            model(x)

    def forward_backward() -> None:
        xr = x.clone().requires_grad_(True)
        out = model(xr)
        torch.autograd.grad(out.gather(1, target[:, None]).sum(), xr)

    def forward_64() -> None:  # per-image cost of large inference batches (Score-CAM's unit)
        with torch.inference_mode():
            model(x[:1].expand(64, -1, -1, -1).contiguous())

    res = {
        "forward": measure(forward, repeat, "forward"),
        "forward+backward": measure(forward_backward, repeat, "forward+backward"),
    }
    res["forward per image (batch 64)"] = measure(forward_64, max(1, repeat // 2), "forward b64")
    res["forward per image (batch 64)"]["seconds"] /= 64
    return res


def paired(fn: Callable[[], Any], ref: Callable[[], Any], repeat: int) -> float:
    """Median of ``time(fn) / time(ref)`` over runs that alternate the two."""
    return paired_both(fn, ref, repeat)[0]


def paired_both(fn: Callable[[], Any], ref: Callable[[], Any], repeat: int) -> tuple[float, float]:
    """Medians of the wall-clock and of the CPU-time ratios over alternating runs. On a
    loaded machine the process waits for a core for a share of its wall time that swings
    from run to run; its CPU time does not include that wait, so the CPU ratio is steadier
    (one torch thread: CPU time is the work done)."""
    walls, cpus = [], []
    for _ in range(max(2, repeat)):
        t0, c0 = time.perf_counter(), time.process_time()
        ref()
        t1, c1 = time.perf_counter(), time.process_time()
        fn()
        t2, c2 = time.perf_counter(), time.process_time()
        walls.append((t2 - t1) / (t1 - t0))
        cpus.append((c2 - c1) / max(c1 - c0, 1e-9))
    return round(statistics.median(walls), 3), round(statistics.median(cpus), 3)


def limit_for(
    model: Any, x: torch.Tensor, name: str, params: dict[str, Any]
) -> tuple[Callable[[], Any], int, str] | None:
    """The work a method cannot avoid: ``(run it once, times it is needed, description)``."""
    target = model(x).argmax(1)

    def forward_backward() -> None:
        xr = x.clone().requires_grad_(True)
        out = model(xr)
        torch.autograd.grad(out.gather(1, target[:, None]).sum(), xr)

    if name in ("smoothgrad", "integrated-gradients"):
        n = params.get("n_samples", params.get("n_steps", 1))
        return forward_backward, n, f"{n} × forward+backward"
    if name == "score-cam":
        k = model.graph.last_spatial().output_shape[0]
        masked = x.repeat_interleave(k, dim=0)  # the B K masked images it must evaluate

        def passes() -> None:
            with torch.inference_mode():
                for i in range(0, masked.shape[0], 64):
                    model(masked[i : i + 64])

        return passes, 1, f"{masked.shape[0]} forward images in batches of 64"
    if name in ("occlusion", "cam"):
        return None
    return forward_backward, 1, "forward+backward"


def ours(
    model: Any, x: torch.Tensor, key: str, repeat: int, only: list[str], with_scorecam: bool
) -> dict[str, Any]:
    import convlens
    from convlens.methods import METHODS

    out: dict[str, Any] = {}
    for name in METHODS.names():
        if only and name not in only:
            continue
        xs = x[: SCORECAM_BATCH[key]] if name == "score-cam" else x
        params = PARAMS[key].get(name, {})
        if name == "cam" and key == "tiny":
            continue  # Tiny VGG has no global-average-pooled head
        if name == "score-cam" and key != "tiny" and not with_scorecam:
            continue
        fn = lambda n=name, xs=xs, p=params: convlens.explain(model, xs, n, **p)  # noqa: E731
        r = measure(fn, repeat, name)
        out[name] = r | {"params": params, "batch": xs.shape[0]}
        ref = limit_for(model, xs, name, params)
        if ref is not None:  # the same limit timed right beside it: drift cancels out
            wall, cpu = paired_both(fn, ref[0], repeat)
            out[name]["vs_limit"] = wall / ref[1]
            out[name]["vs_limit_cpu"] = cpu / ref[1]
            out[name]["limit"] = ref[2]
    if "occlusion" in out:
        p = PARAMS[key]["occlusion"] | {"incremental": False}
        out["occlusion (full passes)"] = measure(
            lambda: convlens.explain(model, x, "occlusion", **p), repeat, "occlusion full"
        ) | {"params": p, "batch": x.shape[0]}
    return out


def captum_runs(model: Any, x: torch.Tensor, key: str, repeat: int) -> dict[str, Any]:
    try:
        from captum.attr import (
            Deconvolution,
            GuidedBackprop,
            GuidedGradCam,
            InputXGradient,
            IntegratedGradients,
            LayerGradCam,
            NoiseTunnel,
            Occlusion,
            Saliency,
        )
    except ImportError:
        return {"skipped": "captum is not installed"}
    import warnings

    warnings.filterwarnings("ignore")
    target = model(x).argmax(1).tolist()
    layer = model.net.get_submodule(model.graph.last_spatial().module)
    xr = x.clone().requires_grad_(True)
    p = PARAMS[key]
    B = x.shape[0]
    n_sg, n_ig = p["smoothgrad"]["n_samples"], p["integrated-gradients"]["n_steps"]
    occ = p["occlusion"]
    window, stride = (3, occ["window"], occ["window"]), (3, occ["stride"], occ["stride"])
    runs: dict[str, Callable[[], Any]] = {
        "saliency": lambda: Saliency(model).attribute(xr, target=target),
        "gradient-x-input": lambda: InputXGradient(model).attribute(xr, target=target),
        "guided-backprop": lambda: GuidedBackprop(model).attribute(xr, target=target),
        "deconvnet": lambda: Deconvolution(model).attribute(xr, target=target),
        "smoothgrad": lambda: NoiseTunnel(Saliency(model)).attribute(
            xr,
            nt_type="smoothgrad",
            nt_samples=n_sg,
            nt_samples_batch_size=max(1, 64 // B),
            stdevs=0.15,
            target=target,
            abs=False,
        ),
        "integrated-gradients": lambda: IntegratedGradients(model).attribute(
            xr, target=target, n_steps=n_ig, internal_batch_size=64
        ),
        "grad-cam": lambda: LayerGradCam(model, layer).attribute(xr, target=target),
        "guided-grad-cam": lambda: GuidedGradCam(model, layer).attribute(xr, target=target),
    }
    out: dict[str, Any] = {}
    for name, fn in runs.items():
        out[name] = measure(fn, repeat, "captum " + name)
    fill = model.mean.view(1, -1, 1, 1).expand_as(x).contiguous()
    best: dict[str, Any] | None = None
    for ppe in (1, *((16, 64) if key == "tiny" else (4, 16))):
        r = measure(
            functools.partial(
                Occlusion(model).attribute,
                x,
                sliding_window_shapes=window,
                strides=stride,
                baselines=fill,
                target=target,
                perturbations_per_eval=ppe,
            ),
            1 if ppe == 1 else repeat,
            f"captum occlusion ppe={ppe}",
        )
        out[f"occlusion ppe={ppe}"] = r
        if ppe == 1:
            out["occlusion"] = r | {"setting": "default perturbations_per_eval=1"}
        elif best is None or r["seconds"] < best["seconds"]:
            best = r | {"setting": f"perturbations_per_eval={ppe}"}
    out["occlusion best"] = best
    return out


def sweep(model: Any, x: torch.Tensor, key: str, repeat: int) -> dict[str, Any]:
    """Occlusion throughput (occluded images per second) by chunk size and memory layout."""
    import convlens

    p = PARAMS[key]["occlusion"]
    out: dict[str, Any] = {}
    for chunk in (64, 256, 1024) if key == "tiny" else (16, 64):
        for cl in (False, True):
            a = convlens.explain(model, x[:1], "occlusion", **p)
            n_img = a.extra["grid_logit"][0].numel() * x.shape[0]
            r = measure(
                functools.partial(
                    convlens.explain,
                    model,
                    x,
                    "occlusion",
                    chunk_size=chunk,
                    channels_last=cl,
                    incremental=False,
                    **p,
                ),
                repeat,
                f"sweep chunk={chunk} channels_last={cl}",
            )
            r["images_per_second"] = round(n_img / r["seconds"], 1)
            out[f"chunk={chunk} channels_last={cl}"] = r
    return out


# --------------------------------------------------------------------------- occlusion goal

# Issue #15's setting: (model key, image size, batch, window, stride)
OCCLUSION_GOAL = {"resnet": (224, 2, 32, 16), "mobilenet": (224, 2, 32, 16), "tiny": (64, 32, 8, 4)}


def occlusion_goal(
    model: Any, key: str, repeat: int, rows: list[str] | None = None
) -> dict[str, Any]:
    """Occlusion side by side on the same model and images: ours exact (incremental), ours
    approximate (default, the earlier default ``drill=0.25``, ``tau=0.4`` and ``tau=0.3,
    coarse=3``; their error against the exact map is reported too), ours with full passes,
    Captum's default
    (``perturbations_per_eval=1``) and Captum with ``perturbations_per_eval=64``. After one
    warm-up run of each (which also gives its peak memory) the rows run round-robin
    ``repeat`` times; speed-ups are medians of the per-round ratios of wall time and of
    process (CPU) time, so drift on the busy machine hits both sides of a ratio alike.
    ``rows`` keeps only the named rows; with ``repeat=0`` the warm-up runs alone give the
    seconds and ratios."""
    import warnings

    import convlens

    warnings.filterwarnings("ignore")
    size, batch, window, stride = OCCLUSION_GOAL[key]
    x = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    if model.spec.channels != 3 or model.spec.height != size:
        return {"skipped": f"model input is not 3×{size}×{size}"}
    kw: dict[str, Any] = {"window": window, "stride": stride}
    target = model(x).argmax(1).tolist()
    runs: dict[str, Callable[[], Any]] = {
        "ours exact": lambda: convlens.explain(model, x, "occlusion", target=target, **kw),
        "ours approx": lambda: convlens.explain(
            model, x, "occlusion", target=target, approx=True, **kw
        ),
        "ours approx drill=0.25": lambda: convlens.explain(
            model, x, "occlusion", target=target, approx=True, drill=0.25, **kw
        ),
        "ours approx tau=0.4": lambda: convlens.explain(
            model, x, "occlusion", target=target, approx=True, tau=0.4, **kw
        ),
        "ours approx tau=0.3 coarse=3": lambda: convlens.explain(
            model, x, "occlusion", target=target, approx=True, tau=0.3, coarse=3, **kw
        ),
        "ours full passes": lambda: convlens.explain(
            model, x, "occlusion", target=target, incremental=False, **kw
        ),
    }
    try:
        from captum.attr import Occlusion
    except ImportError:
        Occlusion = None
    if Occlusion is not None:
        fill = model.mean.view(1, -1, 1, 1).expand_as(x).contiguous()

        def captum(ppe: int) -> Callable[[], Any]:
            return lambda: Occlusion(model).attribute(
                x, sliding_window_shapes=(3, window, window), strides=(3, stride, stride),
                baselines=fill, target=target, perturbations_per_eval=ppe,
            )  # fmt: skip

        runs["captum default"] = captum(1)
        runs["captum ppe=64"] = captum(64)
    if rows:
        runs = {name: fn for name, fn in runs.items() if name in rows}
    out: dict[str, Any] = {"setting": f"{size}×{size}, batch {batch}, window {window}, "
                           f"stride {stride}, {torch.get_num_threads()} threads"}  # fmt: skip
    times: dict[str, list[float]] = {name: [] for name in runs}
    grids: dict[str, torch.Tensor] = {}

    def keep(name: str, fn: Callable[[], Any]) -> Callable[[], Any]:
        def run() -> None:
            result = fn()
            if name.startswith("ours"):
                grids[name] = result.extra["grid_logit"]

        return run

    cpu: dict[str, list[float]] = {name: [] for name in runs}  # process time: load-proof-ish
    for name, fn in runs.items():  # warm-up, peak memory, the maps
        c0 = time.process_time()
        out[name] = measure(keep(name, fn), 0, f"occlusion goal {name}")
        if repeat == 0:
            times[name].append(out[name]["seconds"])
            cpu[name].append(time.process_time() - c0)
    out["load before"] = [round(v, 1) for v in os.getloadavg()]
    for _ in range(repeat):
        for name, fn in runs.items():
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    out["load after"] = [round(v, 1) for v in os.getloadavg()]
    for name, ts in times.items():
        if ts:
            out[name]["seconds"] = statistics.median(ts)
            out[name]["all_seconds"] = [round(t, 3) for t in ts]
        if cpu[name]:
            out[name]["cpu_seconds"] = statistics.median(cpu[name])
            out[name]["all_cpu_seconds"] = [round(t, 3) for t in cpu[name]]

    def speed_ups(ts: dict[str, list[float]]) -> dict[str, float]:
        ratios: dict[str, float] = {}
        for peer in ("captum default", "captum ppe=64", "ours full passes"):
            for mine in [n for n in runs if n.startswith("ours") and n != "ours full passes"]:
                if ts.get(peer) and ts.get(mine):
                    r = [p / m for p, m in zip(ts[peer], ts[mine], strict=True)]
                    ratios[f"{peer} / {mine}"] = round(statistics.median(r), 2)
        return ratios

    ratios = speed_ups(times)
    out["speed-ups"] = ratios
    out["cpu speed-ups"] = speed_ups(cpu)
    out["approximation error"] = approximation_error(grids)
    print(json.dumps({k: out[k] for k in ("speed-ups", "cpu speed-ups", "approximation error")},
                     indent=1), file=sys.stderr, flush=True)  # fmt: skip
    return out


def approximation_error(grids: dict[str, torch.Tensor]) -> dict[str, dict[str, float | None]]:
    """Each approximate row's logit-drop grid against the exact one: the worst per-example
    Pearson correlation and largest error over that example's largest exact drop (the
    measures of ``tests/test_methods_incremental.py``); ``None`` where an exact map is flat."""
    exact = grids.get("ours exact")
    res: dict[str, dict[str, float | None]] = {}
    for name, grid in grids.items():
        if exact is None or "approx" not in name:
            continue
        corrs, errs = [], []
        for e, a in zip(exact.flatten(1), grid.flatten(1), strict=True):
            corrs.append(float(torch.corrcoef(torch.stack([e, a]))[0, 1]))
            errs.append(float((e - a).abs().max() / e.abs().max()))
        ok = all(v == v for v in corrs + errs)  # NaN where an exact map is constant
        res[name] = {"correlation": round(min(corrs), 3) if ok else None,
                     "max_error": round(max(errs), 3) if ok else None}  # fmt: skip
    return res


# --------------------------------------------------------------------------- pytorch-grad-cam

PEER_SCRIPT = r"""
import json, sys, warnings
warnings.filterwarnings("ignore")
sys.path.insert(0, sys.argv[1])
import torch
from explain import load, limits, measure, SCORECAM_BATCH
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, LayerCAM, ScoreCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
key, repeat = sys.argv[2], int(sys.argv[3])
model, x, _ = load(key)
layer = model.net.get_submodule(model.graph.last_spatial().module)
res = {"torch": torch.__version__, "limits": limits(model, x, repeat)}
def run(cls, xs, **kw):
    targets = [ClassifierOutputTarget(int(t)) for t in model(xs).argmax(1)]
    def go():
        with cls(model, [layer]) as cam:
            for k, v in kw.items():
                setattr(cam, k, v)
            cam(xs, targets)
    return go
for name, cls in (("grad-cam", GradCAM), ("grad-cam++", GradCAMPlusPlus), ("layer-cam", LayerCAM)):
    res[name] = measure(run(cls, x), repeat)
if key == "tiny" or sys.argv[4] == "1":
    xs = x[: SCORECAM_BATCH[key]]
    res["score-cam"] = measure(run(ScoreCAM, xs, batch_size=64), 1) | {"setting": "batch_size=64"}
print(json.dumps(res))
"""


def gradcam_runs(key: str, repeat: int, with_scorecam: bool) -> dict[str, Any]:
    if not PEERS_PYTHON.is_file():
        return {"skipped": f"{PEERS_PYTHON} not found (pytorch-grad-cam needs torchvision)"}
    env = dict(os.environ, TQDM_DISABLE="1")
    proc = subprocess.run(
        [str(PEERS_PYTHON), "-c", PEER_SCRIPT, str(Path(__file__).parent), key, str(repeat),
         str(int(with_scorecam))],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        return {"skipped": f"pytorch-grad-cam run failed: {proc.stderr.strip()[-400:]}"}
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


# --------------------------------------------------------------------------- report


def goals(res: dict[str, Any], key: str) -> dict[str, Any]:
    """The issue's goals as ratios (< 1 or > 1 as stated)."""
    ours_ = res["ours"]
    g: dict[str, Any] = {}
    for name, r in ours_.items():
        if "vs_limit" in r:
            goal = 2 if name == "score-cam" else 1.5
            g[f"{name} / ({r['limit']}) [goal ≤ {goal}]"] = r["vs_limit"]
            g[f"{name} / ({r['limit']}), CPU time [goal ≤ {goal}]"] = r["vs_limit_cpu"]
    cap = res.get("captum", {})
    if "occlusion" in ours_ and "occlusion" in cap:
        g["captum default occlusion / ours [goal ≥ 3]"] = round(
            cap["occlusion"]["seconds"] / ours_["occlusion"]["seconds"], 2
        )
        g["captum best occlusion / ours [goal ≥ 1]"] = round(
            cap["occlusion best"]["seconds"] / ours_["occlusion"]["seconds"], 2
        )
    return g


def table(results: dict[str, Any]) -> str:
    lines = []
    for _key, res in results.items():
        lines.append(
            f"\n== {res['title']} (torch {torch.__version__}, {torch.get_num_threads()} threads)"
        )
        lines.append(f"{'':34s}{'seconds':>10s}{'peak MiB':>10s}   peer")
        for name, r in res["limits"].items():
            lines.append(f"limit: {name:27s}{r['seconds']:10.4f}{r['peak_mib']:10.1f}")
        cap, gc_ = res.get("captum", {}), res.get("gradcam", {})
        for name, r in res["ours"].items():
            peers = []
            for label, src, k in (("captum", cap, name), ("captum best", cap, name + " best"),
                                  ("grad-cam", gc_, name)):  # fmt: skip
                if isinstance(src.get(k), dict) and "seconds" in src[k]:
                    peers.append(f"{label} {src[k]['seconds']:.4f}s/{src[k]['peak_mib']:.0f}MiB")
            lines.append(
                f"{name:34s}{r['seconds']:10.4f}{r['peak_mib']:10.1f}   " + "; ".join(peers)
            )
        if isinstance(gc_.get("limits"), dict):
            fb = gc_["limits"]["forward+backward"]["seconds"]
            lines.append(
                f"(pytorch-grad-cam venv: torch {gc_['torch']}, forward+backward {fb:.4f}s)"
            )
        for name, r in res.get("sweep", {}).items():
            lines.append(f"occlusion {name:24s}{r['seconds']:10.4f}{r['peak_mib']:10.1f}   "
                         f"{r['images_per_second']} img/s")  # fmt: skip
        for name, v in res["goals"].items():
            lines.append(f"goal: {name}: {v}")
    return "\n".join(lines)


def main() -> None:
    if "--occlusion-goal" not in sys.argv:
        # Not for the occlusion comparison: returning every freed block to the system makes
        # each allocation fault its pages in again, which taxes the incremental runner's many
        # mid-sized regions far beyond what a user sees (79 s instead of 25 s on ResNet-18).
        reexec_with_malloc_env()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="tiny,resnet")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--methods", default="", help="comma-separated subset of ours")
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--sweep", action="store_true", help="occlusion chunk size × channels_last")
    ap.add_argument("--scorecam-resnet", action="store_true", help="Score-CAM on ResNet (slow)")
    ap.add_argument("--out", type=Path, help="also write the JSON here")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    ap.add_argument(
        "--occlusion-goal",
        action="store_true",
        help="only issue #15's occlusion comparison (ours exact/approx vs Captum), paired",
    )
    ap.add_argument(
        "--goal-rows",
        default="",
        help="with --occlusion-goal: only these rows (comma-separated, e.g. 'ours exact,"
        "ours approx,captum default,captum ppe=64'); --repeat 0 times the warm-up runs only",
    )
    args = ap.parse_args()
    only = [m for m in args.methods.split(",") if m]
    goal_rows = [r.strip() for r in args.goal_rows.split(",") if r.strip()]
    if args.threads:
        torch.set_num_threads(args.threads)
    results: dict[str, Any] = {}
    for key in args.models.split(","):
        model, x, title = load(key)
        if args.occlusion_goal:
            results[key] = {
                "title": title,
                "occlusion goal": occlusion_goal(model, key, args.repeat, goal_rows),
            }
            continue
        res: dict[str, Any] = {"title": title, "limits": limits(model, x, args.repeat)}
        print(f"{title}", file=sys.stderr, flush=True)
        res["ours"] = ours(model, x, key, args.repeat, only, args.scorecam_resnet)
        layer = model.graph.last_spatial()
        res["scorecam_passes"] = layer.output_shape[0] * SCORECAM_BATCH[key]
        if not args.no_peers:
            res["captum"] = captum_runs(model, x, key, args.repeat)
            res["gradcam"] = gradcam_runs(key, args.repeat, args.scorecam_resnet)
        if args.sweep:
            res["sweep"] = sweep(model, x, key, args.repeat)
        res["goals"] = goals(res, key)
        results[key] = res
        print(table({key: res}), file=sys.stderr, flush=True)
    text = json.dumps(results, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
