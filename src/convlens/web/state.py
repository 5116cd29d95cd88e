"""What one running server holds: the model, its images, the settings, the model lock and the
worker pools that run model work apart from the request threads."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from PIL import Image

from convlens.io.image import MAX_ASPECT, WEB_FORMATS, DecodeLimits
from convlens.model.core import Model
from convlens.trace import DEFAULT_BUDGET, default_caps, model_document, open_scan
from convlens.trace.schema import EXPLAIN_SECONDS, JSON_BYTES, UPLOAD_BYTES, Limits, ModelDoc
from convlens.trace.unit import Patches, render_unit, top_patches
from convlens.web.cache import LRUCache
from convlens.web.errors import ApiError
from convlens.web.store import ImageStore, sample_catalogue
from convlens.web.traces import Traces

log = logging.getLogger("convlens.web")


@dataclass(frozen=True)
class ServerConfig:
    """Limits and defaults of a server (see ``docs/web-api.md``)."""

    max_upload_bytes: int = UPLOAD_BYTES
    max_upload_pixels: int = 40_000_000
    store_capacity: int = 64
    trace_max_channels: int | None = None  # None: chosen per model to fit trace_budget
    trace_max_size: int | None = None
    trace_budget: int = DEFAULT_BUDGET  # numbers per default trace (see trace.default_caps)
    featurevis_steps: int = 128
    top_patches: int = 8
    max_aspect: float = MAX_ASPECT  # longest side / shortest side of an upload
    max_json_bytes: int = JSON_BYTES  # any body but an upload's
    trace_max_numbers: int = 4 * DEFAULT_BUDGET  # the most a client's trace caps may ask for
    explain_seconds: float = EXPLAIN_SECONDS  # time budget of one explanation
    max_chunk_pixels: int = 4 * 2**20  # images per pass × pixels per image, for chunk_size
    decode_workers: int = 2  # uploads decoded at once (each may take ~4 bytes per pixel)
    trace_workers: int = 2  # traces computed at once
    explain_workers: int = 1  # explanations and feature visualizations computed at once
    queue: int = 64  # requests of each kind waiting for a worker before 503
    upload_queue: int = 8  # uploads buffered beyond the decoders (each up to max_upload_bytes)
    header_timeout: float = 10.0  # seconds a connection may take to send its request head
    keep_alive: int = 5  # seconds an idle keep-alive connection is kept
    max_connections: int = 1024  # uvicorn's limit_concurrency (open connections): 503 beyond
    renders_kept: int = 256  # feature visualizations cached per server

    @property
    def decode_limits(self) -> DecodeLimits:
        return DecodeLimits(
            max_bytes=self.max_upload_bytes,
            max_pixels=self.max_upload_pixels,
            max_aspect=self.max_aspect,
            formats=WEB_FORMATS,
        )


T = TypeVar("T")


def busy(what: str, count: int, limit: int) -> ApiError:
    """The ``503`` of a kind of request past its limit."""
    return ApiError(
        503,
        f"the server is busy: {count} {what} (at most {limit}); try again shortly",
    )


class WorkPool:
    """A few threads for one kind of model work, apart from the request threads, with a bounded
    queue: a request waits for a worker without holding a request thread, and is answered 503
    when ``workers + queue`` requests of its kind are already running or waiting.
    """

    def __init__(self, kind: str, workers: int, queue: int) -> None:
        self.kind = kind
        self.workers = max(1, workers)
        self.limit = self.workers + queue
        self._pool: ThreadPoolExecutor | None = None  # made at first use, again after shutdown
        self._pending = 0
        self._lock = threading.Lock()

    @property
    def pending(self) -> int:
        return self._pending

    def _release(self, _: object) -> None:
        with self._lock:
            self._pending -= 1

    def submit(self, fn: Callable[[], T]) -> Future[T]:
        """Queue ``fn`` on a worker (``503`` when the pool's limit is reached); it is counted
        until it ends, even when whoever waits for it goes away meanwhile."""
        with self._lock:
            if self._pending >= self.limit:
                raise busy(
                    f"{self.kind} requests are running or waiting", self._pending, self.limit
                )
            self._pending += 1
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    self.workers, thread_name_prefix=f"convlens-{self.kind}"
                )
            pool = self._pool
        try:
            future = pool.submit(fn)
        except BaseException:
            self._release(None)
            raise
        future.add_done_callback(self._release)
        return future

    async def run(self, fn: Callable[[], T]) -> T:
        return await asyncio.wrap_future(self.submit(fn))

    def shutdown(self) -> None:
        """Stop the threads (the app's lifespan ended); a later request starts new ones."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)


class Admission:
    """At most ``limit`` requests of a kind inside at once; the next is answered 503."""

    def __init__(self, kind: str, limit: int) -> None:
        self.kind, self.limit = kind, limit
        self._inside = 0
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        with self._lock:
            if self._inside >= self.limit:
                raise busy(f"{self.kind}s are in progress", self._inside, self.limit)
            self._inside += 1
        try:
            yield
        finally:
            with self._lock:
                self._inside -= 1


class TimeBudgetExceededError(Exception):
    """Model work ran past its time budget (checked at every module call)."""


_budget = threading.local()
_budget_hook: Any = None
_budget_hook_lock = threading.Lock()


def _check_budget(module: torch.nn.Module, args: Any) -> None:
    deadline = getattr(_budget, "deadline", None)
    if deadline is not None and time.monotonic() > deadline:
        _budget.deadline = None  # raise once; the method's clean-up may call modules again
        raise TimeBudgetExceededError(f"{_budget.seconds:g} s")


@contextlib.contextmanager
def time_budget(seconds: float) -> Iterator[None]:
    """Stop model work in this thread once ``seconds`` have passed.

    A global forward pre-hook (registered once per process; it only reads a thread-local)
    raises :class:`TimeBudgetExceededError` at the first module call after the deadline, so any
    method stops within one layer's time, whatever loop it runs.
    """
    global _budget_hook
    with _budget_hook_lock:
        if _budget_hook is None:
            _budget_hook = torch.nn.modules.module.register_module_forward_pre_hook(_check_budget)
    _budget.seconds = seconds
    _budget.deadline = time.monotonic() + seconds
    try:
        yield
    finally:
        _budget.deadline = None


class ReadWriteLock:
    """Many readers at once, or one writer alone; a waiting writer goes before new readers.

    >>> lock = ReadWriteLock()
    >>> with lock.read(), lock.read():  # readers share
    ...     pass
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    @contextlib.contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if self._readers == 0:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


class ServerState:
    """The shared model and everything the routes read.

    ``model_lock`` keeps requests' passes through the shared model apart. A trace takes it for
    reading: it runs the traced graph under inference mode with no hooks, so traces may run
    together (an untraceable model's trace hooks the modules and takes it for writing).
    Explanations and feature visualizations hook the modules they run, and those hooks would
    also fire inside a concurrent trace, so they run on a private copy (:meth:`work_model`)
    under ``work_lock``, one at a time on their own pool, never holding ``model_lock``.
    """

    def __init__(
        self,
        model: Model,
        *,
        images_dir: Path | None = None,
        scan_dir: Path | None = None,
        scan_data: str | None = None,
        config: ServerConfig | None = None,
    ) -> None:
        self.model = model.eval()
        self.config = config or ServerConfig()
        _ = model.graph  # build the (cached) layer graph once, before any request races for it
        self.store = ImageStore(
            model.spec,
            sample_catalogue(model, images_dir),
            capacity=self.config.store_capacity,
            limits=self.config.decode_limits,
        )
        auto_channels, auto_size = default_caps(model, self.config.trace_budget)
        self.trace_max_channels = self.config.trace_max_channels or auto_channels
        self.trace_max_size = self.config.trace_max_size or auto_size
        self.scan = open_scan(scan_dir, model, scan_data) if scan_dir is not None else None
        if self.scan is not None and self.scan.problem:
            log.warning("--scan %s: %s; top patches are off", scan_dir, self.scan.problem)
        self.model_lock = ReadWriteLock()
        self._model_body: bytes | None = None
        self._renders: LRUCache[tuple[str, int], Image.Image | None] = LRUCache(
            self.config.renders_kept
        )
        self._work_model: Model | None = None
        self.work_lock = threading.Lock()
        self.scan_lock = threading.Lock()
        cfg = self.config
        self.decode_pool = WorkPool("upload", cfg.decode_workers, cfg.queue)
        self.trace_pool = WorkPool("trace", cfg.trace_workers, cfg.queue)
        self.explain_pool = WorkPool("explanation", cfg.explain_workers, cfg.queue)
        self.upload_slots = Admission("upload", cfg.decode_workers + cfg.upload_queue)
        self.traces = Traces(self)  # trace bodies and recorded passes, kept and single-flight

    def work_model(self) -> Model:
        """A private copy of the model for explanations and feature visualization (call with
        ``work_lock`` held).

        Both hook the modules they run; on their own copy they never hold ``model_lock``, so
        traces go on meanwhile. The copy is taken while no hooked trace runs.
        """
        if self._work_model is None:
            with self.model_lock.write():
                self._work_model = copy.deepcopy(self.model)
        return self._work_model

    @property
    def limits(self) -> Limits:
        # the config's own limits go by the same names (its caps may be None: chosen per model)
        own = {k: getattr(self.config, k) for k in Limits.model_fields if hasattr(self.config, k)}
        return Limits(**own, max_channels=self.trace_max_channels, max_size=self.trace_max_size)

    def model_body(self) -> bytes:
        """``GET /model``'s body, built, checked against its schema and encoded once."""
        if self._model_body is None:
            doc = model_document(
                self.model,
                samples=list(self.store.samples.values()),
                limits=self.limits,
                scan=self.scan is not None and self.scan.dataset is not None,
            )
            checked = ModelDoc.model_validate(doc).model_dump(mode="json")
            self._model_body = json.dumps(checked, separators=(",", ":")).encode()
        return self._model_body

    def trace_lock(self) -> contextlib.AbstractContextManager[None]:
        """A traced graph runs without hooks, so traces share the model (read lock); an
        untraceable model is recorded with hooks (probe.record_all's fallback) and needs it
        alone (write lock)."""
        shared = self.model.graph.traced is not None
        return self.model_lock.read() if shared else self.model_lock.write()

    def render(self, layer: str, channel: int) -> Image.Image | None:
        """The unit's feature visualization, rendered once per server on the private copy."""
        key = (layer, channel)
        if key in self._renders:
            return self._renders.get(key)
        with self.work_lock:
            if key in self._renders:  # rendered by another request while we waited
                return self._renders.get(key)
            image = render_unit(self.work_model(), layer, channel, self.config.featurevis_steps)
            self._renders.put(key, image)
        return image

    def top_patches(self, layer: str, channel: int) -> Patches | None:
        """The unit's top data-set patches (``None`` without a usable scan)."""
        with self.scan_lock:  # data sets read files and may cache; one reader at a time
            return top_patches(self.scan, self.model, layer, channel, n=self.config.top_patches)

    def shutdown(self) -> None:
        for pool in (self.decode_pool, self.trace_pool, self.explain_pool):
            pool.shutdown()
