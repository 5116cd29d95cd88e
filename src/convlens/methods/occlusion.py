"""Occlusion sensitivity (Zeiler & Fergus, ECCV 2014): hide one patch at a time and watch the
target's score.

For a window of ``(kh, kw)`` pixels slid with ``stride`` over the image and filled with
``fill``, the drop at window ``w`` is ``Δ_w = s(x) − s(x with window w filled)``, where ``s``
is the target's probability (``measure="probability"``) or its logit (``"logit"``); both are
computed from the same passes and kept in ``extra`` (``grid_probability``, ``grid_logit``,
``(B, nh, nw)``, one value per window position, the paper's picture). ``values`` spreads
them back to pixels: each pixel gets the mean ``Δ`` of the windows covering it (Captum's
convention), 0 where no window reaches.

``incremental`` (default ``None``: whenever the network allows it) uses Krypton's incremental
inference (:mod:`convlens.methods.incremental`) on any traceable network, residual additions
and concatenations included: each patch's changed region is recomputed from the cached
activations of the unoccluded image, batched over ``chunk_size`` occluded images; the result
equals full passes to float rounding. Otherwise all windows of all examples are evaluated in
large batched forward passes under ``torch.inference_mode()``, in the NHWC
(``channels_last``) memory layout, which ran 1.3-2x faster on the 2-core CPU this was
measured on (``benchmarks/explain.py --sweep``). With ``channels_last`` (the default) the
incremental engine keeps its activations, regions and a private copy of the convolution
weights in that layout too (13-40 % less CPU time there); the model is not modified.

``approx=True`` trades exactness for speed with Krypton's two approximations:

- projective-field thresholding: every layer's changed region is capped at ``⌈τ · size⌉``
  rows and columns around the patch's projected centre (``tau``, default 0.7); what lies
  outside is taken from the unoccluded image. This drops the far tail of the patch's
  influence;
- adaptive drill-down: windows are first evaluated on a grid ``coarse`` times sparser
  (every ``coarse``-th position per axis, plus the last), the grid is interpolated
  bilinearly, and then the fraction ``drill`` (default 0.1) of the remaining positions with
  the largest interpolated ``|Δ|`` is evaluated per example. Every other position keeps its
  interpolated value. About 35-38 % of the positions are evaluated with the defaults (45 %
  with ``drill=0.25``, the default until it was measured to cost 1.5× the time for a
  correlation 0.01-0.04 higher on the fixtures below).

The error is not bounded in general: a network can hide any effect in the dropped tail or
between coarse positions, and the smoother the exact map (windows overlapping more, trained
rather than random weights) the smaller it is. What it allows on the fixtures of
``tests/test_methods_incremental.py`` (random-weight ResNet-18, MobileNetV2-like and
Inception-like networks, windows 3-4 times their stride): Pearson's correlation with the exact
grid of at least 0.7 (0.84 / 0.81 / 0.75 measured with the defaults), and a largest error of
up to the largest exact ``|Δ|`` itself (at a peak the coarse grid missed). On CNN Explainer's
trained Tiny VGG (window 8, stride 2) the correlation is 0.94 and the largest error 0.47 of
the largest ``|Δ|``; on the random-weight ResNet-18 at 224² (window 32, stride 16), 0.79 and
0.45. ``tau=1`` with
``drill=1`` gives the exact grid; ``extra["evaluated"]`` marks the positions that were
computed rather than interpolated.

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
from .incremental import IncrementalRunner, incremental_plan
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


def coarse_indices(n: int, step: int) -> list[int]:
    """Every ``step``-th index of ``range(n)`` and the last one (so interpolation covers all)."""
    idx = list(range(0, n, step))
    return idx if idx[-1] == n - 1 else [*idx, n - 1]


def interpolation_matrix(known: list[int], n: int) -> torch.Tensor:
    """``(n, len(known))`` weights of piecewise-linear interpolation from the values at the
    sorted indices ``known`` (which include 0 and ``n − 1``) to every index."""
    A = torch.zeros(n, len(known))
    for j in range(len(known) - 1):
        a, b = known[j], known[j + 1]
        for i in range(a, b + 1):
            t = (i - a) / (b - a)
            A[i] = 0
            A[i, j], A[i, j + 1] = 1 - t, t
    if len(known) == 1:
        A[:, 0] = 1
    return A


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
        "tau": Bound(0.01, 1),  # the approximate mode's cap, a fraction of each map
        "drill": Bound(0, 1),  # the fraction of positions refined after the coarse pass
        "coarse": Bound(1, 64, integer=True),  # the coarse pass's stride factor
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
        approx: bool = False,
        tau: float = 0.7,
        drill: float = 0.1,
        coarse: int = 2,
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
        if not 0 < tau <= 1:
            raise ConvlensError(f"tau must be in (0, 1] (a fraction of each map); got {tau}")
        if not 0 <= drill <= 1:
            raise ConvlensError(f"drill must be in [0, 1] (a fraction of positions); got {drill}")
        if not isinstance(coarse, int) or coarse < 1:
            raise ConvlensError(f"coarse must be a positive int (a stride factor); got {coarse}")
        self.fill, self.measure = fill, measure
        self.chunk_size, self.channels_last = chunk_size, channels_last
        self.approx, self.tau, self.drill, self.coarse = bool(approx), tau, drill, coarse
        plan = incremental_plan(model) if incremental is not False else None
        self.refused = plan.reason if plan is not None else None
        self.plan = plan if plan is not None and plan.gm is not None else None
        self.incremental = incremental

    def params(self) -> dict[str, Any]:
        p = {"window": list(self.window), "stride": list(self.stride), "fill": self.fill,
             "measure": self.measure, "chunk_size": self.chunk_size,
             "incremental": self.plan is not None, "approx": self.approx}  # fmt: skip
        if self.approx:
            p |= {"tau": self.tau, "drill": self.drill, "coarse": self.coarse}
        return p

    def fill_value(self, channels: int) -> torch.Tensor:
        """The fill as ``(C, 1, 1)`` pixel values (``"mean"``: the data mean, i.e. zero after
        the model's normalization)."""
        if isinstance(self.fill, str):
            if self.fill != "mean":
                raise ConvlensError(
                    f"unknown fill {self.fill!r}; accepted: 'mean', a number or one per channel"
                )
            return self.model.mean.detach().view(-1, 1, 1).float().clone()
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
        self.model.check_input(x)
        runner = None
        if self.plan is not None:  # its base run gives the unoccluded output too
            tau = self.tau if self.approx else None
            runner = IncrementalRunner(self.model, self.plan, x, tau, self.channels_last)
        out = self.model(x) if runner is None else runner.output
        tgt = resolve_target(self.model, target, out)
        H, W = x.shape[-2:]
        positions = window_positions((H, W), self.window, self.stride)
        nh = (H - self.window[0]) // self.stride[0] + 1
        nw = len(positions) // nh
        notes = []
        if self.approx:
            base = tgt.score(out) if self.measure == "logit" else tgt.probability(out)
            logit, prob, evaluated = self.drill_down(x, tgt, positions, (nh, nw), base, runner)
            notes.append(
                f"approximate: τ={self.tau}, drill-down to {self.drill:.0%} of the positions "
                f"after every {self.coarse}th; {int(evaluated.sum())} of {evaluated.numel()} "
                "window positions evaluated, the rest interpolated"
            )
        else:
            logit, prob = self.occluded_scores(x, tgt, positions, runner=runner)  # (B, L) each
        base_logit, base_prob = tgt.score(out), tgt.probability(out)
        grids = {
            "grid_logit": (base_logit[:, None] - logit).view(-1, nh, nw),
            "grid_probability": (base_prob[:, None] - prob).view(-1, nh, nw),
        }
        values = self.spread(grids[f"grid_{self.measure}"], (H, W))
        if self.approx:
            grids["evaluated"] = evaluated
        if self.incremental is True and self.plan is None:
            notes.append(f"incremental inference is not possible here ({self.refused}); "
                         "ran full passes")  # fmt: skip
        return self.result(values, base_logit, tgt, extra=grids, notes=notes)

    def occluded_scores(
        self,
        x: torch.Tensor,
        tgt: Target,
        positions: list[tuple[int, int]],
        tau: float | None = None,
        runner: IncrementalRunner | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Target logit and probability with each window filled: two ``(B, L)`` tensors
        (``tau``: the approximate mode's cap on changed regions, incremental runs only)."""
        B, C = x.shape[:2]
        fill = self.fill_value(C).to(x)
        kh, kw = self.window
        per_chunk = max(1, self.chunk_size // B)
        logits, probs = [], []
        if runner is None and self.plan is not None:
            runner = IncrementalRunner(self.model, self.plan, x, tau, self.channels_last)
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
        if not positions:
            return torch.zeros(B, 0), torch.zeros(B, 0)
        return torch.cat(logits, dim=1), torch.cat(probs, dim=1)

    def drill_down(
        self,
        x: torch.Tensor,
        tgt: Target,
        positions: list[tuple[int, int]],
        grid: tuple[int, int],
        base: torch.Tensor,
        runner: IncrementalRunner | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The approximate mode: coarse positions, bilinear interpolation, then the ``drill``
        fraction of positions with the largest interpolated ``|Δ|`` per example (``base``: the
        unoccluded images' measure ``(B,)``). Returns the
        occluded logits and probabilities ``(B, L)`` and which positions were evaluated
        ``(B, nh, nw)``."""
        B = x.shape[0]
        nh, nw = grid
        rows, cols = coarse_indices(nh, self.coarse), coarse_indices(nw, self.coarse)
        picked = [r * nw + c for r in rows for c in cols]
        if runner is None and self.plan is not None:
            runner = IncrementalRunner(self.model, self.plan, x, self.tau, self.channels_last)
        logit_c, prob_c = self.occluded_scores(
            x, tgt, [positions[i] for i in picked], self.tau, runner
        )
        Ar, Ac = interpolation_matrix(rows, nh).to(x), interpolation_matrix(cols, nw).to(x)

        def spread(v: torch.Tensor) -> torch.Tensor:  # (B, len(rows) len(cols)) -> (B, L)
            return (Ar @ v.view(B, len(rows), len(cols)) @ Ac.T).reshape(B, -1)

        logit, prob = spread(logit_c), spread(prob_c)
        evaluated = torch.zeros(B, nh * nw, dtype=torch.bool)
        evaluated[:, picked] = True
        measure = logit if self.measure == "logit" else prob
        extra = round(self.drill * (nh * nw - len(picked)))
        if extra == 0:
            return logit, prob, evaluated.view(B, nh, nw)
        importance = torch.where(evaluated, -1.0, (base[:, None] - measure).abs())
        chosen = torch.argsort(importance, dim=1, descending=True)[:, :extra]  # (B, extra)
        examples = torch.arange(B).repeat_interleave(extra).tolist()
        flat = chosen.flatten().tolist()
        lo, pr = self.pair_scores(x, tgt, examples, [positions[i] for i in flat], runner)
        logit[examples, flat], prob[examples, flat] = lo, pr
        evaluated[examples, flat] = True
        return logit, prob, evaluated.view(B, nh, nw)

    def pair_scores(
        self,
        x: torch.Tensor,
        tgt: Target,
        examples: list[int],
        corners: list[tuple[int, int]],
        runner: IncrementalRunner | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Target logit and probability ``(N,)`` of example ``examples[i]`` with the window
        at ``corners[i]`` filled (positions that differ between examples, in one batch)."""
        fill = self.fill_value(x.shape[1]).to(x)
        kh, kw = self.window
        logits, probs = [], []
        for r0, r1 in chunks(len(corners), self.chunk_size):
            rows = torch.tensor(examples[r0:r1])
            if runner is not None:
                o = runner.run(corners[r0:r1], self.window, fill, examples[r0:r1])
            else:
                batch = x[rows]
                for i, (t, left) in enumerate(corners[r0:r1]):
                    batch[i, :, t : t + kh, left : left + kw] = fill
                if self.channels_last:
                    batch = batch.contiguous(memory_format=torch.channels_last)
                o = self.model(batch)
            logits.append(tgt.score(o, rows))
            probs.append(tgt.probability(o, rows))
        return torch.cat(logits), torch.cat(probs)

    def spread(self, grid: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Per-window drops ``(B, nh, nw)`` to pixels ``(B, 1, H, W)``: the mean over the
        windows covering each pixel (``F.fold`` sums the overlapping windows)."""
        B = grid.shape[0]
        k = self.window[0] * self.window[1]
        cols = grid.reshape(B, 1, -1).expand(B, k, -1)
        total = F.fold(cols, size, self.window, stride=self.stride)
        count = F.fold(torch.ones_like(cols[:1]), size, self.window, stride=self.stride)
        return torch.where(count > 0, total / count.clamp_min(1), torch.zeros_like(total))
