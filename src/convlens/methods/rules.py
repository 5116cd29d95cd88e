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


# Piecewise-linear activations whose derivative is an indicator ``lo < x < hi`` (``hi`` None:
# unbounded): ``relu`` (0, ∞), ``relu6`` (0, 6), ``hardtanh`` (min_val, max_val). Their output
# ``y`` lies strictly inside the interval exactly where ``x`` does, so the guided rule needs
# only ``x`` or ``y`` (kept by reference, no copy) and one fused masking op, the one autograd's
# own backward uses (strict inequalities, as there), instead of a second pass through ``f``
# and its backward.
Bounds = tuple[float, float | None]


def _bounds(func: Any, arguments: dict[str, Any]) -> Bounds | None:
    """The interval where ``func``'s derivative is 1 (0 elsewhere), if it is such a function."""
    if func in _PLAIN_RELU:
        return (0.0, None)
    if func is F.relu6:
        return (0.0, 6.0)
    if func is F.hardtanh:
        return (float(arguments.get("min_val", -1.0)), float(arguments.get("max_val", 1.0)))
    return None


def _masked(g: torch.Tensor, y: torch.Tensor, bounds: Bounds) -> torch.Tensor:
    """``g`` where ``lo < y < hi``, 0 elsewhere, in one pass (``y``: the input or the output)."""
    lo, hi = bounds
    if hi is None:
        return torch.ops.aten.threshold_backward(g, y, lo)
    return torch.ops.aten.hardtanh_backward(g, y, lo, hi)


# Autograd names a custom function's nodes after its class: both rule functions' backward nodes
# start with this (``rule_between`` in cam.py looks for them in the graph).
RULE_NODE_PREFIX = "_RuleFunction"


class _RuleFunction(torch.autograd.Function):
    """``y = f(x)`` forward; the guided or deconvnet rule backward."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        fn: Callable[[torch.Tensor], torch.Tensor],
        rule: Rule,
        bounds: Bounds | None,
    ) -> torch.Tensor:
        ctx.fn, ctx.rule, ctx.bounds = fn, rule, bounds
        y = fn(x)
        if rule == "guided":
            # What autograd's own backward of f would keep: the output for relu, the input for
            # hardtanh (either gives the same mask), x for the others; so a caller's later
            # in-place write trips the same version check as without the rule.
            keep_y = bounds is not None and bounds[1] is None
            ctx.save_for_backward(y if keep_y else x.detach() if bounds is None else x)
        return y

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None]:
        positive = g.clamp(min=0)
        if ctx.rule == "deconvnet":
            return positive, None, None, None
        (saved,) = ctx.saved_tensors
        if ctx.bounds is not None:  # f' is [lo < y < hi]: max(f' · max(g, 0), 0) is that mask
            return _masked(positive, saved, ctx.bounds), None, None, None
        with torch.enable_grad():  # f'(x) · max(g, 0) through f's own backward
            xx = saved.detach().requires_grad_(True)
            (local,) = torch.autograd.grad(ctx.fn(xx), xx, positive)
        return local.clamp(min=0), None, None, None


class _RuleFunctionInPlace(torch.autograd.Function):
    """The guided rule for an in-place call of a masked activation (``nn.ReLU6(inplace=True)``
    in MobileNetV2): ``x`` is overwritten in place and marked dirty, which saves the clone of
    ``x`` and the copy back that the out-of-place route costs; the result is saved, as
    autograd's own in-place ``relu_``/``hardtanh_`` do."""

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, fn_: Callable[[torch.Tensor], torch.Tensor], bounds: Bounds
    ) -> torch.Tensor:
        ctx.bounds = bounds
        fn_(x)
        ctx.mark_dirty(x)
        ctx.save_for_backward(x)
        return x

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (y,) = ctx.saved_tensors
        return _masked(g.clamp(min=0), y, ctx.bounds), None, None


def _out_of_place(
    func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[Any, bool, Bounds | None]:
    """The call as an out-of-place function of its first argument, whether it was in place,
    and its derivative's interval when it is an indicator (:func:`_bounds`)."""
    target = _RELU_LIKE[func]
    if func in _IN_PLACE:
        return target, True, _bounds(func, {})
    try:
        bound = inspect.signature(func).bind(*args, **kwargs)
    except (TypeError, ValueError):  # builtins without a signature (gelu): no inplace argument
        return partial(target, *args[1:], **kwargs), False, _bounds(func, kwargs)
    in_place = bool(bound.arguments.pop("inplace", False))
    rest = dict(bound.arguments)
    first = next(iter(rest))
    rest.pop(first)
    return partial(target, **rest), in_place, _bounds(func, rest)


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
        fn, in_place, bounds = _out_of_place(func, args, kwargs)
        module = self.where()
        self.changed[module or f"{getattr(func, '__name__', func)} (functional)"] += 1
        if not x.requires_grad:
            return func(*args, **kwargs)
        if in_place and bounds is not None and self.rule == "guided" and _may_write(x):
            call = partial(_in_place_call, func, args, kwargs)
            return _RuleFunctionInPlace.apply(x, call, bounds)
        if self.rule == "deconvnet":
            bounds = None  # deconvnet's rule ignores the forward values: nothing to save
        y = _RuleFunction.apply(x.clone() if in_place else x, fn, self.rule, bounds)
        if in_place:
            return x.copy_(y)  # keep the caller's in-place semantics on the forward values
        return y


def _may_write(x: torch.Tensor) -> bool:
    """Whether autograd lets a custom function overwrite ``x``: not a leaf, not a view."""
    return x.grad_fn is not None and not x._is_view()


def _in_place_call(
    func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], x: torch.Tensor
) -> torch.Tensor:
    """The caller's own in-place call (``relu_``, ``hardtanh(..., inplace=True)``) on ``x``."""
    return func(x, *args[1:], **kwargs)


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
