"""What one running server holds: the model, its images, the settings and the model lock."""

from __future__ import annotations

import contextlib
import copy
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from convlens.io.image import DecodeLimits
from convlens.model.core import Model
from convlens.trace import DEFAULT_BUDGET, default_caps
from convlens.web.features import open_scan
from convlens.web.store import ImageStore, sample_catalogue

log = logging.getLogger("convlens.web")


@dataclass(frozen=True)
class ServerConfig:
    """Limits and defaults of a server (see ``docs/web-api.md``)."""

    max_upload_bytes: int = 16 * 1024 * 1024
    max_upload_pixels: int = 40_000_000
    store_capacity: int = 64
    trace_max_channels: int | None = None  # None: chosen per model to fit trace_budget
    trace_max_size: int | None = None
    trace_budget: int = DEFAULT_BUDGET  # numbers per default trace (see trace.default_caps)
    featurevis_steps: int = 128
    top_patches: int = 8

    @property
    def decode_limits(self) -> DecodeLimits:
        return DecodeLimits(max_bytes=self.max_upload_bytes, max_pixels=self.max_upload_pixels)


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
    together. An explanation takes it for writing: its methods hook the shared modules, and
    those hooks would also fire inside a concurrent trace (the traced graph calls the same
    module objects) and record that trace's activations as their own. JSON and PNG encoding
    happen outside the lock.
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
        self.cache: dict[Any, Any] = {}  # small per-server caches (model document, renders)
        self.cache_lock = threading.Lock()
        self._fv_model: Model | None = None
        self.fv_lock = threading.Lock()
        self.scan_lock = threading.Lock()

    def featurevis_model(self) -> Model:
        """A private copy of the model for feature visualization (call with ``fv_lock`` held).

        A render takes seconds of hooked forward/backward passes; on its own copy it never
        holds ``model_lock``, so traces and explanations go on meanwhile. The copy is taken
        while no explanation's hooks are on the modules.
        """
        if self._fv_model is None:
            with self.model_lock.write():
                self._fv_model = copy.deepcopy(self.model)
        return self._fv_model
