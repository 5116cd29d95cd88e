"""Objectives: what a feature visualization maximizes, one value per image of the batch.

An objective reads a :class:`Context` (the images, the captured activations of the layers it
names, the model's output) and returns a tensor ``(B,)``. Objectives combine with ``+``, ``-``,
``*`` (by a number or by another objective) and unary ``-``, so a render can maximize, e.g.,
``channel("conv_2_2", 3) - 0.5 * channel("conv_2_2", 7)`` (Olah et al., "Feature
Visualization", Distill 2017).

- ``channel(layer, c)``: ``mean_{y,x} A[c, y, x]``, the mean activation of channel ``c``;
- ``neuron(layer, c, y, x)``: ``A[c, y, x]``, one spatial position (the centre by default);
- ``layer(layer)``: ``mean A²`` over all channels and positions (DeepDream, Mordvintsev 2015);
- ``class_logit(k)`` / ``class_prob(k)``: the output score or the softmax probability of class k;
- ``direction(layer, v)``: ``mean_{y,x} <v, A[:, y, x]>`` with ``v`` unit length;
- ``diversity(layer)``: minus the mean cosine similarity between each image's Gram matrix and
  the others' (Olah et al. 2017), to make several different images of one unit;
- regularizers on the image: ``total_variation``, ``l1``, ``l2``, ``blur`` (subtract them).

``c`` may be a sequence with one channel per image, so one batch renders many channels.

>>> obj = channel("conv_1_1", [0, 1, 2]) - 0.1 * total_variation()
>>> obj.layers
{'conv_1_1'}
>>> obj.batch
3
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from convlens.errors import ConvlensError
from convlens.model.core import Model

Channels = int | Sequence[int]


@dataclass
class Context:
    """What one forward pass left behind: images ``(B, C, H, W)``, activations, output."""

    images: torch.Tensor
    activations: dict[str, torch.Tensor]
    output: torch.Tensor
    model: Model


@dataclass
class Objective:
    """A differentiable score per image: ``fn(ctx) -> (B,)``.

    ``layers`` are the layers it reads, ``batch`` the batch size it implies (``None`` when any
    size works), ``name`` a short description for captions, ``uses_output`` whether it reads
    the model's output (otherwise the forward pass may stop after its deepest layer).
    """

    fn: Callable[[Context], torch.Tensor]
    name: str
    layers: set[str] = field(default_factory=set)
    batch: int | None = None
    checks: list[Callable[[Model], None]] = field(default_factory=list)
    uses_output: bool = False

    def __call__(self, ctx: Context) -> torch.Tensor:
        return self.fn(ctx)

    def validate(self, model: Model) -> None:
        """Raise a clear error when a layer or channel does not exist in ``model``."""
        for layer in self.layers:
            model.graph[layer]  # unknown layer -> NotFoundError listing the known ones
        for check in self.checks:
            check(model)

    # ------------------------------------------------------------ algebra

    def _join(
        self, other: Objective, fn: Callable[[Context], torch.Tensor], name: str
    ) -> Objective:
        if self.batch is not None and other.batch is not None and self.batch != other.batch:
            raise ConvlensError(
                f"cannot combine objectives for {self.batch} and {other.batch} images"
            )
        return Objective(
            fn, name, self.layers | other.layers, self.batch or other.batch,
            self.checks + other.checks, self.uses_output or other.uses_output,
        )  # fmt: skip

    def __add__(self, other: Objective | float) -> Objective:
        o = as_objective(other)
        return self._join(o, lambda c: self(c) + o(c), f"{self.name} + {o.name}")

    def __radd__(self, other: float) -> Objective:
        return self + other

    def __sub__(self, other: Objective | float) -> Objective:
        o = as_objective(other)
        return self._join(o, lambda c: self(c) - o(c), f"{self.name} - {o.name}")

    def __rsub__(self, other: float) -> Objective:
        return as_objective(other) - self

    def __mul__(self, other: Objective | float) -> Objective:
        o = as_objective(other)
        return self._join(o, lambda c: self(c) * o(c), f"{o.name}·{self.name}")

    def __rmul__(self, other: float) -> Objective:
        return self * other

    def __neg__(self) -> Objective:
        return Objective(
            lambda c: -self(c), f"-{self.name}", self.layers, self.batch, self.checks,
            self.uses_output,
        )  # fmt: skip


def as_objective(value: Objective | float) -> Objective:
    if isinstance(value, Objective):
        return value
    v = float(value)
    return Objective(
        lambda c: torch.full((c.images.shape[0],), v, device=c.images.device), f"{v:g}"
    )


# ---------------------------------------------------------------- helpers


def _channel_list(channels: Channels) -> list[int]:
    return [int(channels)] if isinstance(channels, int) else [int(c) for c in channels]


def _per_image(channels: Channels, batch: int, device: torch.device) -> torch.Tensor:
    idx = torch.tensor(_channel_list(channels), device=device)
    if idx.numel() == 1:
        return idx.expand(batch)
    if idx.numel() != batch:
        raise ConvlensError(f"{idx.numel()} channels given for a batch of {batch} images")
    return idx


def _check_channels(layer: str, channels: Channels) -> Callable[[Model], None]:
    def check(model: Model) -> None:
        shape = model.graph[layer].output_shape
        width = shape[0] if shape else 0
        bad = [c for c in _channel_list(channels) if not 0 <= c < width]
        if bad:
            raise ConvlensError(
                f"channel {bad[0]} is out of range for layer {layer!r}, which has {width} "
                f"channels (0..{width - 1})"
            )

    return check


def _pick(act: torch.Tensor, channels: Channels) -> torch.Tensor:
    """``act[b, channels[b]]`` for every image ``b``: ``(B, ...)`` without the channel axis."""
    idx = _per_image(channels, act.shape[0], act.device)
    return act[torch.arange(act.shape[0], device=act.device), idx]


def _batch_of(channels: Channels) -> int | None:
    n = len(_channel_list(channels))
    return n if n > 1 else None


def _spatial_mean(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).mean(dim=1) if t.dim() > 1 else t


# ---------------------------------------------------------------- unit objectives


def channel(layer: str, channels: Channels) -> Objective:
    """Mean activation of a channel over all positions (one channel per image if a list)."""
    return Objective(
        lambda c: _spatial_mean(_pick(c.activations[layer], channels)),
        f"{layer}:{_label(channels)}",
        {layer},
        _batch_of(channels),
        [_check_channels(layer, channels)],
    )


def neuron(layer: str, channels: Channels, y: int | None = None, x: int | None = None) -> Objective:
    """One spatial position of a channel (the centre of the map unless ``y``, ``x`` given)."""

    def fn(c: Context) -> torch.Tensor:
        a = _pick(c.activations[layer], channels)  # (B, H, W) or (B,) for a vector layer
        if a.dim() == 1:
            return a
        yy = a.shape[1] // 2 if y is None else y
        xx = a.shape[2] // 2 if x is None else x
        return a[:, yy, xx]

    def check_pos(model: Model) -> None:
        shape = model.graph[layer].output_shape
        for v, n, axis in ((y, shape[1] if len(shape) == 3 else 1, "y"),
                           (x, shape[2] if len(shape) == 3 else 1, "x")):  # fmt: skip
            if v is not None and not 0 <= v < n:
                raise ConvlensError(f"neuron position {axis}={v} is outside 0..{n - 1}")

    return Objective(
        fn, f"{layer}:{_label(channels)}@({y},{x})", {layer}, _batch_of(channels),
        [_check_channels(layer, channels), check_pos],
    )  # fmt: skip


def layer(name: str) -> Objective:
    """DeepDream: ``mean A²`` over the whole layer, strengthening whatever it already sees."""
    return Objective(lambda c: c.activations[name].pow(2).flatten(1).mean(1), f"{name}²", {name})


def class_logit(classes: Channels) -> Objective:
    """The model's output score of a class (one per image if a list)."""

    def check(model: Model) -> None:
        for k in _channel_list(classes):
            model.class_index(k)

    return Objective(
        lambda c: _pick(c.output, classes), f"logit {_label(classes)}", set(),
        _batch_of(classes), [check], uses_output=True,
    )  # fmt: skip


def class_prob(classes: Channels) -> Objective:
    """The softmax probability of a class (the output itself when the model ends in one)."""
    logit = class_logit(classes)

    def fn(c: Context) -> torch.Tensor:
        probs = c.output if c.model.outputs == "probabilities" else c.output.softmax(dim=1)
        return _pick(probs, classes)

    return Objective(fn, f"p {_label(classes)}", set(), logit.batch, logit.checks, uses_output=True)


def direction(layer: str, vector: torch.Tensor | Sequence[float]) -> Objective:
    """The mean over positions of the activation's projection on ``vector`` (unit length)."""
    v = torch.as_tensor(vector, dtype=torch.float32).flatten()
    if not torch.isfinite(v).all() or float(v.norm()) == 0:
        raise ConvlensError("a direction needs a finite, non-zero vector")
    v = v / v.norm()

    def fn(c: Context) -> torch.Tensor:
        a = c.activations[layer]
        proj = torch.einsum("bc...,c->b...", a, v.to(a))
        return _spatial_mean(proj)

    def check(model: Model) -> None:
        width = model.graph[layer].output_shape[0]
        if v.numel() != width:
            raise ConvlensError(
                f"the direction has {v.numel()} entries but layer {layer!r} has {width} channels"
            )

    return Objective(fn, f"{layer}·v", {layer}, None, [check])


def diversity(layer: str) -> Objective:
    """Minus each image's mean cosine similarity to the others' Gram matrices at ``layer``.

    ``G_b = A_b A_bᵀ`` over positions; the term is ``-mean_{j≠b} cos(G_b, G_j)``, pushing the
    images of a batch to differ in style while each still maximizes its objective.
    """

    def fn(c: Context) -> torch.Tensor:
        a = c.activations[layer]
        b = a.shape[0]
        if b < 2:
            return torch.zeros(b, device=a.device)
        flat = a.flatten(2)  # (B, C, H*W)
        gram = F.normalize(torch.bmm(flat, flat.transpose(1, 2)).flatten(1), dim=1)
        sim = gram @ gram.T  # (B, B)
        off = sim.sum(1) - sim.diagonal()
        return -off / (b - 1)

    return Objective(fn, f"diversity({layer})", {layer})


# ---------------------------------------------------------------- image regularizers


def total_variation(beta: float = 1.0) -> Objective:
    """``mean (|Δx|² + |Δy|²)^(β/2)`` of the image: small for smooth images."""

    def fn(c: Context) -> torch.Tensor:
        return tv_norm(c.images, beta)

    return Objective(fn, "TV")


def tv_norm(x: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    """Total variation per image ``(B,)`` with exponent ``beta`` (Mahendran & Vedaldi 2015)."""
    dx = x[..., :-1, 1:] - x[..., :-1, :-1]
    dy = x[..., 1:, :-1] - x[..., :-1, :-1]
    # The small constant keeps the gradient of the square root finite on flat regions.
    return (dx.pow(2) + dy.pow(2) + 1e-8).pow(beta / 2).flatten(1).mean(1)


def l1(center: float = 0.5) -> Objective:
    """``mean |x - center|``: pulls the image toward flat gray."""
    return Objective(lambda c: (c.images - center).abs().flatten(1).mean(1), "L1")


def l2(center: float = 0.5) -> Objective:
    """``mean (x - center)²``: pulls the image toward flat gray, gently near it."""
    return Objective(lambda c: (c.images - center).pow(2).flatten(1).mean(1), "L2")


def blur(kernel: int = 3) -> Objective:
    """``mean (x - blur(x))²`` with the blurred copy held fixed: penalizes high frequencies."""

    def fn(c: Context) -> torch.Tensor:
        x = c.images
        blurred = F.avg_pool2d(x, kernel, stride=1, padding=kernel // 2, count_include_pad=False)
        return (x - blurred.detach()).pow(2).flatten(1).mean(1)

    return Objective(fn, "blur")


def _label(channels: Channels) -> str:
    ch = _channel_list(channels)
    return str(ch[0]) if len(ch) == 1 else f"{ch[0]}..{ch[-1]}"


__all__ = [
    "Context",
    "Objective",
    "as_objective",
    "blur",
    "channel",
    "class_logit",
    "class_prob",
    "direction",
    "diversity",
    "l1",
    "l2",
    "layer",
    "neuron",
    "total_variation",
    "tv_norm",
]
