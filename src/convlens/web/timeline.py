"""The training timeline in the web explainer: ``GET /api/v1/timeline`` and
``GET /api/v1/timeline/frames/{index}``.

When the served model is a run folder written by ``convlens train --watch``, the front end's
slider (``static/js/timeline.js``) plays its snapshots back: the first layer's filters, the
probe image's activations and Grad-CAM, dead units and the loss at each step. The index is
re-read whenever ``index.json`` changes, so a run still training can be watched live; the
folder's files are checked like any other input (``convlens.train.watch.read_index``).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel

from convlens.errors import ConvlensError
from convlens.io.figure import upscale
from convlens.trace.encode import png_data_url
from convlens.train.timeline import (
    Timeline,
    activation_row,
    cam_overlay,
    dead_text,
    filter_grid,
    filter_roughness,
    frame_label,
    loss_chart,
    probe_image,
)
from convlens.train.watch import INDEX_FILE, MAX_FRAMES, timeline_dir
from convlens.web.errors import ApiError
from convlens.web.schemas import Error

PREFIX = "/api/v1"
FRAME_CACHE = 64  # rendered frames kept per server


class TimelineFrameInfo(BaseModel):
    index: int
    step: int
    epoch: float
    epoch_end: bool
    loss: float | None
    acc: float | None
    val_loss: float | None
    val_acc: float | None
    lr: float | None
    dead: dict[str, int]
    label: str


class TimelineDocument(BaseModel):
    """``available`` false (with the ``reason``) when the served model has no timeline."""

    available: bool
    reason: str | None = None
    every: int | None = None
    steps_per_epoch: int | None = None
    filters_layer: str | None = None
    cam_layer: str | None = None
    layers: list[str] = []
    units: dict[str, int] = {}
    probe_class: str | None = None
    probe_image: str | None = None
    frames: list[TimelineFrameInfo] = []


class ShownLayer(BaseModel):
    layer: str
    image: str


class TimelineFrame(BaseModel):
    index: int
    step: int
    label: str
    dead_text: str
    filters: str
    gradcam: str
    loss_chart: str
    activations: list[ShownLayer]
    dead: dict[str, list[int]]


class _Source:
    """The run's timeline, reopened when ``index.json`` changes, and rendered frames."""

    def __init__(self, run: Path | None) -> None:
        self.run = run
        self.lock = threading.Lock()
        self.stamp: tuple[int, int] | None = None
        self.timeline: Timeline | None = None
        self.frames: OrderedDict[tuple[tuple[int, int], int], dict[str, Any]] = OrderedDict()

    def current(self) -> tuple[Timeline, tuple[int, int]]:
        if self.run is None:
            raise ConvlensError("the served model is not a training run folder")
        path = timeline_dir(self.run) / INDEX_FILE
        try:
            st = os.stat(path)
        except OSError:
            raise ConvlensError(
                "the served run has no training timeline; record one with "
                "`convlens train ... --watch`"
            ) from None
        stamp = (st.st_mtime_ns, st.st_size)
        with self.lock:
            if stamp != self.stamp or self.timeline is None:
                self.timeline, self.stamp = Timeline.open(self.run), stamp
                self.frames.clear()
            return self.timeline, stamp

    def document(self) -> dict[str, Any]:
        try:
            tl, _ = self.current()
        except ConvlensError as e:
            return {"available": False, "reason": str(e)}
        ix = tl.index
        frames = [
            {"index": i, **f.to_dict(), "label": frame_label(ix, i)}
            for i, f in enumerate(ix.frames)
        ]
        return {
            "available": True, "every": ix.every, "steps_per_epoch": ix.steps_per_epoch,
            "filters_layer": ix.plan.filters, "cam_layer": ix.plan.cam,
            "layers": list(ix.plan.show), "units": ix.units, "probe_class": ix.probe_class,
            "probe_image": png_data_url(probe_image(tl.probe, 112)), "frames": frames,
        }  # fmt: skip

    def frame(self, i: int) -> dict[str, Any]:
        try:
            tl, stamp = self.current()
        except ConvlensError as e:
            raise ApiError(404, str(e)) from None
        n = len(tl)
        if not 0 <= i < n:
            raise ApiError(404, f"no frame {i}: this timeline has {n} frames (index 0..{n - 1})")
        with self.lock:
            cached = self.frames.get((stamp, i))
            if cached is not None:
                self.frames.move_to_end((stamp, i))
                return cached
        doc = render_frame(tl, i)
        with self.lock:
            self.frames[(stamp, i)] = doc
            while len(self.frames) > FRAME_CACHE:
                self.frames.popitem(last=False)
        return doc


def render_frame(tl: Timeline, i: int) -> dict[str, Any]:
    """Frame ``i`` as PNG data URLs (filters, Grad-CAM, loss chart, a row per layer)."""
    t = tl.tensors(i)
    ix = tl.index
    return {
        "index": i,
        "step": ix.frames[i].step,
        "label": f"{frame_label(ix, i)} · filter roughness {filter_roughness(t['filters']):.2f}",
        "dead_text": dead_text(ix, i),
        "filters": png_data_url(upscale(filter_grid(t["filters"], cell=28), 160)),
        "gradcam": png_data_url(cam_overlay(tl.probe, t["cam"], 112)),
        "loss_chart": png_data_url(loss_chart(ix.frames, i, (280, 120))),
        "activations": [
            {"layer": n, "image": png_data_url(activation_row(t[f"act/{n}"], cell=44))}
            for n in ix.plan.show
        ],
        "dead": {
            n: [int(k) for k in t[f"dead/{n}"].nonzero().flatten().tolist()] for n in ix.plan.dead
        },
    }


def timeline_router(run: str | os.PathLike[str] | None) -> APIRouter:
    """The timeline routes for the run folder ``run`` (``None``: the model is not a run)."""
    source = _Source(Path(run) if run is not None else None)
    router = APIRouter(prefix=PREFIX, tags=["timeline"], responses={
        400: {"model": Error, "description": "a timeline file is corrupt"},
        404: {"model": Error, "description": "no timeline, or no frame with this index"},
        422: {"model": Error, "description": "the frame index is not a number in range"},
    })  # fmt: skip

    @router.get(
        "/timeline",
        summary="The training timeline of the served run (train --watch), if it has one",
        response_model=TimelineDocument,
    )
    async def get_timeline() -> dict[str, Any]:
        return await run_in_threadpool(source.document)

    @router.get(
        "/timeline/frames/{index}",
        summary="One frame of the timeline as pictures",
        response_model=TimelineFrame,
    )
    async def get_frame(
        index: Annotated[int, PathParam(ge=0, le=MAX_FRAMES, description="frame number")],
    ) -> dict[str, Any]:
        try:
            return await run_in_threadpool(source.frame, index)
        except ConvlensError as e:  # a frame file that is corrupt or does not match the index
            raise ApiError(400, str(e)) from None

    return router
