"""What one running server holds: the model, its images, the settings and the model lock."""

from __future__ import annotations

import copy
import logging
import threading
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


class ServerState:
    """The shared model and everything the routes read.

    ``model_lock`` serializes every pass through the model. Tracing alone would be safe to run
    concurrently (no hooks, inference mode), but the explanation methods and feature
    visualization attach hooks to the shared modules, and those hooks would fire inside a
    concurrent trace; one lock keeps every request's passes apart. JSON and PNG encoding happen
    outside it.
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
        self.model_lock = threading.Lock()
        self.cache: dict[Any, Any] = {}  # small per-server caches (model document, renders)
        self.cache_lock = threading.Lock()
        self._fv_model: Model | None = None
        self.fv_lock = threading.Lock()
        self.scan_lock = threading.Lock()

    def featurevis_model(self) -> Model:
        """A private copy of the model for feature visualization (call with ``fv_lock`` held).

        A render takes seconds of hooked forward/backward passes; on its own copy it never
        holds ``model_lock``, so traces and explanations go on meanwhile.
        """
        if self._fv_model is None:
            with self.model_lock:
                self._fv_model = copy.deepcopy(self.model)
        return self._fv_model
