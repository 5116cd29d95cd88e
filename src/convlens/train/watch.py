"""Watching a network learn: snapshots taken during training, kept as a timeline.

``convlens train --watch`` calls a :class:`Watch` from the loop. Every ``every`` steps (and at
each epoch end, after validation) it records:

- the first convolution's filters (the raw weights, as in the checkpoint at that step);
- a fixed probe image's activations in a few layers (at most ``SHOW_CHANNELS`` channels of
  each, area-averaged down to at most ``SHOW_SIZE`` pixels a side) and its Grad-CAM map for
  its own label (Selvaraju et al. 2017: ``ReLU(Σ_k mean_ij(∂y_c/∂A_kij) A_k)``);
- dead units per layer: channels (or dense units) whose output is never positive, at any
  position, for any image of a fixed probe batch (Lu et al. 2019, "Dying ReLU");
- the training loss and accuracy so far in the epoch, and validation at epoch ends.

On disk, beside the checkpoints::

    RUN/timeline/index.json                 settings, layers, one small record per frame
    RUN/timeline/probe.safetensors          the probe batch (uint8 pixels) and its labels
    RUN/timeline/frames/000000450.safetensors   the tensors of the frame at step 450

A frame's tensors are written first, then ``index.json`` is replaced atomically: a kill at any
moment leaves an index whose every frame is whole. The epoch-end frame is written before the
loop saves its state, so a resumed run never lacks one; on start, frames past the resumed
position (written by the killed run, about to be recomputed) are dropped, so ``--resume``
continues the timeline with no duplicate and no gap.

Snapshots run in eval mode (dropout off, batch-norm statistics untouched) and take gradients
only with respect to the probe's activations, so they leave the optimisation exactly as it
was: a watched run ends with the same weights as an unwatched one.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from safetensors.torch import save

from convlens.data.base import ImageDataset
from convlens.errors import ConvlensError
from convlens.io.atomic import ensure_writable_dir, write_bytes_atomic, write_text_atomic
from convlens.model.core import Model
from convlens.model.formats.safety import finite_or_none
from convlens.model.graph import Layer

if TYPE_CHECKING:
    from convlens.train.loop import StepInfo

TIMELINE_DIR = "timeline"
INDEX_FILE = "index.json"
PROBE_FILE = "probe.safetensors"
FRAMES_DIR = "frames"
FORMAT = "convlens-timeline"
VERSION = 1

DEFAULT_EVERY = 50  # ≈ 4 % of training time on Fashion-MNIST / tiny-vgg (benchmark in docs)
MAX_EVERY = 10**9
PROBE_IMAGES = 128  # images in the probe batch (fewer for large images, see probe_count)
PROBE_VALUES = 4_000_000  # pixel values across the probe batch
SHOW_LAYERS = 4
SHOW_CHANNELS = 8
SHOW_SIZE = 32
MAX_FILTERS = 64
MAX_FRAMES = 100_000  # a timeline index longer than this is not one convlens wrote


def timeline_dir(run: str | os.PathLike[str]) -> Path:
    return Path(run) / TIMELINE_DIR


def frame_file(folder: Path, step: int) -> Path:
    """Frame files are named by their step (never by a name read from the index)."""
    return folder / FRAMES_DIR / f"{step:09d}.safetensors"


def check_every(every: int) -> int:
    if isinstance(every, bool) or not isinstance(every, int) or not 1 <= every <= MAX_EVERY:
        raise ConvlensError(f"--every must be a whole number of steps from 1 to {MAX_EVERY}; "
                            f"got {every!r}")  # fmt: skip
    return every


# ---------------------------------------------------------------------------- which layers


@dataclass(frozen=True)
class WatchPlan:
    """The layers a timeline records, chosen once from the model's graph."""

    filters: str  # the first convolution
    show: tuple[str, ...]  # the probe image's activations shown
    dead: tuple[str, ...]  # layers whose dead units are counted
    cam: str  # Grad-CAM's layer (the deepest spatial map)

    def to_dict(self) -> dict[str, Any]:
        return {"filters": self.filters, "show": list(self.show), "dead": list(self.dead),
                "cam": self.cam}  # fmt: skip


def _reachable(model: Model, lay: Layer) -> bool:
    return lay.module is not None or (model.graph.traced is not None and lay.node is not None)


def _spread(items: list[str], k: int) -> tuple[str, ...]:
    """``k`` items evenly spaced from first to last."""
    if len(items) <= k:
        return tuple(items)
    return tuple(items[round(i * (len(items) - 1) / (k - 1))] for i in range(k))


def plan_for(model: Model) -> WatchPlan:
    """First conv, activation layers (conv layers when there are none), deepest spatial map."""
    graph = model.graph
    convs = [lay for lay in graph if lay.kind == "conv" and lay.module is not None]
    if not convs:
        raise ConvlensError(
            f"--watch needs a model with a convolution module; {model.name} has none"
        )
    units = [lay for lay in graph if lay.kind == "activation" and _reachable(model, lay)
             and len(lay.output_shape) in (1, 3)]  # fmt: skip
    if not units:
        units = [lay for lay in graph if lay.kind in ("conv", "linear") and _reachable(model, lay)]
    spatial = [lay.name for lay in units if lay.is_spatial] or [lay.name for lay in convs]
    return WatchPlan(
        filters=convs[0].name,
        show=_spread(spatial, SHOW_LAYERS),
        dead=tuple(lay.name for lay in units),
        cam=graph.last_spatial().name,
    )


# ---------------------------------------------------------------------------- one snapshot


def probe_count(shape: tuple[int, ...], available: int) -> int:
    """How many probe images: up to ``PROBE_IMAGES``, within ``PROBE_VALUES`` pixel values."""
    per_image = max(1, math.prod(shape))
    return max(1, min(available, PROBE_IMAGES, PROBE_VALUES // per_image))


def unit_maxima(model: Model, x: torch.Tensor, layers: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Each unit's largest output over the batch ``x`` (and every position): ``(units,)``."""
    reduce = {name: _unit_max for name in layers}
    return _run_reducing(model, x, reduce)


def _unit_max(t: torch.Tensor) -> torch.Tensor:
    # (B, C, H, W) or (B, C) → (C,): the maximum over everything but the unit's own axis
    return t.detach().transpose(0, 1).reshape(t.shape[1], -1).amax(dim=1).float()


def _shown(t: torch.Tensor) -> torch.Tensor:
    """The first image's first channels, area-averaged down to at most ``SHOW_SIZE`` a side."""
    a = t.detach()[:1, :SHOW_CHANNELS].float()
    h, w = a.shape[-2:]
    if max(h, w) > SHOW_SIZE:
        f = SHOW_SIZE / max(h, w)
        a = F.adaptive_avg_pool2d(a, (max(1, round(h * f)), max(1, round(w * f))))
    return a[0].contiguous()


def _run_reducing(
    model: Model, x: torch.Tensor, reduce: Mapping[str, Callable[[torch.Tensor], torch.Tensor]]
) -> dict[str, torch.Tensor]:
    """Run ``x`` through the model in eval mode, keeping only ``reduce[name](output)`` of the
    named layers (so a big probe batch never holds every layer's activations at once)."""
    from convlens.probe import capture, preserved_modes

    graph = model.graph
    out: dict[str, torch.Tensor] = {}
    with torch.inference_mode(), preserved_modes(model):
        if graph.traced is not None and all(graph[n].node for n in reduce):
            by_node = {graph[n].node: n for n in reduce}

            class Tap(torch.fx.Interpreter):
                def run_node(self, n: torch.fx.Node) -> Any:
                    value = super().run_node(n)
                    if n.name in by_node and isinstance(value, torch.Tensor):
                        name = by_node[n.name]
                        out[name] = reduce[name](value)
                    return value

            model.check_input(x)
            Tap(graph.traced).run(model.normalize(x))
        else:
            with capture(model, list(reduce)) as cap:
                model(x)
            out = {n: fn(cap.activations[n]) for n, fn in reduce.items()}
    return out


def snapshot_tensors(
    model: Model, plan: WatchPlan, probe: torch.Tensor, label: int
) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """The tensors of one frame and the dead-unit count of each layer.

    ``probe`` is the probe batch; its first image (of class ``label``) is the one shown.
    """
    from convlens.methods.cam import GradCAM

    weight = getattr(model.layer(plan.filters), "weight", None)
    if not isinstance(weight, torch.Tensor):
        raise ConvlensError(f"layer {plan.filters!r} has no weight tensor to show")
    tensors: dict[str, torch.Tensor] = {
        "filters": weight.detach()[:MAX_FILTERS].float().cpu().contiguous().clone()
    }
    probe = probe.to(weight.device)  # the model may train on an accelerator
    maxima = unit_maxima(model, probe, plan.dead)
    shown = _run_reducing(model, probe[:1], dict.fromkeys(plan.show, _shown))
    dead: dict[str, int] = {}
    for name in plan.dead:
        mask = maxima[name] <= 0
        tensors[f"dead/{name}"] = mask.to(torch.uint8).cpu()
        dead[name] = int(mask.sum())
    for name in plan.show:
        tensors[f"act/{name}"] = shown[name].half().cpu()
    cam = GradCAM(model, plan.cam)(probe[:1], label)
    assert cam.layer_values is not None
    tensors["cam"] = cam.layer_values[0, 0].float().cpu().contiguous()
    return tensors, dead


# ---------------------------------------------------------------------------- the index


@dataclass
class Frame:
    """One snapshot's scalars (its tensors live in ``frames/STEP.safetensors``)."""

    step: int  # optimisation steps done
    epoch: float  # epochs done (fractional mid-epoch)
    epoch_end: bool
    loss: float | None  # training loss, running mean over the epoch so far
    acc: float | None
    lr: float | None
    dead: dict[str, int]
    val_loss: float | None = None
    val_acc: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step, "epoch": round(self.epoch, 4), "epoch_end": self.epoch_end,
            "loss": self.loss, "acc": self.acc, "lr": self.lr, "dead": self.dead,
            "val_loss": self.val_loss, "val_acc": self.val_acc,
        }  # fmt: skip


@dataclass
class TimelineIndex:
    every: int
    steps_per_epoch: int
    plan: WatchPlan
    units: dict[str, int]  # units per dead-counted layer
    probe_label: int
    probe_class: str
    probe_images: int
    classes: list[str]
    frames: list[Frame] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "version": VERSION, "every": self.every,
            "steps_per_epoch": self.steps_per_epoch, "layers": self.plan.to_dict(),
            "units": self.units, "probe": {"label": self.probe_label, "class": self.probe_class,
                                           "images": self.probe_images},
            "classes": self.classes, "frames": [f.to_dict() for f in self.frames],
        }  # fmt: skip

    def write(self, folder: Path) -> None:
        write_text_atomic(folder / INDEX_FILE, json.dumps(self.to_dict(), indent=1) + "\n")


# ---------------------------------------------------------------------------- the watcher


class Watch:
    """The training loop's snapshot hook (see the module docstring).

    >>> w = Watch(every=50)
    >>> w.every
    50
    """

    def __init__(self, every: int = DEFAULT_EVERY, probe_data: ImageDataset | None = None):
        self.every = check_every(every)
        self.probe_data = probe_data  # default: the validation data, else the training data
        self.folder = Path()
        self.index: TimelineIndex | None = None
        self.probe = torch.empty(0)
        self.model: Model | None = None
        self.seconds = 0.0  # time spent taking snapshots (reported by the benchmark)

    # -- called by the loop

    def start(
        self, model: Model, run: Path, data: ImageDataset, done: int, steps_per_epoch: int
    ) -> None:
        """Open (or create) ``run``'s timeline at step ``done``: drop frames the resumed run
        will recompute, and take the first snapshot if there is none left."""
        import time

        t0 = time.perf_counter()
        self.model = model
        self.folder = ensure_writable_dir(timeline_dir(run))
        ensure_writable_dir(self.folder / FRAMES_DIR)
        plan = plan_for(model)
        old = read_index(run) if done > 0 and (self.folder / INDEX_FILE).is_file() else None
        if old is not None and old.every != self.every:
            raise ConvlensError(
                f"the timeline in {str(run)!r} takes a snapshot every {old.every} steps; resume "
                f"with --every {old.every} (or without --every)"
            )
        if old is not None and old.plan != plan:
            raise ConvlensError(f"the timeline in {str(run)!r} was recorded for other layers")
        if old is not None and (self.folder / PROBE_FILE).is_file():
            self.probe, labels = read_probe(self.folder)
        else:
            old = None
            self.probe, labels = self._new_probe(self.probe_data or data)
        label = int(labels[0])
        units = {n: int(model.graph[n].output_shape[0]) for n in plan.dead}
        self.index = TimelineIndex(
            every=self.every, steps_per_epoch=steps_per_epoch, plan=plan, units=units,
            probe_label=label, probe_class=model.classes[label], probe_images=len(self.probe),
            classes=list(model.classes),
            frames=[f for f in old.frames if f.step <= done] if old else [],
        )  # fmt: skip
        self._remove_stray_frames()
        self.seconds += time.perf_counter() - t0
        if not self.index.frames:
            self._snapshot(Frame(done, done / steps_per_epoch, False, None, None, None, {}))
        else:
            self.index.write(self.folder)

    def after_step(self, model: Model, info: StepInfo) -> None:
        """A snapshot every ``every`` steps (the epoch's last step waits for validation)."""
        assert self.index is not None
        done = (info.epoch - 1) * info.steps + info.step
        if done % self.every or info.step == info.steps:
            return
        self._snapshot(Frame(done, done / info.steps, False, round(info.loss, 5),
                             round(info.accuracy, 5), info.lr, {}))  # fmt: skip

    def after_epoch(self, model: Model, record: dict[str, Any]) -> None:
        """The epoch-end snapshot, with the epoch's record (validation included)."""
        assert self.index is not None
        steps = self.index.steps_per_epoch
        done = int(record["epoch"]) * steps
        self._snapshot(Frame(done, float(record["epoch"]), True, record.get("train_loss"),
                             record.get("train_acc"), record.get("lr"), {},
                             record.get("val_loss"), record.get("val_acc")))  # fmt: skip

    # -- internals

    def _new_probe(self, data: ImageDataset) -> tuple[torch.Tensor, torch.Tensor]:
        n = probe_count(tuple(data.shape), len(data))
        x, y = data.get(list(range(n)))
        pixels = (x.clamp(0, 1) * 255).round().to(torch.uint8).contiguous()
        labels = y.to(torch.int64).contiguous()
        write_bytes_atomic(self.folder / PROBE_FILE, save({"images": pixels, "labels": labels}))
        return pixels.float() / 255, labels

    def _remove_stray_frames(self) -> None:
        """Frame files not in the index: from a killed run past the resumed position."""
        assert self.index is not None
        keep = {frame_file(self.folder, f.step).name for f in self.index.frames}
        for p in (self.folder / FRAMES_DIR).iterdir():
            if p.name not in keep:
                p.unlink(missing_ok=True)

    def _snapshot(self, frame: Frame) -> None:
        import time

        assert self.index is not None and self.model is not None
        t0 = time.perf_counter()
        tensors, frame.dead = snapshot_tensors(
            self.model, self.index.plan, self.probe, self.index.probe_label
        )
        write_bytes_atomic(frame_file(self.folder, frame.step), save(tensors))
        frames = self.index.frames
        if frames and frames[-1].step == frame.step:
            frames[-1] = frame  # cannot happen in a normal run; never keep two of a step
        else:
            frames.append(frame)
        self.index.write(self.folder)
        self.seconds += time.perf_counter() - t0


# ---------------------------------------------------------------------------- reading


def _count(v: Any, what: str, hi: int = 10**12) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= hi:
        raise ConvlensError(f"{what} is {str(v)[:40]!r}; accepted: a whole number 0..{hi}")
    return v


def _names(v: Any, what: str) -> list[str]:
    if not isinstance(v, list) or not all(isinstance(s, str) and len(s) < 1000 for s in v):
        raise ConvlensError(f"{what} is not a list of layer names")
    return list(v)


def read_index(run: str | os.PathLike[str]) -> TimelineIndex:
    """``RUN/timeline/index.json``, bounded and checked field by field (it may come from
    anyone: a downloaded run folder, a served one)."""
    from convlens.model.formats.safety import read_json

    folder = timeline_dir(run)
    path = folder / INDEX_FILE
    if not path.is_file():
        raise ConvlensError(
            f"{str(run)!r} has no training timeline ({TIMELINE_DIR}/{INDEX_FILE}); record one "
            "with `convlens train ... --watch`"
        )
    doc = read_json(path, "timeline index")
    where = repr(str(path))
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ConvlensError(f"{where} is not a convlens timeline (format {FORMAT!r})")
    if _count(doc.get("version"), f"{where}: version") > VERSION:
        raise ConvlensError(f"{where} was written by a newer convlens")
    layers, probe = doc.get("layers"), doc.get("probe")
    if not isinstance(layers, dict) or not isinstance(probe, dict):
        raise ConvlensError(f"{where} lacks its layers or probe object")
    if not isinstance(layers.get("filters"), str) or not isinstance(layers.get("cam"), str):
        raise ConvlensError(f"{where}: layers.filters and layers.cam must be layer names")
    show = tuple(_names(layers.get("show"), f"{where}: layers.show"))
    dead = tuple(_names(layers.get("dead"), f"{where}: layers.dead"))
    plan = WatchPlan(layers["filters"], show, dead, layers["cam"])
    units = doc.get("units")
    if not isinstance(units, dict) or set(units) != set(plan.dead):
        raise ConvlensError(f"{where}: units must give a count for each of layers.dead")
    classes = _names(doc.get("classes"), f"{where}: classes")
    label = _count(probe.get("label"), f"{where}: probe.label", max(len(classes) - 1, 0))
    frames_doc = doc.get("frames")
    if not isinstance(frames_doc, list) or len(frames_doc) > MAX_FRAMES:
        raise ConvlensError(f"{where}: frames must be a list of at most {MAX_FRAMES:,}")
    index = TimelineIndex(
        every=max(1, _count(doc.get("every"), f"{where}: every", MAX_EVERY)),
        steps_per_epoch=max(1, _count(doc.get("steps_per_epoch"), f"{where}: steps_per_epoch")),
        plan=plan, units={n: _count(c, f"{where}: units[{n!r}]") for n, c in units.items()},
        probe_label=label, probe_class=classes[label] if classes else str(label),
        probe_images=_count(probe.get("images"), f"{where}: probe.images"), classes=classes,
    )  # fmt: skip
    last = -1
    for i, f in enumerate(frames_doc):
        at = f"{where}: frame {i}"
        if not isinstance(f, dict) or not isinstance(f.get("dead"), dict):
            raise ConvlensError(f"{at} is not an object with a dead-unit table")
        step = _count(f.get("step"), f"{at}: step")
        if step <= last:
            raise ConvlensError(f"{at}: step {step} does not follow step {last}")
        last = step
        index.frames.append(Frame(
            step=step, epoch=finite_or_none(f.get("epoch"), f"{at}: epoch") or 0.0,
            epoch_end=f.get("epoch_end") is True,
            loss=finite_or_none(f.get("loss"), f"{at}: loss"),
            acc=finite_or_none(f.get("acc"), f"{at}: acc"),
            lr=finite_or_none(f.get("lr"), f"{at}: lr"),
            dead={n: _count(f["dead"].get(n), f"{at}: dead[{n!r}]", index.units[n])
                  for n in plan.dead},
            val_loss=finite_or_none(f.get("val_loss"), f"{at}: val_loss"),
            val_acc=finite_or_none(f.get("val_acc"), f"{at}: val_acc"),
        ))  # fmt: skip
    return index


MAX_FILE_BYTES = 64 << 20  # a probe batch or a frame is a few MB at most


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file, its header checked against ``MAX_FILE_BYTES`` before loading."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from convlens.model.checkpoint import check_safetensors
    from convlens.model.formats.safety import Budget

    check_safetensors(path, Budget(MAX_FILE_BYTES))
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise ConvlensError(f"{str(path)!r} is corrupt or not safetensors: {e}") from None


def read_probe(folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The probe batch as floats in [0, 1] and its labels."""
    t = _read_tensors(folder / PROBE_FILE)
    images, labels = t.get("images"), t.get("labels")
    if (images is None or labels is None or images.dtype != torch.uint8 or images.dim() != 4
            or images.shape[1] not in (1, 3) or labels.shape != (images.shape[0],)
            or images.shape[0] == 0):  # fmt: skip
        raise ConvlensError(f"{str(folder / PROBE_FILE)!r} is not a convlens probe batch")
    return images.float() / 255, labels.to(torch.int64)


def _fits(t: torch.Tensor | None, dims: int, limits: tuple[int, ...]) -> bool:
    return (
        t is not None
        and t.dim() == dims
        and all(0 < n <= hi for n, hi in zip(t.shape, limits, strict=True))
    )


def read_frame(
    run: str | os.PathLike[str], index: TimelineIndex, i: int
) -> dict[str, torch.Tensor]:
    """The tensors of frame ``i`` of ``index``, checked against the index's layers and the
    sizes convlens writes (so a hostile file cannot ask a renderer for a huge picture)."""
    n = len(index.frames)
    if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < n:
        raise ConvlensError(f"frame {i!r} is out of range: this timeline has {n} frames"
                            + (f" (0..{n - 1})" if n else ""))  # fmt: skip
    path = frame_file(timeline_dir(run), index.frames[i].step)
    t = _read_tensors(path)
    ok = (
        _fits(t.get("filters"), 4, (MAX_FILTERS, 4096, 64, 64))
        and _fits(t.get("cam"), 2, (4096, 4096))
        and all(_fits(t.get(f"act/{n}"), 3, (SHOW_CHANNELS, SHOW_SIZE, SHOW_SIZE))
                for n in index.plan.show)
        and all(t.get(f"dead/{n}") is not None and t[f"dead/{n}"].shape == (index.units[n],)
                for n in index.plan.dead)
    )  # fmt: skip
    if not ok:
        raise ConvlensError(f"{str(path)!r} does not hold the tensors its timeline lists")
    return t


def watch_for_run(
    run: str | os.PathLike[str], watch: bool, every: int | None, resume: bool
) -> Watch | None:
    """The :class:`Watch` that ``convlens train --watch [--every N] [--resume]`` asks for.

    A resumed run that has a timeline continues it (at its own ``every`` unless one is given),
    with or without ``--watch``.
    """
    existing = resume and (timeline_dir(run) / INDEX_FILE).is_file()
    if every is not None:
        check_every(every)
        if not (watch or existing):
            raise ConvlensError("--every sets how often --watch takes snapshots; add --watch")
    if not (watch or existing):
        return None
    if every is None:
        every = read_index(run).every if existing else DEFAULT_EVERY
    return Watch(every)
