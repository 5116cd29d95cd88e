"""Occlusion sensitivity (Zeiler & Fergus, ECCV 2014): hide one patch at a time and watch the
target's score.

For a window of ``(kh, kw)`` pixels slid with ``stride`` over the image and filled with
``fill``, the drop at window ``w`` is ``Δ_w = s(x) − s(x with window w filled)``, where ``s``
is the target's probability (``measure="probability"``) or its logit (``"logit"``); both are
computed from the same passes and kept in ``extra`` (``grid_probability``, ``grid_logit``,
``(B, nh, nw)``, one value per window position, the paper's picture). ``values`` spreads
them back to pixels: each pixel gets the mean ``Δ`` of the windows covering it (Captum's
convention), 0 where no window reaches.

All windows of all examples are evaluated in large batched forward passes (``chunk_size``
images each, by default about 3 Mpixels) under ``torch.inference_mode()``, in the NHWC
(``channels_last``) memory layout, which ran 1.3-2x faster on the 2-core CPU this was
measured on (``benchmarks/explain.py --sweep``).

On ``nn.Sequential`` chains, ``incremental`` (default ``None``: whenever possible) recomputes
only each patch's receptive-field cone (:mod:`convlens.methods.incremental`); the result
equals the full passes to float rounding.

>>> from convlens.model.zoo import build
>>> m = build("tiny-vgg:input_size=32")
>>> a = Occlusion(m, window=8, stride=4)(torch.rand(2, 3, 32, 32))
>>> tuple(a.extra["grid_probability"].shape), tuple(a.values.shape)
((2, 7, 7), (2, 1, 32, 32))
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F

from convlens.errors import ConvlensError
from convlens.model.core import Model

from .base import Attribution, Bound, Method, chunks, parse_pair, register
from .incremental import IncrementalRunner, chain_plan
from .targets import Target, TargetSpec, resolve_target

Fill = Literal["mean"] | float | Sequence[float]
Measure = Literal["probability", "logit"]


def window_positions(
    size: tuple[int, int], window: tuple[int, int], stride: tuple[int, int]
) -> list[tuple[int, int]]:
    """Top-left corners ``(top, left)`` of every window, row by row: ``⌊(N − k)/s⌋ + 1`` per
    axis, as ``F.fold`` and Captum place them."""
    rows = range(0, size[0] - window[0] + 1, stride[0])
    cols = range(0, size[1] - window[1] + 1, stride[1])
    return [(t, left) for t in rows for left in cols]


@register
class Occlusion(Method):
    """Occlusion sensitivity; see the module docstring for the formula."""

    name = "occlusion"
    title = "Occlusion"
    paper = "Zeiler & Fergus 2014, Visualizing and Understanding Convolutional Networks"
    family = "perturbation"
    uses_gradients = False
    signed = True
    bounds: ClassVar[dict[str, Bound]] = {
        "window": Bound(1, 4096, integer=True, items=2),
        "stride": Bound(1, 4096, integer=True, items=2),
        "fill": Bound(-1000, 1000, choices=("mean",), items=64),  # pixel units, or per channel
        "chunk_size": Bound(1, 4096, integer=True),
    }

    def __init__(
        self,
        model: Model,
        window: int | tuple[int, int] | None = None,
        stride: int | tuple[int, int] | None = None,
        fill: Fill = "mean",
        measure: Measure = "probability",
        chunk_size: int | None = None,
        channels_last: bool = True,
        incremental: bool | None = None,
    ) -> None:
        super().__init__(model)
        H, W = model.spec.height, model.spec.width
        self.window = parse_pair(window if window is not None else max(2, min(H, W) // 8), "window")
        self.stride = parse_pair(
            stride if stride is not None else max(1, min(self.window) // 2), "stride"
        )
        if measure not in ("probability", "logit"):
            raise ConvlensError(f"measure must be probability or logit; got {measure!r}")
        if chunk_size is None:  # about 3 Mpixels per pass: 256 images at 64², 62 at 224²
            chunk_size = max(16, min(256, 3 * 2**20 // (H * W)))
        if chunk_size < 1:
            raise ConvlensError(f"chunk_size must be at least 1; got {chunk_size}")
        self.fill, self.measure = fill, measure
        self.chunk_size, self.channels_last = chunk_size, channels_last
        self.plan = chain_plan(model) if incremental is not False else None
        self.incremental = incremental

    def params(self) -> dict[str, Any]:
        return {"window": list(self.window), "stride": list(self.stride), "fill": self.fill,
                "measure": self.measure, "chunk_size": self.chunk_size,
                "incremental": self.plan is not None}  # fmt: skip

    def fill_value(self, channels: int) -> torch.Tensor:
        """The fill as ``(C, 1, 1)`` pixel values (``"mean"``: the data mean, i.e. zero after
        the model's normalization)."""
        if isinstance(self.fill, str):
            if self.fill != "mean":
                raise ConvlensError(
                    f"unknown fill {self.fill!r}; accepted: 'mean', a number or one per channel"
                )
            return self.model.mean.detach().view(-1, 1, 1).float().cpu()
        vals = [float(self.fill)] if isinstance(self.fill, int | float) else list(self.fill)
        if len(vals) not in (1, channels):
            raise ConvlensError(f"fill needs 1 or {channels} values; got {len(vals)}")
        return torch.tensor(vals, dtype=torch.float32).view(-1, 1, 1).expand(channels, 1, 1)

    def check_window(self, x: torch.Tensor) -> None:
        H, W = x.shape[-2:]
        if self.window[0] > H or self.window[1] > W:
            raise ConvlensError(
                f"occlusion window {self.window[0]}×{self.window[1]} is larger than the image "
                f"{H}×{W}; choose a window of at most {H}×{W} pixels"
            )

    @torch.inference_mode()
    def attribute(self, x: torch.Tensor, target: TargetSpec) -> Attribution:
        self.check_window(x)
        out = self.model(x)
        tgt = resolve_target(self.model, target, out)
        positions = window_positions((x.shape[-2], x.shape[-1]), self.window, self.stride)
        logit, prob = self.occluded_scores(x, tgt, positions)  # (B, L) each
        base_logit, base_prob = tgt.score(out), tgt.probability(out)
        H, W = x.shape[-2:]
        nh = (H - self.window[0]) // self.stride[0] + 1
        nw = len(positions) // nh
        grids = {
            "grid_logit": (base_logit[:, None] - logit).view(-1, nh, nw),
            "grid_probability": (base_prob[:, None] - prob).view(-1, nh, nw),
        }
        values = self.spread(grids[f"grid_{self.measure}"], (H, W))
        notes = []
        if self.incremental is True and self.plan is None:
            notes.append("incremental inference needs an nn.Sequential chain; ran full passes")
        return self.result(values, base_logit, tgt, extra=grids, notes=notes)

    def occluded_scores(
        self, x: torch.Tensor, tgt: Target, positions: list[tuple[int, int]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Target logit and probability with each window filled: two ``(B, L)`` tensors."""
        B, C = x.shape[:2]
        fill = self.fill_value(C).to(x)
        kh, kw = self.window
        per_chunk = max(1, self.chunk_size // B)
        logits, probs = [], []
        runner = IncrementalRunner(self.model, self.plan, x) if self.plan is not None else None
        for w0, w1 in chunks(len(positions), per_chunk):
            n = w1 - w0
            rows = torch.arange(B).repeat_interleave(n)  # example-major
            if runner is not None:  # window-major rows: i B + b
                o = runner.run(positions[w0:w1], self.window, fill)
                wm = torch.arange(B).repeat(n)
                logits.append(tgt.score(o, wm).view(n, B).T)
                probs.append(tgt.probability(o, wm).view(n, B).T)
                continue
            batch = x.unsqueeze(1).repeat(1, n, 1, 1, 1)  # (B, n, C, H, W)
            for i, (t, left) in enumerate(positions[w0:w1]):
                batch[:, i, :, t : t + kh, left : left + kw] = fill
            batch = batch.view(B * n, *x.shape[1:])
            if self.channels_last:
                batch = batch.contiguous(memory_format=torch.channels_last)
            o = self.model(batch)
            logits.append(tgt.score(o, rows).view(B, n))
            probs.append(tgt.probability(o, rows).view(B, n))
        return torch.cat(logits, dim=1), torch.cat(probs, dim=1)

    def spread(self, grid: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Per-window drops ``(B, nh, nw)`` to pixels ``(B, 1, H, W)``: the mean over the
        windows covering each pixel (``F.fold`` sums the overlapping windows)."""
        B = grid.shape[0]
        k = self.window[0] * self.window[1]
        cols = grid.reshape(B, 1, -1).expand(B, k, -1)
        total = F.fold(cols, size, self.window, stride=self.stride)
        count = F.fold(torch.ones_like(cols[:1]), size, self.window, stride=self.stride)
        return torch.where(count > 0, total / count.clamp_min(1), torch.zeros_like(total))
