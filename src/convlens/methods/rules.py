"""Modified backward rules for ReLU-like activations: guided backpropagation and deconvnet.

Both methods keep the forward pass and change only how a gradient passes an activation
``y = f(x)`` on its way back (``g`` is the gradient arriving at ``y``):

- deconvnet (Zeiler & Fergus, ECCV 2014): ``R = max(g, 0)``, the reconstruction ignores
  which units were active in the forward pass;
- guided backpropagation (Springenberg et al., ICLR 2015 workshop):
  ``R = max(f'(x) · max(g, 0), 0)``, i.e. ``R = [x > 0] · max(g, 0)`` for a ReLU.

The rule has to reach every ReLU, also the functional ones (``F.relu``, ``x.relu()``) that
have no module: a :class:`torch.overrides.TorchFunctionMode` swaps each ReLU-like call for a
custom autograd function for the duration of the forward pass. Module activations
(``nn.ReLU``, ``nn.ReLU6``, ``nn.LeakyReLU``, ``nn.GELU``, ``nn.SiLU``, ...) call the same
functions, so they are caught too; in-place calls keep their in-place effect on the forward
values. No module backward hooks are used.
"""

from __future__ import annotations

import contextlib
import inspect
from collections import Counter
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from convlens.model.core import Model

Rule = Literal["guided", "deconvnet"]

# Functions computing a ReLU-like activation; value: the out-of-place function to call.
_RELU_LIKE: dict[Any, Callable[..., torch.Tensor]] = {
    F.relu: F.relu, torch.relu: torch.relu, torch.relu_: torch.relu,
    torch.Tensor.relu: torch.relu, torch.Tensor.relu_: torch.relu,
    F.relu6: F.relu6, F.hardtanh: F.hardtanh, F.leaky_relu: F.leaky_relu, F.elu: F.elu,
    F.celu: F.celu, F.selu: F.selu, F.gelu: F.gelu, F.silu: F.silu, F.mish: F.mish,
    F.hardswish: F.hardswish, F.softplus: F.softplus,
}  # fmt: skip
_IN_PLACE = frozenset({torch.relu_, torch.Tensor.relu_})
_PLAIN_RELU = frozenset({F.relu, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_})
_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.CELU, nn.SELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Hardswish, nn.Hardtanh, nn.Softplus,
)  # fmt: skip


class _RuleFunction(torch.autograd.Function):
    """``y = f(x)`` forward; the guided or deconvnet rule backward."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        fn: Callable[[torch.Tensor], torch.Tensor],
        rule: Rule,
        relu: bool,
    ) -> torch.Tensor:
        ctx.fn, ctx.rule, ctx.relu = fn, rule, relu
        if rule == "guided":
            ctx.save_for_backward(x > 0 if relu else x.detach())
        return fn(x)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None]:
        positive = g.clamp(min=0)
        if ctx.rule == "deconvnet":
            return positive, None, None, None
        (saved,) = ctx.saved_tensors
        if ctx.relu:  # saved is the mask x > 0
            return positive * saved, None, None, None
        with torch.enable_grad():  # f'(x) · max(g, 0) through f's own backward
            xx = saved.detach().requires_grad_(True)
            (local,) = torch.autograd.grad(ctx.fn(xx), xx, positive)
        return local.clamp(min=0), None, None, None


def _out_of_place(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, bool]:
    """The call as an out-of-place function of its first argument, and whether it was
    in place."""
    target = _RELU_LIKE[func]
    if func in _IN_PLACE:
        return target, True
    try:
        bound = inspect.signature(func).bind(*args, **kwargs)
    except (TypeError, ValueError):  # builtins without a signature (gelu): no inplace argument
        return partial(target, *args[1:], **kwargs), False
    in_place = bool(bound.arguments.pop("inplace", False))
    rest = dict(bound.arguments)
    first = next(iter(rest))
    rest.pop(first)
    return partial(target, **rest), in_place


class _RuleMode(TorchFunctionMode):
    def __init__(self, rule: Rule, where: Callable[[], str | None]) -> None:
        super().__init__()
        self.rule: Rule = rule
        self.where = where
        self.changed: Counter[str] = Counter()

    def __torch_function__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        if func not in _RELU_LIKE or not args or not isinstance(args[0], torch.Tensor):
            return func(*args, **kwargs)
        x = args[0]
        fn, in_place = _out_of_place(func, args, kwargs)
        module = self.where()
        self.changed[module or f"{getattr(func, '__name__', func)} (functional)"] += 1
        if not x.requires_grad:
            return func(*args, **kwargs)
        y = _RuleFunction.apply(x.clone() if in_place else x, fn, self.rule, func in _PLAIN_RELU)
        if in_place:
            return x.copy_(y)  # keep the caller's in-place semantics on the forward values
        return y


@contextlib.contextmanager
def backward_rule(model: Model, rule: Rule) -> Iterator[Counter[str]]:
    """Inside the block, forward passes of ``model`` use ``rule`` for ReLU-like activations.

    Yields a counter of what was changed: module names (``relu_1_1``) or functional calls
    (``relu (functional)``), with the number of calls.
    """
    stack: list[str] = []  # the activation module being run, so calls can be named

    def leave(module: nn.Module, args: Any, output: Any) -> None:
        stack.pop()

    names = {m: n for n, m in model.net.named_modules() if isinstance(m, _MODULES)}
    handles = []
    for module, name in names.items():
        handles.append(module.register_forward_pre_hook(lambda m, a, n=name: stack.append(n)))
        handles.append(module.register_forward_hook(leave))
    mode = _RuleMode(rule, lambda: stack[-1] if stack else None)
    try:
        with mode:
            yield mode.changed
    finally:
        for h in handles:
            h.remove()


def describe_changes(rule: Rule, changed: Counter[str], model: Model) -> list[str]:
    """Notes for the :class:`Attribution`: which activations got the rule, which did not."""
    if not changed:
        notes = [f"no ReLU-like activation was found; {rule} equals the plain gradient here"]
    else:
        listed = ", ".join(f"{k} ×{v}" if v > 1 else k for k, v in changed.items())
        notes = [f"{rule} rule applied to: {listed}"]
    others = sorted(
        lay.name
        for lay in model.graph
        if lay.kind == "activation"
        and lay.name not in changed
        and lay.module is not None
        and not isinstance(model.net.get_submodule(lay.module), _MODULES)
    )
    if others:
        notes.append(f"left unchanged (not ReLU-like): {', '.join(others)}")
    return notes
