"""Capture activations and gradients of named layers.

:func:`capture` is a context manager: inside it, every forward pass of the model stores the
chosen layers' outputs (and, when asked, the gradients that flow back into them). On exit the
hooks are removed and the model's train/eval modes restored, even after an exception.

A hooked layer's output is handed on as a copy, so an in-place operation downstream (a
``ReLU(inplace=True)``, ``x += y``) cannot overwrite what was captured.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from convlens.errors import ConvlensError
from convlens.model.core import Model


@dataclass
class Capture:
    """What a forward (and backward) pass left behind, by layer name.

    ``activations[name]`` is the layer's output tensor, still attached to the autograd graph
    (so ``torch.autograd.grad(score, cap.activations[name])`` works); ``gradients[name]`` is
    filled by a backward pass when ``gradients=True``.
    """

    activations: dict[str, torch.Tensor] = field(default_factory=dict)
    gradients: dict[str, torch.Tensor] = field(default_factory=dict)

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.activations[name]


@contextlib.contextmanager
def preserved_modes(module: nn.Module, *, eval_mode: bool = True) -> Iterator[None]:
    """Put ``module`` in eval mode (if asked) and restore every submodule's mode afterwards."""
    modes = [(m, m.training) for m in module.modules()]
    if eval_mode:
        module.eval()
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


def _module_hook(
    cap: Capture, name: str, call: int, counter: dict[str, int], gradients: bool
) -> Any:
    def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        counter[name] = counter.get(name, 0) + 1
        if counter[name] != call or not isinstance(output, torch.Tensor):
            return None
        cap.activations[name] = output
        if gradients and output.requires_grad:
            output.register_hook(lambda g: cap.gradients.__setitem__(name, g))
        return output.clone()  # downstream in-place ops modify the copy, not what we keep

    return hook


@contextlib.contextmanager
def capture(
    model: Model,
    layers: Sequence[str],
    *,
    gradients: bool = False,
    eval_mode: bool = True,
) -> Iterator[Capture]:
    """Record ``layers`` (names from ``model.graph``) during forward passes inside the block.

    >>> from convlens.model.zoo import build
    >>> m = build("tiny-vgg")
    >>> with capture(m, ["conv_1_1"]) as cap:
    ...     _ = m(torch.rand(2, 3, 64, 64))
    >>> tuple(cap["conv_1_1"].shape)
    (2, 10, 62, 62)
    """
    cap = Capture()
    counter: dict[str, int] = {}
    handles = []
    try:
        for name in layers:
            layer = model.graph[name]
            if layer.module is None:
                raise ConvlensError(
                    f"layer {name!r} is a functional call ({layer.op}) without a module and cannot "
                    "be hooked; choose the module before or after it"
                )
            module = model.net.get_submodule(layer.module)
            handles.append(
                module.register_forward_hook(
                    _module_hook(cap, name, layer.call, counter, gradients)
                )
            )
        handles.append(model.net.register_forward_pre_hook(lambda m, a: counter.clear()))
        with preserved_modes(model, eval_mode=eval_mode):
            yield cap
    finally:
        for h in handles:
            h.remove()


class _NodeRecorder(torch.fx.Interpreter):
    def __init__(self, gm: torch.fx.GraphModule, wanted: dict[str, str]) -> None:
        super().__init__(gm)
        self.wanted = wanted  # node name -> layer name
        self.outputs: dict[str, torch.Tensor] = {}

    def run_node(self, n: torch.fx.Node) -> Any:
        out = super().run_node(n)
        if n.name in self.wanted and isinstance(out, torch.Tensor):
            # Keep a copy and hand on the original: a later in-place op (ReLU(inplace=True))
            # then changes the original, not the record.
            self.outputs[self.wanted[n.name]] = out.clone()
        return out


@torch.inference_mode()
def record_all(model: Model, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Every layer's output for the batch ``x`` (input included), and the model's output.

    Uses the traced graph, so functional layers (``F.relu``, additions) are recorded too; for
    untraceable models it falls back to module hooks.
    """
    model.check_input(x)
    graph = model.graph
    with preserved_modes(model):
        if graph.traced is not None:
            wanted = {lay.node: lay.name for lay in graph if lay.node is not None}
            rec = _NodeRecorder(graph.traced, wanted)
            out = rec.run(model.normalize(x))
            outputs = rec.outputs
        else:
            names = [lay.name for lay in graph if lay.module is not None]
            with capture(model, names) as cap:
                out = model(x)
            outputs = {"input": model.normalize(x), **cap.activations}
    return outputs, out
