"""Incremental inference for occlusion on any layer graph (Krypton: Nakandala, Kumar &
Papakonstantinou, "Incremental and Approximate Inference for Faster Occlusion-based Deep CNN
Explanations", SIGMOD 2019).

An occluding patch changes only the activations inside its cone. The network is traced with
``torch.fx`` and every node's output on the unoccluded images is computed once (the *base*).
For a chunk of ``n`` patch positions each node's occluded output is then kept as a
:class:`Region`: the base plus, per position, a rectangle ``box`` where it differs and a
computed ``patch`` around it. Each kind of node maps regions to regions:

- sliding windows (conv with any stride, padding, dilation and groups; max and average pools,
  ``ceil_mode`` and ``count_include_pad`` included): with kernel span ``k_e = d (k − 1) + 1``,
  stride ``s`` and leading padding ``p``, input rows ``[a, b)`` change output rows
  ``[⌊(a + p − k_e) / s⌋ + 1, ⌈(b + p) / s⌉)`` (clipped to the map). That output region is
  recomputed from the padded base input with the changed input pasted in;
- element-wise nodes (activations, batch norm and dropout in eval mode, per-channel affine
  maps, add/sub/mul/div by constants) map the patch;
- position-aligned merges (residual ``add``/``mul`` of two branches, channel ``cat``): the
  changed box is the union of the inputs' boxes; each input is read on that region (base with
  its own change pasted in) and the op runs there;
- constant padding shifts the region.

All positions of a chunk share one region size per node (the largest, shifted inside the map
at the borders), so every node runs as one batched op over the chunk. Any other node (global
pooling, flatten, linear, reshapes, anything unknown) gets its inputs made whole (base with
each position's change pasted in) and runs as in the model; past such a node the chunk is
computed in full. The result equals full forward passes to float rounding.

Two savings that keep the result: an eval-mode batch norm that is the only reader of a
zero-padded convolution's output is folded into the engine's private copy of that
convolution's weights and bias (one pass less over every region; the model is untouched), and
a ReLU whose input no other node reads runs in place on a patch the engine made.

A model is refused (full passes instead) when it cannot be traced or when an in-place op
writes a tensor that another node also reads (the base could no longer be trusted).

Approximate mode (``tau < 1``): Krypton's projective-field thresholding caps each changed box
at ``⌈τ · size⌉`` rows and columns of the node's output map, centred on the patch's projected
centre (``c' = (c + p − (k_e − 1)/2) / s`` through windows); outside the cap the base is used.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from convlens.model.core import Model

Pair = tuple[int, int]
Box = tuple[int, int, int, int]  # top, left, bottom, right (exclusive); empty if bottom <= top
Center = tuple[float, float]

_ELEMENTWISE_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.CELU, nn.SELU, nn.GELU, nn.SiLU,
    nn.Mish, nn.Tanh, nn.Sigmoid, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus,
    nn.Identity,
)  # fmt: skip
_EVAL_ONLY_MODULES: tuple[type[nn.Module], ...] = (
    nn.Dropout, nn.Dropout2d, nn.AlphaDropout, nn.FeatureAlphaDropout,
)  # fmt: skip
# Functions whose output at a position depends only on their inputs at that position.
_POINTWISE_FUNCTIONS: frozenset[Any] = frozenset({
    F.relu, torch.relu, torch.relu_, F.relu6, F.leaky_relu, F.gelu, F.silu, F.elu, F.celu,
    F.selu, F.mish, F.hardswish, F.hardsigmoid, F.hardtanh, F.softplus, torch.sigmoid,
    torch.tanh, F.sigmoid, F.tanh, torch.clamp, torch.clip, torch.abs, torch.exp, torch.neg,
    operator.add, operator.sub, operator.mul, operator.truediv, operator.neg,
    operator.iadd, operator.isub, operator.imul, operator.itruediv,
    torch.add, torch.sub, torch.mul, torch.div, torch.maximum, torch.minimum,
})  # fmt: skip
_POINTWISE_METHODS = frozenset({
    "relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "clamp", "clamp_", "clamp_min",
    "clamp_min_", "clamp_max", "clip", "abs", "neg", "exp", "add", "add_", "sub", "sub_", "mul",
    "mul_", "div", "div_", "contiguous", "clone",
})  # fmt: skip
_IN_PLACE_FUNCTIONS = frozenset({
    torch.relu_, operator.iadd, operator.isub, operator.imul, operator.itruediv,
})  # fmt: skip
# Ops that return their input (or a view of it): an in-place op after them writes the input.
_ALIAS_MODULES: tuple[type[nn.Module], ...] = (nn.Identity, nn.Dropout, nn.Dropout2d, nn.Flatten)
_ALIAS_METHODS = frozenset({"contiguous", "view", "reshape", "flatten", "squeeze", "unsqueeze"})


def _is_cat(target: Any) -> bool:
    """``torch.cat`` or the converters' ``_cat(*xs, dim)`` wrappers around it."""
    if target in (torch.cat, torch.concat):
        return True
    module = getattr(target, "__module__", "") or ""
    return module.startswith("convlens.model.formats") and getattr(target, "__name__", "") in (
        "_cat",
        "_concat",
    )


def _affine_is_per_channel(module: nn.Module) -> bool:
    """The Keras converter's ``Affine`` (``x · scale + offset``) with per-channel buffers."""
    from convlens.model.formats.keras_layers import Affine

    if not isinstance(module, Affine):
        return False
    return all(t.dim() < 2 or tuple(t.shape[-2:]) == (1, 1) for t in (module.scale, module.offset))


def _module_kind(module: nn.Module) -> str:
    """``window``, ``pointwise``, ``pad`` or ``dense`` for a called module."""
    if isinstance(module, nn.Conv2d):
        return "window" if module.padding_mode == "zeros" else "dense"
    if isinstance(module, nn.MaxPool2d):
        return "dense" if module.return_indices else "window"
    if isinstance(module, nn.AvgPool2d):
        return "window"
    if isinstance(module, nn.ZeroPad2d | nn.ConstantPad2d):
        return "pad" if min(_pads4(module.padding)) >= 0 else "dense"
    if isinstance(module, _ELEMENTWISE_MODULES):
        return "pointwise"
    if isinstance(module, _EVAL_ONLY_MODULES):
        return "dense" if module.training else "pointwise"
    if isinstance(module, nn.BatchNorm2d):
        eval_stats = not module.training and module.running_mean is not None
        return "pointwise" if eval_stats else "dense"
    if _affine_is_per_channel(module):
        return "pointwise"
    return "dense"


def _pads4(padding: Any) -> tuple[int, int, int, int]:
    """``nn.ZeroPad2d``-style padding as ``(left, right, top, bottom)``."""
    if isinstance(padding, int):
        return (padding,) * 4
    return tuple(int(v) for v in padding)  # type: ignore[return-value]


@dataclass
class IncrementalPlan:
    """The traced network and each node's kind, or why the network is refused."""

    gm: torch.fx.GraphModule | None
    kinds: dict[str, str]
    reason: str | None = None


def incremental_plan(model: Model) -> IncrementalPlan:
    """Classify every node of the traced network; ``reason`` says why it was refused."""
    gm = model.graph.traced
    if gm is None:
        return IncrementalPlan(None, {}, "the network cannot be traced by torch.fx")
    kinds: dict[str, str] = {}
    modules = dict(gm.named_modules())
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        return IncrementalPlan(None, {}, "the traced network has more than one input")
    for node in gm.graph.nodes:
        kinds[node.name] = _node_kind(node, modules)
    reason = _aliasing_problem(gm, modules)
    if reason is not None:
        return IncrementalPlan(None, {}, reason)
    if not any(k == "window" for k in kinds.values()):
        return IncrementalPlan(None, {}, "the network has no convolution or pooling to skip")
    return IncrementalPlan(gm, kinds)


def _node_kind(node: torch.fx.Node, modules: dict[str, nn.Module]) -> str:
    if node.op in ("placeholder", "get_attr", "output"):
        return node.op
    if node.op == "call_module":
        return _module_kind(modules[str(node.target)])
    if node.op == "call_function":
        if node.target in _POINTWISE_FUNCTIONS:
            return "pointwise"
        if _is_cat(node.target):
            return "cat"
        if node.target is getattr and node.args[1:] == ("shape",):
            return "shape"
        return "dense"
    if node.op == "call_method":
        if node.target in _POINTWISE_METHODS:
            return "pointwise"
        if node.target in ("size", "dim"):
            return "shape"
    return "dense"


def _writes_in_place(node: torch.fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return bool(getattr(modules[str(node.target)], "inplace", False))
    if node.op == "call_function":
        return node.target in _IN_PLACE_FUNCTIONS or bool(node.kwargs.get("inplace", False))
    if node.op == "call_method":
        return str(node.target).endswith("_")
    return False


def _aliases(node: torch.fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules[str(node.target)], _ALIAS_MODULES)
    return node.op == "call_method" and node.target in _ALIAS_METHODS


def _aliasing_problem(gm: torch.fx.GraphModule, modules: dict[str, nn.Module]) -> str | None:
    """An in-place write to a tensor that some other node reads: the per-node base values
    (copied when computed) and the regions would then disagree about what it holds."""
    for node in gm.graph.nodes:
        if not _writes_in_place(node, modules) or not node.args:
            continue
        written = node.args[0]
        if not isinstance(written, torch.fx.Node):
            continue
        root = written
        while _aliases(root, modules) and isinstance(root.args[0], torch.fx.Node):
            root = root.args[0]
        # every node sharing the written storage, and who reads them besides the chain
        readers = 0
        stack = [root]
        while stack:
            cur = stack.pop()
            for user in cur.users:
                if _aliases(user, modules):
                    stack.append(user)
                elif user is not node:
                    readers += 1
        if readers:
            return f"{node.name} writes in place a tensor that another layer reads"
    return None


def _batch_norm_folds(
    nodes: list[torch.fx.Node], modules: dict[str, nn.Module]
) -> dict[str, torch.fx.Node]:
    """Convolution node name -> the batch norm node that folds into it: an eval-mode
    ``BatchNorm2d`` (running statistics) whose input is a zero-padded ``Conv2d`` read by
    nothing else, both called as modules with one argument."""
    folds: dict[str, torch.fx.Node] = {}
    for node in nodes:
        if node.op != "call_module" or len(node.args) != 1 or node.kwargs:
            continue
        bn = modules[str(node.target)]
        conv = node.args[0]
        if not isinstance(bn, nn.BatchNorm2d) or _module_kind(bn) != "pointwise":
            continue
        if not isinstance(conv, torch.fx.Node) or conv.op != "call_module":
            continue
        if len(conv.users) != 1 or len(conv.args) != 1 or conv.kwargs:
            continue
        m = modules[str(conv.target)]
        window = isinstance(m, nn.Conv2d) and _module_kind(m) == "window"
        if window and m.out_channels == bn.num_features:
            folds[conv.name] = node
    return folds


# --------------------------------------------------------------------------- windows


@dataclass(frozen=True)
class Window:
    """A sliding window op on a map of ``size`` (rows, columns): ``pad`` is
    ``(top, bottom, left, right)``, bottom and right extended so that every output's window
    lies inside the padded map (``ceil_mode``) or cut to what the outputs read."""

    kernel: Pair
    stride: Pair
    dilation: Pair
    pad: tuple[int, int, int, int]
    pad_value: float
    out: Pair

    def span(self, ax: int) -> int:
        return self.dilation[ax] * (self.kernel[ax] - 1) + 1

    def before(self, ax: int) -> int:
        return self.pad[0] if ax == 0 else self.pad[2]

    def cone(self, box: Box) -> Box:
        """The output rows and columns that a change in input ``box`` reaches."""
        if box[2] <= box[0] or box[3] <= box[1]:
            return (0, 0, 0, 0)
        lo, hi = [], []
        for ax in (0, 1):
            a, b = box[ax], box[ax + 2]
            k, s, p = self.span(ax), self.stride[ax], self.before(ax)
            lo.append(max(0, (a + p - k) // s + 1))
            hi.append(min(self.out[ax], -(-(b + p) // s)))
        return (lo[0], lo[1], max(lo[0], hi[0]), max(lo[1], hi[1]))

    def center(self, c: Center) -> Center:
        """A position's projected centre in the output."""
        return tuple(  # type: ignore[return-value]
            (c[ax] + self.before(ax) - (self.span(ax) - 1) / 2) / self.stride[ax] for ax in (0, 1)
        )


def _pair(v: Any) -> Pair:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[-1]))


def _pool_out(n: int, k: int, s: int, p: int, d: int, ceil: bool) -> int:
    """PyTorch's pooling output size (a ceil-mode window must start inside the input)."""
    span = d * (k - 1) + 1
    num = n + 2 * p - span
    out = (-(-num // s) if ceil else num // s) + 1
    if ceil and (out - 1) * s >= n + p:
        out -= 1
    return out


def _make_window(
    kernel: Pair, stride: Pair, dilation: Pair, before: Pair, out: Pair, size: Pair, value: float
) -> Window:
    pads = []
    for ax in (0, 1):
        need = (out[ax] - 1) * stride[ax] + dilation[ax] * (kernel[ax] - 1) + 1
        pads += [before[ax], max(0, need - size[ax] - before[ax])]
    return Window(kernel, stride, dilation, (pads[0], pads[1], pads[2], pads[3]), value, out)


@dataclass
class WindowOp:
    """How to recompute a window node on a padded region: ``apply`` (padding 0), then divide
    by ``divisor`` (an average pool's per-output window count) when it is set."""

    window: Window
    apply: Callable[[torch.Tensor], torch.Tensor]
    divisor: torch.Tensor | None = None
    whole: Callable[[torch.Tensor], torch.Tensor] | None = None  # the layer on whole maps


def _fold_batch_norm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights and bias of ``bn(conv(x))`` as one convolution (eval mode, running statistics):
    ``w · γ/√(σ² + ε)`` and ``(b − μ) · γ/√(σ² + ε) + β``, computed in float64 and rounded once."""
    assert bn.running_mean is not None and bn.running_var is not None
    dtype = conv.weight.dtype
    w = conv.weight.detach().double()
    var, mean = bn.running_var.detach().double(), bn.running_mean.detach().double()
    scale = torch.rsqrt(var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.detach().double()
    b = conv.bias.detach().double() if conv.bias is not None else torch.zeros_like(mean)
    shift = (b - mean) * scale
    if bn.bias is not None:
        shift = shift + bn.bias.detach().double()
    return (w * scale.view(-1, 1, 1, 1)).to(dtype), shift.to(dtype)


def _conv_op(
    m: nn.Conv2d,
    size: Pair,
    channels_last: bool = False,
    bn: nn.BatchNorm2d | None = None,
) -> WindowOp:
    k, s, d = _pair(m.kernel_size), _pair(m.stride), _pair(m.dilation)
    if isinstance(m.padding, str):  # "valid" or "same" (F.conv2d puts the odd row last)
        total = [0, 0] if m.padding == "valid" else [d[ax] * (k[ax] - 1) for ax in (0, 1)]
        before = (total[0] // 2, total[1] // 2)
        full = (size[0] + total[0], size[1] + total[1])
    else:
        before = _pair(m.padding)
        full = (size[0] + 2 * before[0], size[1] + 2 * before[1])
    out = tuple((full[ax] - d[ax] * (k[ax] - 1) - 1) // s[ax] + 1 for ax in (0, 1))
    win = _make_window(k, s, d, before, (out[0], out[1]), size, 0.0)
    w, b, g, pad = m.weight, m.bias, m.groups, m.padding
    if bn is not None:  # a private copy with the batch norm folded in
        w, b = _fold_batch_norm(m, bn)
    if channels_last:  # a private NHWC copy: the model's own weights stay as they are
        w = w.detach().contiguous(memory_format=torch.channels_last)
    return WindowOp(
        win,
        lambda r: F.conv2d(r, w, b, s, 0, d, g),
        whole=lambda r: F.conv2d(r, w, b, s, pad, d, g),
    )


def _max_pool_op(m: nn.MaxPool2d, size: Pair) -> WindowOp:
    k, p, d = _pair(m.kernel_size), _pair(m.padding), _pair(m.dilation)
    s = _pair(m.stride or m.kernel_size)
    out = tuple(_pool_out(size[ax], k[ax], s[ax], p[ax], d[ax], m.ceil_mode) for ax in (0, 1))
    win = _make_window(k, s, d, p, (out[0], out[1]), size, float("-inf"))
    return WindowOp(win, lambda r: F.max_pool2d(r, k, s, 0, d))


def _avg_pool_op(m: nn.AvgPool2d, size: Pair) -> WindowOp:
    k, p = _pair(m.kernel_size), _pair(m.padding)
    s = _pair(m.stride or m.kernel_size)
    out = tuple(_pool_out(size[ax], k[ax], s[ax], p[ax], 1, m.ceil_mode) for ax in (0, 1))
    win = _make_window(k, s, (1, 1), p, (out[0], out[1]), size, 0.0)
    plain = win.pad[1] == win.pad[0] and win.pad[3] == win.pad[2]  # no ceil-mode overhang
    if m.divisor_override is None and plain and (p == (0, 0) or m.count_include_pad):
        return WindowOp(win, lambda r: F.avg_pool2d(r, k, s, 0))  # the divisor is k_h k_w
    # The divisor varies near the borders: sum the window, divide by its count as torch does.
    if m.divisor_override is not None:
        divisor = torch.full((1, 1, out[0], out[1]), float(m.divisor_override))
    else:
        ones = torch.ones(1, 1, *size)
        if m.count_include_pad:  # the symmetric padding counts, a ceil-mode overhang not
            ones = F.pad(ones, (p[1], p[1], p[0], p[0]), value=1.0)
            ones = F.pad(ones, (0, win.pad[3] - p[1], 0, win.pad[1] - p[0]))
        else:
            ones = F.pad(ones, (win.pad[2], win.pad[3], win.pad[0], win.pad[1]))
        divisor = F.avg_pool2d(ones, k, s, 0, divisor_override=1)
    return WindowOp(win, lambda r: F.avg_pool2d(r, k, s, 0, divisor_override=1), divisor)


def _window_op(
    module: nn.Module,
    size: Pair,
    channels_last: bool = False,
    bn: nn.BatchNorm2d | None = None,
) -> WindowOp:
    if isinstance(module, nn.Conv2d):
        return _conv_op(module, size, channels_last, bn)
    if isinstance(module, nn.MaxPool2d):
        return _max_pool_op(module, size)
    assert isinstance(module, nn.AvgPool2d)
    return _avg_pool_op(module, size)


# --------------------------------------------------------------------------- regions


@dataclass
class Region:
    """A node's output for ``n`` patch positions (rows window-major: row ``i B + b`` is
    position ``i`` on example ``b``): ``base`` ``(B, C, H, W)`` except inside ``boxes[i]``,
    where it is ``patch[i B : (i + 1) B]`` (which starts at ``origins[i]``)."""

    base: torch.Tensor
    patch: torch.Tensor
    origins: list[Pair]
    boxes: list[Box]
    centers: list[Center]
    examples: list[int] | None = None  # position i on example examples[i] only (1 row each)
    owned: bool = False  # the patch is a tensor this node made (no other node reads it)

    @property
    def count(self) -> int:
        return len(self.origins)

    @property
    def rows(self) -> int:
        """Rows per position."""
        return self.base.shape[0] if self.examples is None else 1


def _first(node: torch.fx.Node) -> str:
    """The name of the node's first argument (a node)."""
    arg = node.args[0]
    assert isinstance(arg, torch.fx.Node)
    return arg.name


def _union(a: Box, b: Box) -> Box:
    if a[2] <= a[0] or a[3] <= a[1]:
        return b
    if b[2] <= b[0] or b[3] <= b[1]:
        return a
    return (min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))


def _cap(box: Box, center: Center, out: Pair, tau: float) -> Box:
    """Projective-field thresholding: at most ``⌈τ · out⌉`` rows and columns around the
    projected centre, kept inside ``box``."""
    lo, hi = [box[0], box[1]], [box[2], box[3]]
    for ax in (0, 1):
        cap = max(1, math.ceil(tau * out[ax]))
        if hi[ax] - lo[ax] > cap:
            start = math.floor(center[ax] + 0.5 - cap / 2)
            lo[ax] = min(max(start, lo[ax]), hi[ax] - cap)
            hi[ax] = lo[ax] + cap
    return (lo[0], lo[1], hi[0], hi[1])


def _starts(boxes: list[Box], out: Pair) -> tuple[list[Pair], Pair]:
    """One region size for all positions (the largest box, at least 1×1) and each position's
    region start, shifted inside the map at the borders."""
    h = max(1, max(b[2] - b[0] for b in boxes))
    w = max(1, max(b[3] - b[1] for b in boxes))
    starts = [(max(0, min(b[0], out[0] - h)), max(0, min(b[1], out[1] - w))) for b in boxes]
    return starts, (h, w)


def _gather(
    src: Region, padded: torch.Tensor, shift: Pair, starts: list[Pair], size: Pair
) -> torch.Tensor:
    """``src`` read on the regions at ``starts`` (in the coordinates of ``padded``, the base
    map shifted by ``shift``): ``(n B, C, h, w)``."""
    B = src.rows
    h, w = size
    if src.examples is None:
        parts = [padded[:, :, y : y + h, x : x + w] for y, x in starts]
    else:
        parts = [padded[e : e + 1, :, y : y + h, x : x + w]
                 for e, (y, x) in zip(src.examples, starts, strict=True)]  # fmt: skip
    out = torch.stack(parts).flatten(0, 1)
    # Paste each position's change; positions with the same rectangles (all the interior
    # ones) are pasted by one indexed copy.
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, ((y, x), box, (oy, ox)) in enumerate(zip(starts, src.boxes, src.origins, strict=True)):
        t, left = max(box[0] + shift[0], y), max(box[1] + shift[1], x)
        b, r = min(box[2] + shift[0], y + h), min(box[3] + shift[1], x + w)
        if b <= t or r <= left:
            continue
        py, px = oy + shift[0], ox + shift[1]
        key = (t - y, b - y, left - x, r - x, t - py, b - py, left - px, r - px)
        groups.setdefault(key, []).append(i)
    for (a0, a1, c0, c1, p0, p1, q0, q1), members in groups.items():
        runs = _runs(members)
        if len(runs) <= _MAX_SLICED_RUNS:  # consecutive positions are consecutive rows
            for i, j in runs:
                out[i * B : j * B, :, a0:a1, c0:c1] = src.patch[i * B : j * B, :, p0:p1, q0:q1]
            continue
        dev = out.device
        rows = (
            torch.tensor(members, device=dev)[:, None] * B + torch.arange(B, device=dev)
        ).flatten()
        view = out[:, :, a0:a1, c0:c1]
        view.index_copy_(0, rows, src.patch[rows, :, p0:p1, q0:q1])
    return out


# Up to this many runs of consecutive positions a paste is a slice copy per run; beyond, one
# indexed copy (which reads the patch rows once more) costs less than the Python loop.
_MAX_SLICED_RUNS = 8


def _runs(members: list[int]) -> list[Pair]:
    """Sorted indices as ``[start, stop)`` runs of consecutive values."""
    runs: list[Pair] = []
    for i in members:
        if runs and runs[-1][1] == i:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    return runs


def _whole(region: Region) -> torch.Tensor:
    """The full occluded maps ``(n B, C, H, W)``."""
    H, W = region.base.shape[-2:]
    return _gather(region, region.base, (0, 0), [(0, 0)] * region.count, (H, W))


def _is_whole(region: Region) -> bool:
    """The patch is the whole map at every position."""
    full = tuple(region.base.shape[-2:])
    return tuple(region.patch.shape[-2:]) == full and all(o == (0, 0) for o in region.origins)


def _spatially_constant(v: Any) -> bool:
    """A value that is the same at every position and for every row (a number, a
    per-channel ``(C, 1, 1)`` or ``(1, C, 1, 1)`` tensor)."""
    if isinstance(v, torch.Tensor):
        if v.numel() == 1:
            return True
        per_channel = v.dim() >= 3 and tuple(v.shape[-2:]) == (1, 1)
        return per_channel and (v.dim() == 3 or (v.dim() == 4 and v.shape[0] == 1))
    return not isinstance(v, Region)


class IncrementalRunner:
    """Caches the base (unoccluded) value of every node for a batch ``x`` and evaluates the
    network on occluded copies of it, chunk by chunk.

    ``tau`` (``None`` or 1: exact) caps each node's changed box (approximate mode).
    ``channels_last`` keeps every activation, region and convolution weight (a private copy)
    in the NHWC layout, in which this CPU's convolutions on the batched regions ran faster.
    ``fold_batch_norm`` folds each eval-mode batch norm that is the only reader of a
    convolution's output into the engine's private copy of that convolution's weights.
    """

    def __init__(
        self,
        model: Model,
        plan: IncrementalPlan,
        x: torch.Tensor,
        tau: float | None = None,
        channels_last: bool = False,
        fold_batch_norm: bool = True,
    ) -> None:
        assert plan.gm is not None
        self.model, self.plan, self.gm = model, plan, plan.gm
        self.tau = tau if tau is not None and tau < 1 else None
        self.modules = dict(self.gm.named_modules())
        self.nodes = list(self.gm.graph.nodes)
        self.last_use = {}
        for i, node in enumerate(self.nodes):
            for inp in node.all_input_nodes:
                self.last_use[inp.name] = i
        self.bases: dict[str, Any] = {}
        self.output: Any = None
        self.window_ops: dict[str, tuple[WindowOp, torch.Tensor]] = {}
        self.channels_last = channels_last and x.dim() == 4
        self.folds = _batch_norm_folds(self.nodes, self.modules) if fold_batch_norm else {}
        self.folded = {bn.name for bn in self.folds.values()}
        h = model.normalize(x)
        if self.channels_last:
            h = h.contiguous(memory_format=torch.channels_last)
        self._record_bases(h)

    # ---------------------------------------------------------------- base run

    def _record_bases(self, h: torch.Tensor) -> None:
        env: dict[str, Any] = {}
        for node in self.nodes:
            if node.op == "placeholder":
                env[node.name] = h
            elif node.op == "output":
                # the network's output on the unoccluded images (the caller's reference)
                self.output = self._args(node, env)[0][0]
                continue
            else:
                args, kwargs = self._args(node, env)
                env[node.name] = self._execute(node, args, kwargs)
            value = env[node.name]
            self.bases[node.name] = value.clone() if isinstance(value, torch.Tensor) else value

    def _args(self, node: torch.fx.Node, env: dict[str, Any]) -> tuple[Any, Any]:
        args = torch.fx.node.map_arg(node.args, lambda n: env[n.name])
        kwargs = torch.fx.node.map_arg(node.kwargs, lambda n: env[n.name])
        return args, kwargs

    def _layout(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def _execute(self, node: torch.fx.Node, args: Any, kwargs: Any) -> Any:
        """The node as the model runs it."""
        if node.op == "call_module":
            return self.modules[str(node.target)](*args, **kwargs)
        if node.op == "call_function":
            return node.target(*args, **kwargs)  # type: ignore[operator]
        if node.op == "call_method":
            return getattr(args[0], str(node.target))(*args[1:], **kwargs)
        if node.op == "get_attr":
            obj: Any = self.gm
            for part in str(node.target).split("."):
                obj = getattr(obj, part)
            return obj
        raise AssertionError(node.op)

    # ---------------------------------------------------------------- occluded run

    def run(
        self,
        corners: list[Pair],
        window: Pair,
        fill: torch.Tensor,
        examples: list[int] | None = None,
    ) -> torch.Tensor:
        """The model's output ``(n B, K)`` (row ``i B + b``) with a ``window`` at each
        ``(top, left)`` of ``corners`` set to ``fill`` ``(C, 1, 1)`` (pixel units); with
        ``examples``, ``(n, K)``: corner ``i`` on example ``examples[i]`` only."""
        env: dict[str, Any] = {}
        whole: dict[str, torch.Tensor] = {}  # regions made whole, once per node
        result: Any = None
        for i, node in enumerate(self.nodes):
            if node.op == "placeholder":
                env[node.name] = self._input_region(node.name, corners, window, fill, examples)
            elif node.op == "output":
                result = self._dense(node, env, whole, lambda a, k: a[0])
            else:
                env[node.name] = self._step(node, env, whole)
            for inp in node.all_input_nodes:  # free what no later node reads
                if self.last_use.get(inp.name) == i:
                    env.pop(inp.name, None)
                    whole.pop(inp.name, None)
        return result

    def _input_region(
        self,
        name: str,
        corners: list[Pair],
        window: Pair,
        fill: torch.Tensor,
        examples: list[int] | None,
    ) -> Region:
        base = self.bases[name]
        B, C = base.shape[:2]
        B = B if examples is None else 1
        value = ((fill - self.model.mean[0]) / self.model.std[0]).to(base)
        patch = value.view(1, C, 1, 1).expand(len(corners) * B, C, *window)
        patch = patch.contiguous(memory_format=self._layout())
        kh, kw = window
        return Region(
            base,
            patch,
            list(corners),
            [(t, left, t + kh, left + kw) for t, left in corners],
            [(t + (kh - 1) / 2, left + (kw - 1) / 2) for t, left in corners],
            examples,
        )

    def _step(self, node: torch.fx.Node, env: dict[str, Any], whole: dict[str, Any]) -> Any:
        kind = self.plan.kinds[node.name]
        if node.op == "get_attr":
            return self.bases[node.name]
        if node.name in self.folded:
            src = env[_first(node)]
            if isinstance(src, Region) and src.base is self.bases[node.name]:
                return src  # the conv before it ran with the batch norm folded in
        inputs = [env[n.name] for n in node.all_input_nodes]
        if not any(isinstance(v, Region) for v in inputs):
            return self._dense(node, env, whole, lambda a, k: self._execute(node, a, k))
        if kind == "window":
            src = env[_first(node)]
            if isinstance(src, Region) and len(node.all_input_nodes) == 1 and not node.kwargs:
                return self._window(node, src)
        elif kind == "pad":
            return self._pad(node, env[_first(node)])
        elif kind == "shape":
            return self._shape(node, env)
        elif kind in ("pointwise", "cat"):
            out = self._aligned(node, env, kind)
            if out is not None:
                return out
        return self._dense(node, env, whole, lambda a, k: self._execute(node, a, k))

    def _dense(
        self,
        node: torch.fx.Node,
        env: dict[str, Any],
        whole: dict[str, torch.Tensor],
        run: Callable[[Any, Any], Any],
    ) -> Any:
        """Run ``node`` on whole maps (its regions made whole)."""

        def value(n: torch.fx.Node) -> Any:
            v = env[n.name]
            if not isinstance(v, Region):
                return v
            if n.name not in whole:
                whole[n.name] = v.patch if self.tau is None and _is_whole(v) else _whole(v)
            return whole[n.name]

        args = torch.fx.node.map_arg(node.args, value)
        kwargs = torch.fx.node.map_arg(node.kwargs, value)
        return run(args, kwargs)

    def _shape(self, node: torch.fx.Node, env: dict[str, Any]) -> Any:
        src = env[_first(node)]
        shape = torch.Size((src.patch.shape[0], *src.base.shape[1:]))
        if node.op == "call_function" or node.target == "size":  # .shape or .size(dim)
            dims = node.args[1:] if node.op == "call_method" else ()
            dim = dims[0] if dims else node.kwargs.get("dim")
            return shape if dim is None else shape[int(dim)]  # type: ignore[arg-type]
        return len(shape)  # .dim()

    def _window(self, node: torch.fx.Node, src: Region) -> Region:
        # a conv with a batch norm folded in gives the batch norm's output
        base = self.bases[self.folds[node.name].name if node.name in self.folds else node.name]
        if node.name not in self.window_ops:
            size = (src.base.shape[-2], src.base.shape[-1])
            module = self.modules[str(node.target)]
            fold = self.folds.get(node.name)
            bn = self.modules[str(fold.target)] if fold is not None else None
            op = _window_op(module, size, self.channels_last, bn)
            w = op.window
            padded = F.pad(src.base, (w.pad[2], w.pad[3], w.pad[0], w.pad[1]), value=w.pad_value)
            self.window_ops[node.name] = (op, padded)
        op, padded = self.window_ops[node.name]
        win = op.window
        cones = [win.cone(box) for box in src.boxes]
        centers = [win.center(c) for c in src.centers]
        if self.tau is not None:
            cones = [_cap(b, c, win.out, self.tau) for b, c in zip(cones, centers, strict=True)]
        starts, (oh, ow) = _starts(cones, win.out)
        if (oh, ow) == win.out and self.tau is None and _is_whole(src):
            # the change fills the map here: run the layer itself on the occluded maps
            out = (op.whole or self.modules[str(node.target)])(src.patch)
            return Region(base, out, starts, cones, centers, src.examples, owned=True)
        sh, sw = win.stride
        ih, iw = (oh - 1) * sh + win.span(0), (ow - 1) * sw + win.span(1)
        corners = [(y * sh, x * sw) for y, x in starts]
        region = _gather(src, padded, (win.pad[0], win.pad[2]), corners, (ih, iw))
        out = op.apply(region)
        if op.divisor is not None:
            B = src.rows
            d = torch.stack([op.divisor[0, :, y : y + oh, x : x + ow] for y, x in starts])
            out = (out.unflatten(0, (-1, B)) / d.unsqueeze(1).to(out)).flatten(0, 1)
        return Region(base, out, starts, cones, centers, src.examples, owned=True)

    def _pad(self, node: torch.fx.Node, src: Region) -> Region:
        left, _, top, _ = _pads4(self.modules[str(node.target)].padding)
        return Region(
            self.bases[node.name],
            src.patch.clone(),  # the pad's output is a new tensor an in-place op may write
            [(y + top, x + left) for y, x in src.origins],
            [(b[0] + top, b[1] + left, b[2] + top, b[3] + left) for b in src.boxes],
            [(c[0] + top, c[1] + left) for c in src.centers],
            src.examples,
        )

    def _aligned(self, node: torch.fx.Node, env: dict[str, Any], kind: str) -> Region | None:
        """A node whose output at a position reads its inputs at that position only: one
        region input maps its patch; several are read on the union of their boxes. ``None``
        when the inputs do not qualify (then it runs on whole maps)."""
        base = self.bases[node.name]
        if not isinstance(base, torch.Tensor) or base.dim() != 4:
            return None
        if kind == "cat":
            dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
            if dim not in (1, -3):
                return None
        leaves: list[Any] = []

        def collect(v: Any) -> Any:
            leaves.append(v)
            return v

        torch.fx.node.map_aggregate(
            torch.fx.node.map_arg((node.args, node.kwargs), lambda n: env[n.name]), collect
        )
        regions = [v for v in leaves if isinstance(v, Region)]
        hw = tuple(base.shape[-2:])
        if any(tuple(r.base.shape[-2:]) != hw or r.base.dim() != 4 for r in regions):
            return None  # broadcasting across positions
        others = [v for v in leaves if not isinstance(v, Region)]
        if kind == "pointwise" and not all(_spatially_constant(v) for v in others):
            return None
        if kind == "cat" and any(isinstance(v, torch.Tensor) for v in others):
            return None
        fn = self._out_of_place(node)
        if len(regions) == 1 and kind == "pointwise":
            (src,) = regions
            if src.owned and self._relu_in_place(node):
                out = torch.relu_(src.patch)  # no other node reads the input's patch
                return Region(base, out, src.origins, src.boxes, src.centers, src.examples, True)
            args = torch.fx.node.map_arg(
                (node.args, node.kwargs),
                lambda n: src.patch if isinstance(env[n.name], Region) else env[n.name],
            )
            out = fn(*args[0], **args[1])
            return Region(base, out, src.origins, src.boxes, src.centers, src.examples)
        n = regions[0].count
        boxes = []
        centers = []
        for i in range(n):
            box: Box = (0, 0, 0, 0)
            cy = cx = 0.0
            k = 0
            for r in regions:
                box = _union(box, r.boxes[i])
                if r.boxes[i][2] > r.boxes[i][0] and r.boxes[i][3] > r.boxes[i][1]:
                    cy, cx, k = cy + r.centers[i][0], cx + r.centers[i][1], k + 1
            boxes.append(box)
            centers.append((cy / k, cx / k) if k else regions[0].centers[i])
        if self.tau is not None:
            boxes = [
                _cap(b, c, (hw[0], hw[1]), self.tau) for b, c in zip(boxes, centers, strict=True)
            ]
        starts, size = _starts(boxes, (hw[0], hw[1]))
        read: dict[int, torch.Tensor] = {}

        def on_region(v: Any) -> Any:
            if not isinstance(v, Region):
                return v
            if id(v) not in read:
                same = v.origins == starts and tuple(v.patch.shape[-2:]) == size
                # exact mode: a patch equals the base outside its box, so it can be used as is
                read[id(v)] = (
                    v.patch
                    if same and self.tau is None
                    else _gather(v, v.base, (0, 0), starts, size)
                )
            return read[id(v)]

        args = torch.fx.node.map_arg((node.args, node.kwargs), lambda n: env[n.name])
        args = torch.fx.node.map_aggregate(args, on_region)
        out = fn(*args[0], **args[1])
        return Region(base, out, starts, boxes, centers, regions[0].examples, owned=True)

    def _relu_in_place(self, node: torch.fx.Node) -> bool:
        """A ReLU whose input node has no other reader: it may overwrite an owned patch."""
        src = node.all_input_nodes
        if len(src) != 1 or len(src[0].users) != 1 or len(node.args) != 1:
            return False
        if node.op == "call_module":
            return type(self.modules[str(node.target)]) is nn.ReLU
        if node.op == "call_method":
            return node.target in ("relu", "relu_")
        return node.op == "call_function" and node.target in (F.relu, torch.relu, torch.relu_)

    def _out_of_place(self, node: torch.fx.Node) -> Callable[..., Any]:
        """The node's computation; in-place ops become out of place (a region's patch may be
        shared with its input's)."""
        if node.op == "call_module":
            return self.modules[str(node.target)]
        if node.op == "call_method":
            name = str(node.target)
            name = name[:-1] if name.endswith("_") else name
            return lambda obj, *a, **k: getattr(obj, name)(*a, **k)
        target = node.target
        swap: dict[Any, Any] = {operator.iadd: operator.add, operator.isub: operator.sub,
                operator.imul: operator.mul, operator.itruediv: operator.truediv,
                torch.relu_: torch.relu}  # fmt: skip
        fn = swap.get(target, target)

        def call(*a: Any, **k: Any) -> Any:
            if k.get("inplace"):
                k = dict(k, inplace=False)
            return fn(*a, **k)

        return call
