"""Scans and code maps on Ray Data: the per-batch map on a pool of workers, the merge on the
driver, with the same results as the in-process engine.

The data set is cut into *shards* of whole batches, aligned on the local scan's batch
boundaries, so each batch's float32 partial sums are the very ones the local scan computes and
the merged statistics differ from it only by float64 rounding, while the top-k hits (a total
order, :mod:`convlens.analysis.state`) are identical. Only shard numbers travel to the workers;
each worker opens the model and the data set itself once (``make_model``, ``open_data``), reads
its shards' images and sends back one small state per shard (``C × k`` hits and ``C`` sums per
layer, as safetensors bytes: nothing is unpickled by convlens).

The merge is a tree: batches are merged into shard states on the workers (the leaves), shard
states into runs on the driver, runs into the running state. The driver keeps the scan a
*prefix* of the data set as the local engine does: shards that finish early wait (a few KiB
each) until those before them are in, and the state saved every ``save_every`` seconds is a
valid local-engine state, so a killed driver resumes with either engine.

Faults: Ray restarts a worker that dies (``max_restarts``) and reruns its shard
(``max_task_retries``); a shard's result does not depend on which worker ran it or how often.
A worker that cannot open the model or the data fails at start-up, which Ray does not retry,
and the scan ends with that worker's one-line error.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import math
import os
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from convlens.analysis.state import LayerState, ScanState, merge_many
from convlens.analysis.store import ScanMeta, save_scan
from convlens.data import ImageDataset
from convlens.device import autocast, parse_precision, resolve_device
from convlens.errors import ConvlensError
from convlens.model import Model

ModelFactory = Callable[[], Model]  # runs on each worker; must be picklable
DataFactory = Callable[[Model], ImageDataset]  # opens the data set on a worker, for its model
ProgressFn = Callable[[int, int], None]
RETRIES = 3  # restarts of a dead worker and reruns of its shard before the scan gives up
CONNECT_TIMEOUT_S = 5.0
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_H2_EMPTY_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # length 0, type 4, stream 0


# --------------------------------------------------------------------------- Ray itself


def _ray() -> Any:
    try:
        import ray
        import ray.data  # Ray Data is a separate part of the ray package
    except ImportError:
        raise ConvlensError(
            "--engine ray needs Ray Data: pip install 'convlens[scale]' (ray[data]>=2.9)"
        ) from None
    return ray


def check_address(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Refuse an address nothing answers at within ``timeout`` seconds (Ray itself would retry
    for minutes). ``auto`` (the cluster this machine belongs to) is left to Ray."""
    if address == "auto":
        return
    host_port = address.removeprefix("ray://")
    host, sep, port = host_port.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConvlensError(
            f"--address {address!r} is not HOST:PORT (e.g. 10.0.0.1:6379, ray://head:10001 or auto)"
        )
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout) as sock:
            # Ray's GCS and Ray Client speak gRPC: an HTTP/2 server answers the client preface
            # with a SETTINGS frame at once. A proxy or another service accepting the TCP
            # connection does not, where Ray itself would wait for minutes.
            sock.sendall(_H2_PREFACE + _H2_EMPTY_SETTINGS)
            frame = sock.recv(9)
    except OSError as e:
        raise ConvlensError(
            f"cannot reach a Ray cluster at {address!r} within {timeout:g} s "
            f"({e.strerror or type(e).__name__}); start one with `ray start --head` or check "
            "the address"
        ) from None
    why = "it does not answer as gRPC" if len(frame) < 9 or frame[3] != 0x4 else None
    if why is None and not address.startswith("ray://"):
        why = _gcs_problem(host_port, timeout)
    if why is not None:
        raise ConvlensError(
            f"no Ray cluster answers at {address!r}: {why}; check the address and port (the "
            "head's GCS port, 6379 by default, or ray://HOST:10001 for Ray Client)"
        )


def _gcs_problem(address: str, timeout: float) -> str | None:
    """Ask the GCS at ``address`` for its session name, in a thread bounded by ``timeout``
    (Ray's own connection retries run for minutes); ``None`` when it answers."""
    try:  # Ray's own client; internal, so guarded
        gcs_client = importlib.import_module("ray._raylet").GcsClient
    except (ImportError, AttributeError):
        return None
    outcome: list[str | None] = []

    def ask() -> None:
        try:
            gcs_client(address=address).internal_kv_get(b"session_name", b"session", timeout)
            outcome.append(None)
        except Exception as e:
            outcome.append(f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")

    thread = threading.Thread(target=ask, daemon=True)
    thread.start()
    thread.join(timeout + 1.0)
    return outcome[0] if outcome else f"no answer from its GCS within {timeout:g} s"


@contextlib.contextmanager
def ray_session(address: str | None = None, workers: int = 2) -> Iterator[Any]:
    """Ray, connected: to ``address``, to the session already open in this process, or to a
    local Ray started here for the call (``workers`` + 1 CPUs, no dashboard) and stopped after.
    """
    ray = _ray()
    started = False
    if address:
        check_address(address)
    if not ray.is_initialized():
        quiet = {"log_to_driver": False, "configure_logging": False}
        if address:
            ray.init(address=address, **quiet)
        else:
            # Local workers import the very convlens this driver runs (a source checkout, say).
            here = str(Path(__file__).resolve().parents[2])
            path = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)
            ray.init(num_cpus=workers + 1, include_dashboard=False,
                     runtime_env={"env_vars": {"PYTHONPATH": path}}, **quiet)  # fmt: skip
        started = True
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    # Ray Data logs a worker's failure with its full traceback; the scan raises it as one line.
    logging.getLogger("ray.data").setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            # Ray Data's own deprecation notices (its config's renamed fields) are not the
            # user's to act on.
            warnings.simplefilter("ignore", DeprecationWarning)
            yield ray
    finally:
        if started:
            ray.shutdown()


def _worker_error(e: BaseException) -> ConvlensError:
    """One line for whatever a worker raised (Ray wraps it with the remote traceback)."""
    seen: list[BaseException] = []
    cur: BaseException | None = e
    while cur is not None and cur not in seen:
        seen.append(cur)
        if isinstance(cur, ConvlensError):
            return ConvlensError(f"a Ray worker failed: {str(cur).splitlines()[0]}")
        cur = getattr(cur, "cause", None) or cur.__cause__
    text = str(e)
    # An actor that died in its constructor reports the remote error's text, last line last.
    for line in reversed(text.splitlines()):
        if "ConvlensError:" in line:
            cause = line.split("ConvlensError:", 1)[1].strip()
            return ConvlensError(f"a Ray worker failed: {cause}")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return ConvlensError(
        f"the Ray engine failed: {type(e).__name__}: {lines[-1][:300] if lines else 'no message'}"
    )


# --------------------------------------------------------------------------- the workers


@dataclass(frozen=True)
class Given:
    """A factory returning an object shipped once to each worker (a model's weights, or a
    data set that holds only paths): for API callers without a way to reopen it."""

    value: Any

    def __call__(self, *args: Any) -> Any:
        return self.value


class ShardTask:
    """What a worker computes for one shard; subclasses define :meth:`run`."""

    def __init__(self, shards: Sequence[Sequence[int]]) -> None:
        self.shards = list(shards)

    def run(self, model: Model, data: ImageDataset, indices: Sequence[int]) -> dict[str, Any]:
        raise NotImplementedError


class ScanShards(ShardTask):
    """Top-k hits and statistics of each shard: :func:`~convlens.analysis.scan.scan_indices`."""

    def __init__(
        self, shards: Sequence[Sequence[int]], layers: list[str], k: int, batch_size: int
    ) -> None:
        super().__init__(shards)
        self.layers, self.k, self.batch_size = layers, k, batch_size

    def run(self, model: Model, data: ImageDataset, indices: Sequence[int]) -> dict[str, Any]:
        from convlens.analysis.scan import scan_indices

        state, skipped = scan_indices(
            model, data, self.layers, indices, k=self.k, batch_size=self.batch_size
        )
        return {"state": encode_state(state), "skipped": json.dumps(skipped)}


class CodeShards(ShardTask):
    """Pooled codes of each shard's images: :func:`~convlens.analysis.embed.read_codes`."""

    def __init__(
        self, shards: Sequence[Sequence[int]], layer: str | None, pool: str, batch_size: int
    ) -> None:
        super().__init__(shards)
        self.layer, self.pool, self.batch_size = layer, pool, batch_size

    def run(self, model: Model, data: ImageDataset, indices: Sequence[int]) -> dict[str, Any]:
        from convlens.analysis.embed import read_codes

        skipped: list[dict[str, Any]] = []
        try:
            codes, labels, kept, skipped = read_codes(
                model, data, indices, self.layer, self.pool, self.batch_size
            )
        except ConvlensError as e:  # the whole shard unreadable: the driver decides
            if not str(e).startswith("none of the"):
                raise
            codes = torch.empty(0)
            labels = kept = torch.empty(0, dtype=torch.long)
            skipped = [{"index": int(i), "name": f"#{i}", "reason": str(e)} for i in indices]
        tensors = {"codes": codes.cpu().contiguous(), "labels": labels, "kept": kept}
        return {"state": save_tensors(tensors), "skipped": json.dumps(skipped)}


class ShardWorker:
    """A Ray Data actor: opens the model and the data set once, then maps shards."""

    def __init__(
        self,
        make_model: ModelFactory,
        open_data: DataFactory,
        task: ShardTask,
        device: str,
        precision: str,
        fingerprint: str | None,
    ) -> None:
        from convlens.analysis.scan import model_fingerprint

        self.device = resolve_device(device)
        model = make_model()
        if fingerprint is not None and model_fingerprint(model) != fingerprint:
            raise ConvlensError(
                f"the worker on {socket.gethostname()} loaded other weights for "
                f"{model.name!r} than the driver (a model must load identically everywhere, "
                "e.g. a checkpoint on shared storage, not a randomly initialised zoo name)"
            )
        self.model = model.to(self.device).eval()
        self.data = open_data(self.model)
        self.task = task
        self.precision = parse_precision(precision)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows: dict[str, list[Any]] = {"shard": [], "state": [], "skipped": []}
        for shard in batch["shard"].tolist():
            with autocast(self.device, self.precision):
                out = self.task.run(self.model, self.data, self.task.shards[shard])
            rows["shard"].append(shard)
            rows["state"].append(out["state"])
            rows["skipped"].append(out["skipped"])
        return {
            "shard": np.asarray(rows["shard"], dtype=np.int64),
            "state": np.asarray(rows["state"], dtype=object),
            "skipped": np.asarray(rows["skipped"], dtype=object),
        }


def run_shards(
    ray: Any,
    task: ShardTask,
    todo: Sequence[int],
    make_model: ModelFactory,
    open_data: DataFactory,
    *,
    workers: int,
    device: str,
    precision: str,
    fingerprint: str | None = None,
) -> Iterator[tuple[int, bytes, list[dict[str, Any]]]]:
    """``(shard, state bytes, skipped)`` for each shard in ``todo``, in completion order."""
    gpus = float(ray.cluster_resources().get("GPU", 0))
    use_gpu = device.startswith("cuda") or (device == "auto" and gpus > 0)
    if device.startswith("cuda") and gpus == 0:
        raise ConvlensError(
            f"--device {device} asks for GPUs but the Ray cluster has none; use --device cpu "
            "or auto"
        )
    # Inside a Ray worker the GPU it was given is its only visible one. Workers beyond the
    # GPU count share them (fractional GPUs): each worker decodes its images on its own CPU,
    # so several per GPU keep it fed.
    worker_device = "cuda" if use_gpu else device
    gpu_share = 1.0 / math.ceil(workers / gpus) if use_gpu else 0.0  # every worker fits
    ds = ray.data.from_items([{"shard": s} for s in todo], override_num_blocks=len(todo))
    with warnings.catch_warnings():
        # Recent Ray Data deprecates passing remote arguments this way, yet has no other way
        # to bound the restarts (its default, unbounded, would loop on a worker that always
        # crashes).
        warnings.simplefilter("ignore", DeprecationWarning)
        mapped = ds.map_batches(
            ShardWorker,
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=1,
            num_gpus=gpu_share,
            batch_format="numpy",
            fn_constructor_args=(
                make_model,
                open_data,
                task,
                worker_device,
                precision,
                fingerprint,
            ),
            max_restarts=RETRIES,
            max_task_retries=RETRIES,
        )
    try:
        for row in mapped.iter_rows():
            yield int(row["shard"]), bytes(row["state"]), json.loads(str(row["skipped"]))
    except ConvlensError:
        raise
    except Exception as e:  # RayTaskError, ActorDiedError, ...: one line
        raise _worker_error(e) from None


# --------------------------------------------------------------------------- state transfer


def encode_state(state: ScanState) -> bytes:
    """A scan state as safetensors bytes (tensors ``<i>/<field>``, layout in the metadata)."""
    tensors: dict[str, torch.Tensor] = {}
    layout = []
    for i, (name, lay) in enumerate(state.items()):
        layout.append({"name": name, "n_images": lay.n_images, "grid": list(lay.grid)})
        for key, t in lay.tensors().items():
            tensors[f"{i}/{key}"] = t.contiguous()
    return save_tensors(tensors, metadata={"layers": json.dumps(layout)})


def decode_state(raw: bytes) -> ScanState:
    header = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])
    layout = json.loads(header["__metadata__"]["layers"])
    tensors = load_tensors(raw)
    state: ScanState = {}
    for i, info in enumerate(layout):
        parts = {key[len(f"{i}/") :]: t for key, t in tensors.items() if key.startswith(f"{i}/")}
        state[info["name"]] = LayerState(
            **parts, n_images=int(info["n_images"]), grid=(info["grid"][0], info["grid"][1])
        )
    return state


def tree_merge(states: Sequence[ScanState], fanin: int = 16) -> ScanState:
    """Merge shard states level by level, ``fanin`` at a time (one sort per group)."""
    level = list(states)
    while len(level) > 1:
        level = [
            {name: merge_many([s[name] for s in level[i : i + fanin]]) for name in level[i]}
            for i in range(0, len(level), fanin)
        ]
    return level[0]


# --------------------------------------------------------------------------- the scan


def shard_ranges(first: int, total: int, batch_size: int, per_shard: int) -> list[range]:
    """``[first, total)`` cut into ranges of ``per_shard`` batches, on the local scan's batch
    boundaries (``first + i·batch_size``)."""
    step = batch_size * per_shard
    return [range(s, min(s + step, total)) for s in range(first, total, step)]


def batches_per_shard(remaining: int, batch_size: int, workers: int) -> int:
    """Enough shards to keep every worker busy and progress fine-grained (≥ 4 per worker),
    few enough that per-shard overhead stays small (at most 16 batches each)."""
    batches = -(-remaining // batch_size)
    return max(1, min(16, batches // (4 * workers)))


@dataclass
class RayScan:
    """A :data:`~convlens.analysis.scan.Runner` for :func:`~convlens.analysis.scan.scan`."""

    make_model: ModelFactory
    open_data: DataFactory
    address: str | None = None
    workers: int = 2
    device: str = "cpu"
    precision: str = "float32"

    def __call__(
        self,
        model: Model,
        dataset: ImageDataset,
        names: list[str],
        meta: ScanMeta,
        state: ScanState,
        out: str | os.PathLike[str] | None,
        save_every: float,
        report: ProgressFn | None,
    ) -> ScanState:
        total, first = len(dataset), meta.images_done
        meta.skipped = [s for s in meta.skipped if s["index"] < first]
        per = batches_per_shard(total - first, meta.batch_size, self.workers)
        shards = shard_ranges(first, total, meta.batch_size, per)
        task = ScanShards(shards, names, meta.k, meta.batch_size)
        waiting: dict[int, tuple[ScanState, list[dict[str, Any]]]] = {}
        nxt, done, last_save = 0, first, time.monotonic()
        with ray_session(self.address, self.workers) as ray:
            results = run_shards(
                ray, task, range(len(shards)), self.make_model, self.open_data,
                workers=self.workers, device=self.device, precision=self.precision,
                fingerprint=meta.model.get("sha256"),
            )  # fmt: skip
            for shard, raw, skipped in results:
                waiting[shard] = (decode_state(raw), skipped)
                done += len(shards[shard])
                run = []
                while nxt in waiting:  # the prefix grows by every shard now contiguous
                    part, part_skipped = waiting.pop(nxt)
                    run.append(part)
                    meta.skipped.extend(part_skipped)
                    meta.images_done = shards[nxt].stop
                    nxt += 1
                parts = [s for s in (state, *run) if s]  # a shard of unreadable images is {}
                if run and parts:
                    state = tree_merge(parts)
                if out is not None and run and time.monotonic() - last_save >= save_every:
                    save_scan(out, meta, state)
                    last_save = time.monotonic()
                if report is not None:
                    report(done, total)
        if not state:
            from convlens.analysis.scan import skipped_summary

            raise ConvlensError(
                f"none of the {total} images of {dataset.name!r} could be read: "
                + skipped_summary(meta.skipped)
            )
        return state


def ray_scan(
    model: Model,
    dataset: ImageDataset,
    layers: Sequence[str],
    *,
    make_model: ModelFactory | None = None,
    open_data: DataFactory | None = None,
    address: str | None = None,
    workers: int = 2,
    device: str = "cpu",
    precision: str = "float32",
    **scan_options: Any,
) -> Any:
    """:func:`~convlens.analysis.scan.scan` with the map on Ray Data workers.

    ``make_model()`` and ``open_data(model)`` run on every worker (picklable callables); by
    default the driver's ``model`` and ``dataset`` objects are shipped to each worker once,
    which suits models and folder data sets (paths only) but copies an in-memory data set.
    ``scan_options`` are :func:`scan`'s (``k``, ``batch_size``, ``out``, ``resume``, ...).
    """
    from convlens.analysis.scan import scan

    check_workers(workers)
    parse_precision(precision)
    runner = RayScan(
        make_model or Given(model.cpu()), open_data or Given(dataset), address, workers,
        device, precision,
    )  # fmt: skip
    return scan(model, dataset, layers, runner=runner, **scan_options)


def check_workers(workers: int) -> None:
    if not 1 <= workers <= 4096:
        raise ConvlensError(f"--workers must be at least 1 and at most 4096, got {workers}")


# --------------------------------------------------------------------------- codes


def ray_read_codes(
    model: Model,
    dataset: ImageDataset,
    indices: Sequence[int],
    layer: str | None = None,
    pool: str = "mean",
    batch_size: int = 256,
    *,
    make_model: ModelFactory | None = None,
    open_data: DataFactory | None = None,
    address: str | None = None,
    workers: int = 2,
    device: str = "cpu",
    precision: str = "float32",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[dict[str, Any]]]:
    """:func:`~convlens.analysis.embed.read_codes` with the forward passes on Ray workers:
    codes ``(N, D)``, labels and indices of the readable images, in ``indices``' order."""
    from convlens.analysis.scan import model_fingerprint

    check_workers(workers)
    order = list(indices)
    step = batch_size * batches_per_shard(len(order), batch_size, workers)
    shards = [order[s : s + step] for s in range(0, len(order), step)]
    task = CodeShards(shards, layer, pool, batch_size)
    parts: dict[int, dict[str, torch.Tensor]] = {}
    skipped: dict[int, list[dict[str, Any]]] = {}
    with ray_session(address, workers) as ray:
        for shard, raw, sk in run_shards(
            ray, task, range(len(shards)), make_model or Given(model.cpu()),
            open_data or Given(dataset), workers=workers, device=device, precision=precision,
            fingerprint=model_fingerprint(model),
        ):  # fmt: skip
            parts[shard], skipped[shard] = load_tensors(raw), sk
    kept = [parts[i] for i in range(len(shards)) if len(parts[i]["kept"])]
    if not kept:
        raise ConvlensError(f"none of the {len(order)} images could be read to compute codes")
    return (
        torch.cat([p["codes"] for p in kept]),
        torch.cat([p["labels"] for p in kept]),
        torch.cat([p["kept"] for p in kept]),
        [s for i in range(len(shards)) for s in skipped[i]],
    )
