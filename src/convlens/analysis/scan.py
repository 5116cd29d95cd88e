"""Stream a data set through a model and keep, per channel, the top-k activations and statistics.

One forward pass per batch with the chosen layers captured; each layer's output goes through
:func:`~convlens.analysis.state.map_batch` and is merged into the running state. Memory is
bounded by one batch plus ``C × k`` hits per layer, whatever the data set's size. With an output
folder the state is saved atomically every ``save_every`` seconds and at the end, so an
interrupted scan resumes from its last save (``resume=True``) and a finished one is reused.

>>> from convlens.model import build
>>> from convlens.data import TensorImages
>>> m = build("tiny-vgg:in_channels=1,input_size=28", seed=0)
>>> ds = TensorImages(torch.rand(8, 1, 28, 28), torch.zeros(8), ["a"])
>>> res = scan(m, ds, ["relu_2_2"], k=4, progress=False)
>>> res.state["relu_2_2"].values.shape
torch.Size([10, 4])
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from convlens.analysis.state import LayerState, ScanState, _as_grid, map_sorted, merge_many
from convlens.analysis.store import ScanMeta, has_scan, load_scan, save_scan
from convlens.data import ImageDataset
from convlens.errors import ConvlensError
from convlens.io.figure import RichDisplay
from convlens.model import Model
from convlens.probe import preserved_modes

ProgressFn = Callable[[int, int], None]  # (images done, total)
# An engine running the scan's loop: (model, dataset, layers, meta, state, out, save_every,
# progress) -> the final state, saving resumable progress in ``out`` as :func:`_run` does.
Runner = Callable[
    [Model, ImageDataset, list[str], ScanMeta, ScanState, str | os.PathLike[str] | None,
     float, ProgressFn | None],
    ScanState,
]  # fmt: skip
# Each unit keeps k hits (value, image, row, col): 10,000 per unit is far past any figure and
# still small for a layer of thousands of channels; 10⁹ would ask for terabytes.
MAX_TOP_K = 10_000
MAX_BATCH = 4096  # images per forward pass


@dataclass(frozen=True)
class Hit:
    """One top activation: ``value`` at ``(row, col)`` of the layer's grid for image ``image``."""

    value: float
    image: int
    row: int
    col: int


@dataclass
class ScanResult(RichDisplay):
    """A scan's metadata and per-layer state, with per-channel statistics derived from it.
    ``source`` (model and data set, set by :func:`scan`) lets a notebook show the patches."""

    meta: ScanMeta
    state: ScanState
    source: tuple[Model, ImageDataset] | None = field(default=None, repr=False, compare=False)

    def _display_figure(self) -> tuple[Any, str]:
        from convlens.analysis.patches import scan_figure  # patches imports this module

        return scan_figure(self)

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> ScanResult:
        """A scan folder written by :func:`scan` (or ``convlens scan``), without recomputing."""
        return cls(*load_scan(folder))

    @property
    def layers(self) -> list[str]:
        return list(self.state)

    def layer(self, name: str) -> LayerState:
        if name not in self.state:
            raise ConvlensError(f"the scan has no layer {name!r}; it has: {', '.join(self.state)}")
        return self.state[name]

    def hits(self, layer: str, unit: int) -> list[Hit]:
        """The unit's top activations, best first (empty slots left out)."""
        lay = self.layer(layer)
        if not 0 <= unit < lay.channels:
            raise ConvlensError(f"layer {layer!r} has units 0..{lay.channels - 1}; got unit {unit}")
        W = lay.grid[1]
        out = []
        for v, i, p in zip(
            lay.values[unit].tolist(),
            lay.images[unit].tolist(),
            lay.positions[unit].tolist(),
            strict=True,
        ):
            if i >= 0:
                out.append(Hit(float(v), int(i), int(p) // W, int(p) % W))
        return out

    def stats(self, layer: str) -> dict[str, torch.Tensor]:
        """Per-channel ``mean``, ``std``, ``max``, ``frac_positive`` (positions above zero) and
        ``frac_silent`` (images where the channel never rises above zero)."""
        lay = self.layer(layer)
        n = max(lay.n_positions, 1)
        mean = lay.total / n
        var = (lay.total_sq / n - mean.square()).clamp_min(0.0)
        return {
            "mean": mean,
            "std": var.sqrt(),
            "max": lay.maximum.double(),
            "frac_positive": lay.positive.double() / n,
            "frac_silent": 1.0 - lay.fired.double() / max(lay.n_images, 1),
        }


# --------------------------------------------------------------------------- checks


def check_layers(model: Model, layers: Sequence[str]) -> list[str]:
    """The layers to scan, checked: known, hookable, a ``(C, H, W)`` or ``(C,)`` output."""
    if not layers:
        raise ConvlensError("no layers to scan; name at least one (e.g. --layers conv_2_2)")
    out = []
    for name in layers:
        lay = model.graph[name]  # unknown names raise with suggestions
        if lay.module is None:
            raise ConvlensError(
                f"layer {name!r} is a functional call ({lay.op}) and cannot be captured; "
                "choose a module layer before or after it"
            )
        if len(lay.output_shape) not in (1, 3):
            raise ConvlensError(
                f"layer {name!r} has output shape {lay.output_shape}; accepted: (C, H, W) "
                "feature maps or (C,) vectors"
            )
        if name not in out:
            out.append(name)
    return out


def check_dataset(model: Model, dataset: ImageDataset) -> None:
    if len(dataset) == 0:
        raise ConvlensError(f"data set {dataset.name!r} is empty: there is nothing to scan")
    if tuple(dataset.shape) != tuple(model.spec.shape):
        raise ConvlensError(
            f"data set {dataset.name!r} has images of shape {tuple(dataset.shape)} but model "
            f"{model.name!r} takes {tuple(model.spec.shape)}; use a data set of the model's "
            "input size (an image folder is fitted to it)"
        )


def model_fingerprint(model: Model) -> str:
    """SHA-256 of the weights, so a scan is never resumed or reused with other weights."""
    h = hashlib.sha256()
    for key, t in sorted(model.state_dict().items()):
        h.update(key.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _describe(model: Model, dataset: ImageDataset, layers: list[str], k: int, bs: int) -> ScanMeta:
    return ScanMeta(
        model={"name": model.name, "sha256": model_fingerprint(model), "arch": model.arch},
        dataset={
            "name": dataset.name,
            "split": getattr(dataset, "split", None),
            "size": len(dataset),
            "shape": list(dataset.shape),
            "classes": list(dataset.classes),
        },
        layers={
            name: {"channels": model.graph[name].channels, "kind": model.graph[name].kind}
            for name in layers
        },
        k=k,
        batch_size=bs,
    )


def _same_scan(old: ScanMeta, new: ScanMeta) -> str | None:
    """Why a saved scan cannot be resumed/reused for this request (``None`` if it can)."""
    for what, a, b in (
        ("model weights", old.model.get("sha256"), new.model["sha256"]),
        ("data set", old.dataset.get("name"), new.dataset["name"]),
        ("split", old.dataset.get("split"), new.dataset["split"]),
        ("data-set size", old.dataset.get("size"), new.dataset["size"]),
        ("layers", list(old.layers), list(new.layers)),
        ("k", old.k, new.k),
    ):
        if a != b:
            return f"its {what} differ ({a!r} there, {b!r} now)"
    return None


# --------------------------------------------------------------------------- reading


def _item_name(dataset: ImageDataset, index: int) -> str:
    path = getattr(dataset, "path", None)
    return str(path(index)) if callable(path) else f"#{index}"


def read_batches(
    dataset: ImageDataset, order: Sequence[int], batch_size: int, skipped: list[dict[str, Any]]
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]]:
    """``(images, labels, indices, consumed)`` in order, where ``consumed`` counts the entries
    of ``order`` read so far; an image that fails to load is skipped and recorded in
    ``skipped`` (a failing batch is re-read one image at a time, so a bad file costs only
    itself)."""
    for start in range(0, len(order), batch_size):
        chunk = list(order[start : start + batch_size])
        consumed = start + len(chunk)
        try:
            images, labels = dataset.get(chunk)
            yield images, labels, torch.tensor(chunk, dtype=torch.long), consumed
            continue
        except (ConvlensError, OSError):
            pass  # find the bad image(s) one at a time
        good: list[int] = []
        parts: list[tuple[torch.Tensor, torch.Tensor]] = []
        for i in chunk:
            try:
                parts.append(dataset.get([i]))
                good.append(i)
            except (ConvlensError, OSError) as e:
                skipped.append({"index": i, "name": _item_name(dataset, i), "reason": str(e)})
        if parts:
            images, labels = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        else:
            images, labels = torch.empty(0, *dataset.shape), torch.empty(0, dtype=torch.long)
        yield images, labels, torch.tensor(good, dtype=torch.long), consumed


class Folder:
    """The running state of a scan plus batches mapped but not yet merged: merging every
    ``every`` batches in one sort costs fewer operations than merging each batch."""

    def __init__(self, state: ScanState | None = None, every: int = 8) -> None:
        self.state: ScanState = dict(state or {})
        self.pending: dict[str, list[LayerState]] = {}
        self.every = every

    def add(self, name: str, part: LayerState) -> None:
        queue = self.pending.setdefault(name, [])
        queue.append(part)
        # The first batch is folded at once: its k-th values give later batches their floor.
        if len(queue) >= self.every or name not in self.state:
            self.fold()

    def floor(self, name: str, indices: torch.Tensor) -> torch.Tensor | None:
        """Per channel, the value a new hit of images ``indices`` must exceed to enter the top
        k: the folded state's k-th value, when every one of its hits comes from an earlier
        image (a tie then goes to the state); ``None`` when that does not hold."""
        lay = self.state.get(name)
        if lay is None or len(indices) == 0:
            return None
        if int(lay.images.max()) >= int(indices.min()):
            return None
        return lay.values[:, -1]

    def fold(self) -> ScanState:
        for name, queue in self.pending.items():
            if queue:
                parts = [self.state[name], *queue] if name in self.state else queue
                self.state[name] = merge_many(parts)
        self.pending = {}
        return self.state


# A layer output smaller than this (floats) is copied aside and mapped together with the next
# batches' until this much has gathered: every map call has a fixed cost of some 40 small
# tensor operations, which on a small layer (the demo model's 8×8 maps, the logits) costs more
# than the work itself.
GATHER = 1 << 20


# Modules whose output is never below zero (NaN aside): their count of positive values can
# count nonzero bytes instead (see state._count_nonzero).
NONNEG_MODULES: tuple[type[torch.nn.Module], ...] = (torch.nn.ReLU, torch.nn.ReLU6)


class _Mapper:
    """Forward hooks that map each scanned layer's output into a :class:`Folder` the moment
    the layer produces it, from the tensor itself (a later in-place op cannot change what was
    already mapped, and the map reads it while it is still in cache). Small outputs are copied
    and mapped a few batches at a time (:data:`GATHER`); :meth:`flush` maps what is left."""

    def __init__(self, model: Model, names: list[str], k: int, folder: Folder) -> None:
        self.model, self.names, self.k, self.folder = model, names, k, folder
        self.indices = torch.empty(0, dtype=torch.long)
        self.calls: dict[str, int] = {}
        # one buffer for every layer and batch (the layers are mapped one after the other)
        self.scratch = torch.empty(0)
        # small outputs copied aside: per layer a buffer, its rows filled, and their indices
        self.gathered: dict[str, tuple[torch.Tensor, int, list[torch.Tensor]]] = {}
        self.nonneg: dict[str, bool] = {}  # layers known to output no value below zero

    def hook(self, name: str, call: int, nonneg: bool) -> Callable[..., None]:
        def run(module: torch.nn.Module, args: Any, output: Any) -> None:
            self.calls[name] = self.calls.get(name, 0) + 1
            if self.calls[name] != call or not isinstance(output, torch.Tensor):
                return  # a shared module's other calls (torchvision's one ReLU per block)
            # The state lives on the CPU (it is stored and merged there); on a GPU the forward
            # pass ran on the device and only the layer's output crosses over.
            x = _as_grid(output.detach()).float().cpu()
            self.nonneg[name] = nonneg
            if x.numel() >= GATHER:
                self.map(name, x, self.indices)
                return
            if self.gather(name, x) >= GATHER:
                self.flush_layer(name)

        return run

    def map(self, name: str, x: torch.Tensor, indices: torch.Tensor) -> None:
        floor = self.folder.floor(name, indices)
        if self.scratch.numel() < x.numel():
            self.scratch = torch.empty(x.numel())
        nonneg = self.nonneg.get(name, False)
        self.folder.add(name, map_sorted(x, indices, self.k, floor, self.scratch, nonneg))

    def gather(self, name: str, x: torch.Tensor) -> int:
        """Copy ``x`` (a later in-place op may change it) after the layer's gathered rows, in
        a buffer reused from one flush to the next (no concatenation at the flush); returns
        how many values have gathered."""
        buf, filled, indices = self.gathered.get(name, (torch.empty(0), 0, []))
        B = x.shape[0]
        if buf.shape[1:] != x.shape[1:] or buf.shape[0] < filled + B:
            rows = max(filled + B, GATHER // max(x[0].numel(), 1) + B)
            grown = torch.empty(rows, *x.shape[1:], dtype=x.dtype)
            if filled:
                grown[:filled] = buf[:filled]
            buf = grown
        buf[filled : filled + B] = x
        indices.append(self.indices)
        self.gathered[name] = (buf, filled + B, indices)
        return (filled + B) * x[0].numel()

    def flush_layer(self, name: str) -> None:
        buf, filled, parts = self.gathered.get(name, (torch.empty(0), 0, []))
        if filled == 0:
            return
        self.gathered[name] = (buf, 0, [])  # the buffer is reused; the state keeps no view
        x = buf[:filled]
        indices = torch.cat(parts)
        if bool((indices.diff() < 0).any()):  # batches out of order (a shard's own order)
            indices, order = indices.sort()
            x = x[order]
        self.map(name, x, indices)

    def flush(self) -> None:
        """Map every gathered output: call before reading or saving the folder's state."""
        with torch.inference_mode():  # as in the hooks: the scratch buffers are inference tensors
            for name in list(self.gathered):
                self.flush_layer(name)

    @contextlib.contextmanager
    def installed(self) -> Iterator[_Mapper]:
        handles = [self.model.net.register_forward_pre_hook(lambda m, a: self.calls.clear())]
        try:
            for name in self.names:
                lay = self.model.graph[name]
                module = self.model.net.get_submodule(str(lay.module))
                nonneg = isinstance(module, NONNEG_MODULES)
                handles.append(module.register_forward_hook(self.hook(name, lay.call, nonneg)))
            with preserved_modes(self.model):
                yield self
        finally:
            for h in handles:
                h.remove()

    def __call__(self, images: torch.Tensor, indices: torch.Tensor) -> None:
        """One forward pass; each hooked layer's output is mapped as it is produced."""
        if len(indices) == 0:
            return
        indices = indices.to(torch.long)
        if bool((indices.diff() < 0).any()):  # ties resolve by index order: sort the batch
            indices, order = indices.sort()
            images = images[order]
        self.indices = indices
        with torch.inference_mode():
            self.model(images)


def scan_indices(
    model: Model,
    dataset: ImageDataset,
    layers: Sequence[str],
    indices: Sequence[int],
    *,
    k: int = 16,
    batch_size: int = 128,
) -> tuple[ScanState, list[dict[str, Any]]]:
    """The *map* step over one shard of the data set: its state and its skipped images.

    States of disjoint shards combine with :func:`~convlens.analysis.state.merge_states` in
    any grouping and order, giving what one scan of their union gives.
    """
    names = check_layers(model, layers)
    skipped: list[dict[str, Any]] = []
    folder = Folder()
    with _Mapper(model, names, k, folder).installed() as mapper:
        for images, _, idx, _ in read_batches(dataset, indices, batch_size, skipped):
            mapper(images, idx)
        mapper.flush()
    return folder.fold(), skipped


# --------------------------------------------------------------------------- the scan


def _tqdm_progress(total: int, initial: int) -> tuple[ProgressFn, Callable[[], None]]:
    from tqdm.auto import tqdm

    bar = tqdm(total=total, initial=initial, unit="img", unit_scale=True, desc="scan")

    def update(done: int, _total: int) -> None:
        bar.update(done - bar.n)

    return update, bar.close


def scan(
    model: Model,
    dataset: ImageDataset,
    layers: Sequence[str],
    *,
    k: int = 16,
    batch_size: int = 128,
    out: str | os.PathLike[str] | None = None,
    resume: bool = False,
    save_every: float = 30.0,
    progress: bool | ProgressFn = True,
    source: dict[str, Any] | None = None,
    runner: Runner | None = None,
) -> ScanResult:
    """Scan ``dataset`` (in index order) through ``model``, keeping every channel's top ``k``
    activations of ``layers`` and its statistics.

    With ``out``, a finished scan of the same model, data and settings already there is
    returned without recomputing; an unfinished one continues only with ``resume=True``.
    The state is saved every ``save_every`` seconds (0: after every batch). ``source``
    (``{"name": ..., "split": ..., "data_dir": ...}``) records how to reopen the data set, so a
    web app or notebook can cut patches later; by default the data set's own name is kept.
    ``runner`` replaces the in-process loop (:func:`_run`'s signature) with another engine
    (:mod:`convlens.analysis.ray_engine`) sharing this function's checks, store and resume.
    """
    if not 1 <= k <= MAX_TOP_K:
        raise ConvlensError(f"--top-k must be at least 1 and at most {MAX_TOP_K}, got {k}")
    if not 1 <= batch_size <= MAX_BATCH:
        raise ConvlensError(
            f"batch size must be at least 1 and at most {MAX_BATCH}, got {batch_size}"
        )
    names = check_layers(model, layers)
    check_dataset(model, dataset)
    meta = _describe(model, dataset, names, k, batch_size)
    meta.dataset.update(source or {})
    state: ScanState = {}
    if out is not None and has_scan(out):
        old, old_state = load_scan(out)
        why = _same_scan(old, meta)
        if why is not None:
            raise ConvlensError(
                f"{os.fspath(out)!r} holds a different scan ({why}); choose another folder or "
                "delete it"
            )
        if old.complete:
            return ScanResult(old, old_state, (model, dataset))
        if not resume:
            raise ConvlensError(
                f"{os.fspath(out)!r} holds an unfinished scan ({old.images_done} of "
                f"{len(dataset)} images); pass --resume (resume=True) to continue it, or "
                "choose another folder"
            )
        meta, state = old, old_state
    total = len(dataset)
    close: Callable[[], None] = lambda: None  # noqa: E731
    report: ProgressFn | None = None
    if progress is True:
        report, close = _tqdm_progress(total, meta.images_done)
    elif callable(progress):
        report = progress
    try:
        state = (runner or _run)(model, dataset, names, meta, state, out, save_every, report)
    finally:
        close()
    meta.complete = True
    if out is not None:
        save_scan(out, meta, state)
    if meta.skipped:
        warnings.warn(skipped_summary(meta.skipped), stacklevel=2)
    return ScanResult(meta, state, (model, dataset))


def skipped_summary(skipped: list[dict[str, Any]], show: int = 5) -> str:
    names = ", ".join(s["name"] for s in skipped[:show])
    more = f" and {len(skipped) - show} more" if len(skipped) > show else ""
    return f"skipped {len(skipped)} unreadable image(s): {names}{more}"


def _run(
    model: Model,
    dataset: ImageDataset,
    names: list[str],
    meta: ScanMeta,
    state: ScanState,
    out: str | os.PathLike[str] | None,
    save_every: float,
    report: ProgressFn | None,
) -> ScanState:
    total = len(dataset)
    # The scan always covers a prefix [0, images_done) of the data set, saved at batch ends.
    first = meta.images_done
    meta.skipped = [s for s in meta.skipped if s["index"] < first]  # re-read after a crash
    last_save = time.monotonic()
    folder = Folder(state)
    with _Mapper(model, names, meta.k, folder).installed() as mapper:
        for images, _, idx, consumed in read_batches(
            dataset, range(first, total), meta.batch_size, meta.skipped
        ):
            mapper(images, idx)
            meta.images_done = first + consumed
            if out is not None and time.monotonic() - last_save >= save_every:
                mapper.flush()  # the saved state must cover exactly images_done
                if folder.fold():
                    save_scan(out, meta, folder.state)
                last_save = time.monotonic()
            if report is not None:
                report(meta.images_done, total)
        mapper.flush()
    state = folder.fold()
    if not state:
        raise ConvlensError(
            f"none of the {total} images of {dataset.name!r} could be read: "
            + skipped_summary(meta.skipped)
        )
    return state
