"""The render loop: gradient ascent on an image parameterization to maximize an objective.

Activation maximization (Erhan et al., 2009; Olah et al., "Feature Visualization", Distill
2017): starting from noise, repeat

    x = sigmoid(param(θ));   θ ← θ + Adam(∇_θ [ objective(model(T(x))) - Σ λ_r r(x) ])

with ``T`` a fresh random transform per image and step and ``r`` the regularizers (total
variation, L1, L2, blur). The model's parameters are never changed and never get ``.grad``.

>>> from convlens.model.zoo import build
>>> from convlens.featurevis.objectives import channel
>>> m = build("tiny-vgg:in_channels=1,input_size=28", seed=0).eval()
>>> r = render(m, channel("conv_1_1", [0, 1]), steps=4, seed=0)
>>> tuple(r.images.shape)
(2, 1, 28, 28)
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from torch import nn

from convlens.errors import ConvlensError
from convlens.featurevis import objectives as obj
from convlens.featurevis.param import ImageParam, image_param
from convlens.featurevis.transforms import Compose, standard_transforms, strong_transforms
from convlens.io.figure import RichDisplay, grid
from convlens.model.core import Model
from convlens.probe import capture, preserved_modes


@dataclass
class RenderResult(RichDisplay):
    """Images ``(B, C, H, W)`` in ``[0, 1]``, the objective per step ``(steps, B)`` (as seen
    through the random transforms, regularizers included) and the starting images."""

    images: torch.Tensor
    history: torch.Tensor
    objective: str
    labels: list[str]
    start: torch.Tensor

    def figure(self, title: str = "", ncols: int = 5, cell_size: int = 112) -> Image.Image:
        """A labelled grid of the images."""
        return grid(list(self.images), ncols, self.labels, title=title, cell_size=cell_size)

    def _display_figure(self) -> tuple[Image.Image, str]:
        """Notebooks show a render as its labelled grid."""
        text = f"{len(self.images)} image(s) maximizing {self.objective}"
        return self.figure(self.objective), text


# ---------------------------------------------------------------- ReLU gradient override


class RedirectedReLU(torch.autograd.Function):
    """ReLU whose gradient is redirected when it would be zero for a whole image.

    From Lucid: a unit that never fires on the random start gets no gradient through a ReLU, so
    ascent never starts. Where an image's ReLU gradient is all zero, the gradient passes
    through anyway, except where it would push an already negative input lower.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        relu_grad = torch.where(x < 0, torch.zeros_like(grad), grad)
        # The loss is minimized: grad > 0 at x < 0 means "make x even lower", which we drop.
        redirected = torch.where((x < 0) & (grad > 0), torch.zeros_like(grad), grad)
        alive = relu_grad.flatten(1).norm(dim=1) > 0
        alive = alive.view(-1, *([1] * (x.dim() - 1)))
        return torch.where(alive, relu_grad, redirected)


@contextlib.contextmanager
def redirected_relus(model: Model) -> Iterator[int]:
    """Route every ``nn.ReLU`` module of ``model`` through :class:`RedirectedReLU` meanwhile.

    Functional ``F.relu`` calls cannot be reached this way and keep their usual gradient.
    Yields the number of modules redirected.
    """
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    inplace = [m.inplace for m in relus]
    handles = []
    try:
        for m in relus:
            m.inplace = False  # the hook recomputes from the input, which must stay intact
            handles.append(m.register_forward_hook(lambda _m, a, _o: RedirectedReLU.apply(a[0])))
        yield len(relus)
    finally:
        for h in handles:
            h.remove()
        for m, flag in zip(relus, inplace, strict=True):
            m.inplace = flag


# ---------------------------------------------------------------- stopping early


class _StopForwardError(Exception):
    """Raised after the deepest layer an objective reads: the rest of the network is skipped."""


@contextlib.contextmanager
def stop_after(model: Model, objective: obj.Objective) -> Iterator[bool]:
    """Cut every forward pass inside the block short after the objective's deepest layer.

    Only when the objective does not read the output and each of its layers is a module's
    first call (a later call cannot be told apart from the first in a plain hook). Must be
    entered after ``capture`` so that the capture hook runs first. Yields whether it is active.
    """
    layers = [model.graph[name] for name in objective.layers]
    if objective.uses_output or not layers or any(x.module is None or x.call != 1 for x in layers):
        yield False
        return
    deepest = max(layers, key=lambda x: x.index)

    def hook(_m: nn.Module, _a: Any, _o: Any) -> None:
        raise _StopForwardError

    handle = model.layer(deepest.name).register_forward_hook(hook)
    try:
        yield True
    finally:
        handle.remove()


def run_model(model: Model, x: torch.Tensor) -> torch.Tensor | None:
    """``model(x)``, or ``None`` when :func:`stop_after` cut it short."""
    try:
        return model(x)
    except _StopForwardError:
        return None


# ---------------------------------------------------------------- the loop


def _transforms(spec: Compose | str | None, size: int) -> Compose | None:
    if spec is None or spec == "none":
        return None
    if spec == "standard":
        return standard_transforms(size)
    if spec == "strong":
        return strong_transforms(size)
    if isinstance(spec, Compose):
        return spec
    raise ConvlensError(
        f"unknown transforms {spec!r}; accepted: 'standard', 'strong', 'none' or a Compose"
    )


def _regularized(
    objective: obj.Objective, tv: float, l1: float, l2: float, blur: float, background: float
) -> obj.Objective:
    terms = (
        (tv, obj.total_variation()), (l1, obj.l1(background)), (l2, obj.l2(background)),
        (blur, obj.blur()),
    )  # fmt: skip
    for weight, term in terms:
        if weight < 0:
            raise ConvlensError(f"regularizer weights must be >= 0; got {weight}")
        if weight:
            objective = objective - weight * term
    return objective


def forward_context(model: Model, objective: obj.Objective, images: torch.Tensor) -> obj.Context:
    """Run ``model`` on ``images`` and collect what ``objective`` reads (inside ``capture``)."""
    with capture(model, sorted(objective.layers)) as cap:
        out = model(images)
    return obj.Context(images, dict(cap.activations), out, model)


@torch.no_grad()
def evaluate(model: Model, objective: obj.Objective, images: torch.Tensor) -> torch.Tensor:
    """The objective ``(B,)`` on ``images`` as they are (no transforms, no regularizers)."""
    objective.validate(model)
    with preserved_modes(model):
        return objective(forward_context(model, objective, images)).detach()


def _batch_size(objective: obj.Objective, batch: int | None) -> int:
    if batch is not None and objective.batch is not None and batch != objective.batch:
        raise ConvlensError(
            f"the objective is for {objective.batch} images but batch={batch} was asked"
        )
    n = batch or objective.batch or 1
    if n < 1:
        raise ConvlensError(f"batch must be at least 1; got {n}")
    return n


def _progress(steps: int, enabled: bool | None, desc: str) -> Any:
    if enabled is None:
        enabled = steps >= 200 and sys.stderr.isatty()
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=steps, desc=desc, unit="step", leave=False)


def render(
    model: Model,
    objective: obj.Objective,
    *,
    batch: int | None = None,
    steps: int = 256,
    lr: float = 0.05,
    param: str | ImageParam = "fourier",
    decorrelate: bool = True,
    decay: float = 1.0,
    transforms: Compose | str | None = "standard",
    size: tuple[int, int] | None = None,
    tv: float = 0.0,
    l1: float = 0.0,
    l2: float = 0.0,
    blur: float = 0.0,
    background: float = 0.5,
    relu_override: bool = False,
    seed: int | None = 0,
    progress: bool | None = None,
    labels: Sequence[str] | None = None,
) -> RenderResult:
    """Maximize ``objective`` over images; returns the images and the objective's history.

    ``param`` is ``"fourier"`` (default; ``decay`` > 1 favours smoother images), ``"pixel"`` or
    a ready :class:`ImageParam`; ``size``
    is ``(H, W)``, the model's input size unless given (only fully convolutional models take
    others). ``l1`` and ``l2`` pull pixels toward ``background`` (0.5 gray; 0 suits data sets
    on black, such as Fashion-MNIST). ``seed`` fixes the start and every random transform, so
    a render repeats exactly.

    >>> from convlens.model.zoo import build
    >>> m = build("tiny-vgg:input_size=32", seed=0).eval()
    >>> r = render(m, obj.channel("conv_2_2", [0, 1, 2]), steps=2, tv=0.1)
    >>> r.history.shape
    torch.Size([2, 3])
    """
    if steps < 1:
        raise ConvlensError(f"steps must be at least 1; got {steps}")
    if lr <= 0:
        raise ConvlensError(f"the learning rate must be positive; got {lr}")
    objective.validate(model)
    n = _batch_size(objective, batch)
    h, w = size or (model.spec.height, model.spec.width)
    gen = torch.Generator().manual_seed(seed if seed is not None else int(torch.seed() % 2**63))
    p = (
        param
        if isinstance(param, ImageParam)
        else image_param(
            (n, model.spec.channels, h, w), param, decorrelate=decorrelate, decay_power=decay,
            seed=int(torch.randint(2**62, (1,), generator=gen)),
        )
    )  # fmt: skip
    if p.shape[0] != n:
        raise ConvlensError(f"the parameterization makes {p.shape[0]} images, the objective {n}")
    chain = _transforms(transforms, min(h, w))
    loss_of = _regularized(objective, tv, l1, l2, blur, background)
    optimizer = torch.optim.Adam(p.parameters(), lr=lr)
    history = torch.empty(steps, n)
    with torch.no_grad():
        start = p().detach().clone()
    bar = _progress(steps, progress, objective.name)
    redirect = redirected_relus(model) if relu_override else contextlib.nullcontext()
    with redirect, capture(model, sorted(loss_of.layers)) as cap, stop_after(model, loss_of):
        for step in range(steps):
            x = p()
            seen = chain(x, gen) if chain is not None else x
            out = run_model(model, seen)
            skipped = torch.empty(0)  # the objective does not read the output
            ctx = obj.Context(x, dict(cap.activations), skipped if out is None else out, model)
            values = loss_of(ctx)
            history[step] = values.detach()
            # autograd.grad (not backward) so the model's parameters never receive .grad.
            grads = torch.autograd.grad(-values.sum(), p.parameters())
            optimizer.zero_grad(set_to_none=True)
            for t, g in zip(p.parameters(), grads, strict=True):
                t.grad = g
            optimizer.step()
            if bar is not None:
                bar.update(1)
                bar.set_postfix(objective=f"{float(values.mean()):.3g}")
    if bar is not None:
        bar.close()
    with torch.no_grad():
        images = p().detach().clamp(0, 1)
    names = list(labels or [str(i) for i in range(n)])
    return RenderResult(images, history, objective.name, names, start)


def parse_channels(text: str, width: int | None = None) -> list[int]:
    """``"0-9"``, ``"3"``, ``"1,4,7"``, ``"0-3,8"`` or ``"all"`` as a list of channel indices."""
    if text.strip() == "all":
        if width is None:
            raise ConvlensError("'all' channels needs the layer's width")
        return list(range(width))
    out: list[int] = []
    for part in filter(None, (s.strip() for s in text.split(","))):
        lo, dash, hi = part.partition("-")
        try:
            a, b = int(lo), int(hi) if dash else int(lo)
        except ValueError:
            raise ConvlensError(
                f"bad channel list {text!r}; accepted: 'all', '3', '0-9', '1,4,7' or '0-3,8'"
            ) from None
        if b < a:
            raise ConvlensError(f"bad channel range {part!r}: the end is below the start")
        out.extend(range(a, b + 1))
    if not out:
        raise ConvlensError("no channels given")
    return out


def render_channels(
    model: Model,
    layer: str,
    channels: Sequence[int],
    *,
    kind: str = "channel",
    chunk: int = 16,
    copies: int = 1,
    diversity: float = 0.0,
    **kwargs: Any,
) -> RenderResult:
    """Render each of ``channels`` of ``layer`` (``kind`` "channel" or "neuron"), ``chunk``
    images per batch; a layer that is the model's output renders class logits.

    With ``copies`` > 1 each channel gets that many images in one batch, pushed apart by
    ``diversity`` times the :func:`~convlens.featurevis.objectives.diversity` term.
    """
    if kind not in ("channel", "neuron"):
        raise ConvlensError(f"unknown unit kind {kind!r}; accepted: channel, neuron")
    if chunk < 1 or copies < 1:
        raise ConvlensError(f"chunk and copies must be at least 1; got {chunk} and {copies}")
    if diversity < 0:
        raise ConvlensError(f"the diversity weight must be >= 0; got {diversity}")
    groups = (
        [[c] * copies for c in channels]
        if copies > 1
        else [list(channels[i : i + chunk]) for i in range(0, len(channels), chunk)]
    )
    parts: list[RenderResult] = []
    for part in groups:
        o = (obj.channel if kind == "channel" else obj.neuron)(layer, part)
        if diversity:
            o = o + diversity * obj.diversity(layer)
        o.batch = len(part)
        parts.append(render(model, o, **kwargs))
    lay = model.graph[layer]
    names = model.classes if lay is model.graph.output else None
    labels = [names[c] if names else f"{layer}:{c}" for c in channels]
    if copies > 1:
        labels = [f"{lab} #{k}" for lab in labels for k in range(copies)]
    return RenderResult(
        torch.cat([r.images for r in parts]),
        torch.cat([r.history for r in parts], dim=1),
        f"{layer} {kind}s",
        labels,
        torch.cat([r.start for r in parts]),
    )


__all__ = [
    "RedirectedReLU",
    "RenderResult",
    "evaluate",
    "forward_context",
    "parse_channels",
    "redirected_relus",
    "render",
    "render_channels",
]
