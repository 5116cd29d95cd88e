"""TensorFlow.js graph models (``model.json`` with ``"format": "graph-model"``), no TF needed.

``tensorflowjs_converter --output_format=tfjs_graph_model`` writes a TensorFlow ``GraphDef``
as JSON (``modelTopology.node``: each node's ``op``, ``input`` list and ``attr`` map, strings
base64-encoded) and stores every ``Const`` node's value in the weight shards, named after the
node. This module turns the inference ops of image CNNs into torch modules named after the
nodes (the common ``StatefulPartitionedCall/<model>/`` prefix removed) and assembles them with
:func:`convlens.model.formats.opgraph.assemble`.

Layout. TensorFlow is NHWC; torch is NCHW. Every 4-D activation is kept NCHW: conv filters
``(kh, kw, in, out)`` become ``(out, in, kh, kw)`` once at load, a depthwise filter
``(kh, kw, in, mult)`` becomes ``(in·mult, 1, kh, kw)`` with ``groups=in`` (output channel
``c·mult + j``, as in TF), an axis ``a`` of a 4-D tensor maps through ``(0, 3, 1, 2)``
(``N→0, H→2, W→3, C→1``), and a constant combined with a 4-D activation is right-aligned to
rank 4 (NumPy broadcasting) and transposed the same way. ``Reshape``/``Squeeze`` of a 4-D
activation go through NHWC so that flattening keeps TF's ``(h, w, c)`` order, which the next
``MatMul``'s rows expect.

Padding. ``VALID`` is none; ``SAME`` puts ``total = max((⌈n/s⌉-1)·s + (k-1)·d + 1 - n, 0)``
pixels around each axis, the odd one after (a ``ZeroPad2d`` before the conv when uneven; a
``-inf`` pad for max pooling; for average pooling TF divides by the number of real pixels,
so ``count_include_pad=False`` or, when uneven, :class:`SamePadAvgPool`); ``EXPLICIT`` reads
``explicit_paddings`` (NHWC pairs).

Converted: Conv2D, DepthwiseConv2dNative, _FusedConv2D and FusedDepthwiseConv2dNative with
their fused BiasAdd/FusedBatchNorm and Relu/Relu6/Elu/LeakyRelu/Prelu/Sigmoid/Tanh,
FusedBatchNorm(V2/V3), BiasAdd, the activations alone, MaxPool, AvgPool, Mean/Max over H and
W, MatMul and _FusedMatMul, Add/AddV2/AddN/Sub/Mul/RealDiv/Maximum/Minimum with constants or
between activations, ConcatV2, Pad/PadV2/MirrorPad (REFLECT), Reshape, Squeeze, Softmax,
Identity, Placeholder and Const; shape arithmetic on constants (Shape, StridedSlice, Pack,
Prod, Cast, ExpandDims, ...) is computed at load time. Anything else is refused naming the
op, the node and its position. ``data_format: NCHW`` is refused (TF.js runs NHWC only).
"""

from __future__ import annotations

import base64
import math
import operator
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from convlens.errors import ConvlensError
from convlens.io.spec import InputSpec
from convlens.model.core import Model
from convlens.model.formats.base import make_model
from convlens.model.formats.keras_layers import same_padding
from convlens.model.formats.opgraph import Op, assemble, drop_final_softmax, unique
from convlens.model.formats.safety import Budget, checked_elements
from convlens.model.formats.tfjs import (
    MAX_SIDE,
    MODEL_FILE,
    metadata_classes,
    model_file,
    peek_model_json,
    read_model_json,
    read_weights,
)
from convlens.model.load import FORMATS, LoadOptions, ModelFormat

MAX_NODES = 100_000  # a MobileNet has ~400 nodes, an EfficientNet-B7 a few thousand
_NHWC_TO_NCHW = (0, 3, 1, 2)
_AXIS_4D = {0: 0, 1: 2, 2: 3, 3: 1}  # NHWC axis → NCHW axis


def detect(source: str) -> bool:
    doc = peek_model_json(source)
    return doc is not None and doc.get("format") == "graph-model"


# ------------------------------------------------------------------ modules


class ConstantOp(nn.Module):
    """``x ∘ c`` (or ``c ∘ x``) for an elementwise op ``∘`` and a constant ``c`` (a buffer)."""

    def __init__(self, op: str, const: torch.Tensor, const_first: bool) -> None:
        super().__init__()
        self.op = op
        self.const_first = const_first
        self.register_buffer("const", const)

    const: torch.Tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fn = _BINARY[self.op]
        return fn(self.const, x) if self.const_first else fn(x, self.const)

    def extra_repr(self) -> str:
        return f"op={self.op}, const_shape={tuple(self.const.shape)}"


class Prelu(nn.Module):
    """TF.js's ``Prelu``: ``x`` where ``x ≥ 0``, else ``alpha · x`` (alpha broadcast)."""

    def __init__(self, alpha: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("alpha", alpha)

    alpha: torch.Tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(x >= 0, x, x * self.alpha)


class SamePadAvgPool(nn.Module):
    """Average pooling with uneven SAME padding, dividing by the real pixels in each window.

    ``avg = Σ_window pad(x) / Σ_window pad(1)``: TensorFlow excludes padding from the count.
    """

    def __init__(self, kernel: tuple[int, int], stride: tuple[int, int], pad: list[int]) -> None:
        super().__init__()
        self.kernel, self.stride, self.pad = kernel, stride, pad  # pad: left, right, top, bottom

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ones = torch.ones_like(x[:, :1])
        total = F.avg_pool2d(F.pad(x, self.pad), self.kernel, self.stride)
        count = F.avg_pool2d(F.pad(ones, self.pad), self.kernel, self.stride)
        return total / count


class TFReshape(nn.Module):
    """TF's ``Reshape``/``Squeeze`` of a tensor stored NCHW when 4-D: through NHWC order."""

    def __init__(self, shape: tuple[int, ...] | None = None, squeeze: tuple[int, ...] = ()):
        super().__init__()
        self.shape, self.squeeze = shape, squeeze

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:
            x = x.permute(0, 2, 3, 1)
        if self.shape is not None:
            x = x.reshape(self.shape)
        else:
            x = x.squeeze(self.squeeze) if self.squeeze else x.squeeze()
        return x.permute(0, 3, 1, 2) if x.dim() == 4 else x

    def extra_repr(self) -> str:
        return f"shape={self.shape}" if self.shape is not None else f"squeeze={self.squeeze}"


MAX_ACTIVATION = 1 << 28  # values in one activation of a batch-1 forward pass (1 GiB)


def _output_bound(module: nn.Module, x: torch.Tensor) -> int:
    """An upper bound on the values ``module(x)`` holds, known before running it."""
    bound = max([x.numel(), *(b.numel() for b in module.buffers())])  # broadcasts
    if x.dim() == 4 and isinstance(module, nn.Conv2d | nn.ZeroPad2d | nn.ConstantPad2d |
                                   nn.ReflectionPad2d):  # fmt: skip
        _, ch, h, w = x.shape
        if isinstance(module, nn.Conv2d):
            ph, pw = module.padding if isinstance(module.padding, tuple) else (0, 0)
            return int(module.out_channels) * (h + 2 * int(ph)) * (w + 2 * int(pw))
        left, right, top, bottom = (int(v) for v in module.padding)
        return ch * (h + top + bottom) * (w + left + right)
    return bound


def _check_activation(node: _Node, bound: int) -> None:
    if bound > MAX_ACTIVATION:
        raise node.fail(
            f"its output would hold up to {bound} values for one image, over the "
            f"{MAX_ACTIVATION} accepted"
        )


def _tensor(a: Any) -> torch.Tensor:
    """An owned, writable float32 tensor (file buffers and broadcast views are read-only)."""
    return torch.from_numpy(np.array(a, dtype=np.float32, copy=True))


def _cat(*xs: torch.Tensor, dim: int = 1) -> torch.Tensor:
    return torch.cat(xs, dim=dim)


def _sum(*xs: torch.Tensor) -> torch.Tensor:
    out = xs[0]
    for x in xs[1:]:
        out = out + x
    return out


_BINARY: dict[str, Callable[[Any, Any], Any]] = {
    "add": operator.add,
    "sub": operator.sub,
    "mul": operator.mul,
    "div": operator.truediv,
    "max": torch.maximum,
    "min": torch.minimum,
}
_NP_BINARY: dict[str, Callable[[Any, Any], Any]] = {
    "add": np.add,
    "sub": np.subtract,
    "mul": np.multiply,
    "div": np.divide,
    "max": np.maximum,
    "min": np.minimum,
}
_BINARY_OPS = {
    "Add": "add", "AddV2": "add", "BiasAdd": "add", "Sub": "sub", "Mul": "mul",
    "RealDiv": "div", "Div": "div", "Maximum": "max", "Minimum": "min",
}  # fmt: skip

_ACTIVATIONS: dict[str, Callable[[Any], nn.Module]] = {
    "relu": lambda n: nn.ReLU(),
    "relu6": lambda n: nn.ReLU6(),
    "elu": lambda n: nn.ELU(),
    "selu": lambda n: nn.SELU(),
    "sigmoid": lambda n: nn.Sigmoid(),
    "tanh": lambda n: nn.Tanh(),
    "softplus": lambda n: nn.Softplus(),
    "leakyrelu": lambda n: nn.LeakyReLU(n.float("alpha", n.float("leakyrelu_alpha", 0.2))),
}


# ------------------------------------------------------------------ nodes


class _Node:
    """A GraphDef node: its inputs (control inputs dropped), decoded attributes, position."""

    def __init__(self, raw: dict[str, Any], index: int) -> None:
        self.index = index
        self.name = str(raw.get("name", f"node_{index}"))
        self.op = str(raw.get("op", "?"))
        inputs = raw.get("input") or []
        if not isinstance(inputs, list):
            raise self.fail("its input list is not a list")
        self.inputs = [_value_name(str(i)) for i in inputs if not str(i).startswith("^")]
        attrs = raw.get("attr") or {}
        self.attrs: dict[str, Any] = attrs if isinstance(attrs, dict) else {}

    def fail(self, why: str) -> ConvlensError:
        return ConvlensError(f"TF.js graph node {self.index} ({self.name!r}, {self.op}): {why}")

    def _attr(self, key: str) -> dict[str, Any]:
        value = self.attrs.get(key)
        return value if isinstance(value, dict) else {}

    def _list(self, key: str) -> dict[str, Any]:
        value = self._attr(key).get("list")
        return value if isinstance(value, dict) else {}

    def string(self, key: str, default: str = "") -> str:
        raw = self._attr(key).get("s")
        if raw is None:
            return default
        try:
            return base64.b64decode(str(raw), validate=True).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            raise self.fail(f"attribute {key!r} is not base64 text") from None

    def strings(self, key: str) -> list[str]:
        raw = self._list(key).get("s", [])
        if not isinstance(raw, list):
            raise self.fail(f"attribute {key!r} is not a list of base64 text")
        try:
            return [base64.b64decode(str(s), validate=True).decode("utf-8") for s in raw]
        except (ValueError, UnicodeDecodeError):
            raise self.fail(f"attribute {key!r} is not a list of base64 text") from None

    def ints(self, key: str, default: list[int]) -> list[int]:
        raw = self._list(key).get("i")
        if raw is None:
            return default
        try:
            return [int(v) for v in raw]
        except (TypeError, ValueError):
            raise self.fail(f"attribute {key!r} is not a list of integers") from None

    def int(self, key: str, default: int) -> int:
        raw = self._attr(key).get("i")
        try:
            return default if raw is None else int(raw)
        except (TypeError, ValueError):
            raise self.fail(f"attribute {key!r} is not an integer") from None

    def float(self, key: str, default: float) -> float:
        raw = self._attr(key).get("f")
        try:
            value = default if raw is None else float(raw)
        except (TypeError, ValueError):
            raise self.fail(f"attribute {key!r} is not a number") from None
        if not math.isfinite(value):
            raise self.fail(f"attribute {key!r} is {value}")
        return value

    def bool(self, key: str, default: bool) -> bool:
        raw = self._attr(key).get("b")
        return default if raw is None else bool(raw)


def _value_name(ref: str) -> str:
    """``"conv:0"`` → ``"conv"``; other outputs keep their index (``"bn:1"``)."""
    name, sep, idx = ref.rpartition(":")
    if sep and idx.isdigit():
        return name if idx == "0" else ref
    return ref


# ------------------------------------------------------------------ the converter


class _Converter:
    def __init__(self, doc: dict[str, Any], weights: dict[str, np.ndarray]) -> None:
        nodes = doc["modelTopology"].get("node")
        if not isinstance(nodes, list) or not nodes:
            raise ConvlensError("the graph model's modelTopology has no node list")
        if len(nodes) > MAX_NODES:
            raise ConvlensError(f"the graph model has {len(nodes)} nodes; at most {MAX_NODES}")
        self.nodes = [_Node(n if isinstance(n, dict) else {}, i) for i, n in enumerate(nodes)]
        self.weights = weights
        self.consts: dict[str, np.ndarray] = {}
        self.samples: dict[str, torch.Tensor] = {}  # batch-1 values of activations, torch layout
        self.alias: dict[str, str] = {}
        self.ops: list[Op] = []
        self.taken: set[str] = set()
        self.affine: set[int] = set()  # ids of the BatchNorm2d layers made from Mul/Add ops
        self.mean: tuple[float, ...] = (0.0,)  # the input spec, unless preprocessing is folded
        self.std: tuple[float, ...] = (1.0,)
        self.input = ""
        self.input_size: tuple[int, int] | None = None  # the user's --input-size
        self.input_shape: tuple[int, int, int] = (0, 0, 0)  # C, H, W
        self.output = _graph_output(doc, self.nodes)
        self.prefix = _common_prefix([n.name for n in self.nodes if n.op != "Const"])
        self.uses: dict[str, int] = {}
        for n in self.nodes:
            for i in n.inputs:
                self.uses[i] = self.uses.get(i, 0) + 1

    # ---------------------------------------------------------- values

    def value(self, name: str) -> str:
        while name in self.alias:
            name = self.alias[name]
        return name

    def is_const(self, name: str) -> bool:
        return self.value(name) in self.consts

    def const(self, node: _Node, pos: int) -> np.ndarray:
        if pos >= len(node.inputs):
            raise node.fail(f"input {pos} is missing")
        name = self.value(node.inputs[pos])
        if name not in self.consts:
            raise node.fail(f"input {pos} ({name!r}) must be a constant (a weight)")
        return self.consts[name]

    def act(self, node: _Node, pos: int, rank: int | None = 4) -> str:
        """The name of the activation at input ``pos``, checked to be of ``rank`` (TF rank)."""
        if pos >= len(node.inputs):
            raise node.fail(f"input {pos} is missing")
        name = self.value(node.inputs[pos])
        if name not in self.samples:
            raise node.fail(f"input {pos} ({name!r}) is not a computed value")
        if rank is not None and self.samples[name].dim() != rank:
            raise node.fail(
                f"input {pos} has rank {self.samples[name].dim()}; this op needs rank {rank}"
            )
        return name

    def module_name(self, node: _Node, suffix: str = "", raw_name: str | None = None) -> str:
        raw = (raw_name or node.name).removeprefix(self.prefix) + suffix
        clean = "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in raw).strip("_")
        return unique(clean or f"{node.op.lower()}_{node.index}", self.taken)

    # ---------------------------------------------------------- emitting

    def emit(
        self, node: _Node, module: nn.Module, src: str, out: str, suffix: str = "", name: str = ""
    ) -> str:
        """Append ``out = module(src)`` named after ``node`` and compute its sample value."""
        op = Op(self.module_name(node, suffix, name or None), [src], out, module=module)
        _check_activation(node, _output_bound(module, self.samples[src]))
        self.ops.append(op)
        with torch.no_grad():
            self.samples[out] = module.eval()(self.samples[src])
        return out

    def emit_fn(
        self,
        node: _Node,
        fn: Callable[..., Any],
        inputs: list[str],
        result: str | None = None,
        **kw: Any,
    ) -> None:
        out = result or node.name
        shapes = [tuple(self.samples[i].shape) for i in inputs]
        if fn is _cat:
            bound = sum(math.prod(sh) for sh in shapes)
        else:  # elementwise: the broadcast shape
            bound = math.prod(torch.broadcast_shapes(*shapes))
        _check_activation(node, bound)
        self.ops.append(Op(out, inputs, out, fn=fn, kwargs=kw))
        with torch.no_grad():
            self.samples[out] = fn(*(self.samples[i] for i in inputs), **kw)

    def layer_name(self, node: _Node) -> str:
        """A conv's or matmul's name: the Keras layer scope of its weight (``Conv1_1`` for
        ``.../Conv1_1/convolution/merged_input``), as a fused node is named after its last op.
        """
        weight = node.inputs[1].removeprefix(self.prefix) if len(node.inputs) > 1 else ""
        scope = weight.split("/")[0] if "/" in weight else ""
        return self.prefix + scope if scope else node.name

    def to_torch_layout(self, node: _Node, const: np.ndarray, rank: int) -> torch.Tensor:
        """A constant ready to broadcast against an activation of TF rank ``rank``."""
        t = _tensor(const)
        if rank != 4 or t.dim() == 0:
            return t
        if t.dim() > 4:
            raise node.fail(f"a constant of shape {tuple(t.shape)} cannot broadcast to 4-D")
        t = t.reshape((1,) * (4 - t.dim()) + tuple(t.shape))
        return t.permute(*_NHWC_TO_NCHW).contiguous()

    # ---------------------------------------------------------- the walk

    def run(self) -> tuple[nn.Module, tuple[int, int, int]]:
        for node in _topological(self.nodes, self.output):
            handler = HANDLERS.get(node.op)
            if handler is None:
                raise node.fail(
                    f"op {node.op!r} is not supported; accepted: {', '.join(sorted(HANDLERS))}"
                )
            try:
                handler(self, node)
            except ConvlensError:
                raise
            except (
                RuntimeError, ValueError, IndexError, KeyError, TypeError, AttributeError,
                ArithmeticError,
            ) as e:  # fmt: skip
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise node.fail(f"cannot be converted: {first}") from None
        if not self.input:
            raise ConvlensError("the graph model has no Placeholder input feeding its output")
        output = self.value(self.output)
        if output not in self.samples:
            raise ConvlensError(f"the graph model's output {self.output!r} is not computed")
        if self.samples[output].dim() != 2:
            shape = tuple(self.samples[output].shape)
            raise ConvlensError(
                f"the graph model's output has shape {shape} per batch of 1; convlens needs "
                "(batch, classes) scores"
            )
        output, _ = drop_final_softmax(self.ops, output)
        self.fold_preprocessing()
        return assemble(self.input, self.ops, output), self.input_shape

    def fold_preprocessing(self) -> None:
        """Move leading per-channel ``x·a + b`` layers (a Keras Rescaling or Normalization,
        as Mul/Add on the input) into the input spec, as the Keras reader does.

        Like Keras's preprocessing layers, they are taken to receive pixels in 0..255, so for
        convlens's ``p ∈ [0, 1]``: ``(p − mean) / std = 255·a·p + b``, i.e.
        ``std = 1 / (255·a)`` and ``mean = −b / (255·a)``.
        """
        scale = np.full(self.input_shape[0], 255.0)
        offset = np.zeros(self.input_shape[0])
        folded = False
        while self.ops and id(self.ops[0].module) in self.affine:
            first = self.ops[0]
            bn = first.module
            assert isinstance(bn, nn.BatchNorm2d)
            a = bn.weight.detach().double().numpy()
            b = bn.bias.detach().double().numpy()
            if first.inputs != [self.input] or self.uses.get(first.output, 0) != 1 or a.min() <= 0:
                break
            scale, offset = scale * a, offset * a + b
            self.ops.pop(0)
            for op in self.ops:
                op.inputs = [self.input if i == first.output else i for i in op.inputs]
            folded = True
        if folded:
            self.std = tuple(float(v) for v in 1 / scale)
            self.mean = tuple(float(v) for v in -offset / scale)


def _graph_output(doc: dict[str, Any], nodes: list[_Node]) -> str:
    """The single output: from the signature, else the one op nothing consumes."""
    sig = doc.get("signature")
    outputs = sig.get("outputs") if isinstance(sig, dict) else None
    if isinstance(outputs, dict) and outputs:
        names = [
            _value_name(str(v.get("name", k) if isinstance(v, dict) else k))
            for k, v in outputs.items()
        ]
    else:
        used = {i for n in nodes for i in n.inputs}
        names = [n.name for n in nodes if n.op != "Const" and n.name not in used]
    if len(names) != 1:
        raise ConvlensError(
            f"the graph model has {len(names)} outputs {names[:5]}; convlens needs one"
        )
    return names[0]


def _common_prefix(names: list[str]) -> str:
    """The ``a/b/`` path every nested op name starts with (e.g. ``StatefulPartitionedCall/m/``)."""
    parents = [n.split("/")[:-1] for n in names if "/" in n]
    if not parents:
        return ""
    common = parents[0]
    for p in parents[1:]:
        k = 0
        while k < min(len(common), len(p)) and common[k] == p[k]:
            k += 1
        common = common[:k]
    return "/".join(common) + "/" if common else ""


def _topological(nodes: list[_Node], output: str) -> list[_Node]:
    """The nodes the output depends on, inputs before users (file order among equals)."""
    by_name = {n.name: n for n in nodes}
    if output not in by_name:
        raise ConvlensError(f"the graph model's output node {output!r} does not exist")
    needed: set[str] = set()
    stack = [output]
    while stack:
        name = stack.pop()
        if name in needed:
            continue
        if name not in by_name:
            raise ConvlensError(f"the graph model refers to a node {name!r} that does not exist")
        needed.add(name)
        stack.extend(by_name[name].inputs)
    order = [n for n in nodes if n.name in needed]
    pending = {n.name: len(set(n.inputs)) for n in order}
    users: dict[str, list[_Node]] = {}
    for n in order:
        for i in set(n.inputs):
            users.setdefault(i, []).append(n)
    ready = deque(n for n in order if pending[n.name] == 0)
    out: list[_Node] = []
    while ready:
        n = ready.popleft()
        out.append(n)
        for u in users.get(n.name, []):
            pending[u.name] -= 1
            if pending[u.name] == 0:
                ready.append(u)
    if len(out) != len(order):
        raise ConvlensError("the graph model's nodes form a cycle")
    return out


# ------------------------------------------------------------------ handlers


def _placeholder(c: _Converter, n: _Node) -> None:
    if c.input:
        raise n.fail("the graph has a second input; convlens needs one image input")
    dtype = n._attr("dtype").get("type", "DT_FLOAT")
    if dtype != "DT_FLOAT":
        raise n.fail(f"input dtype {dtype} is not supported; accepted: DT_FLOAT images")
    dims = n._attr("shape").get("shape", {}).get("dim", [])
    try:
        shape = [int(d.get("size", -1)) for d in dims]
    except (TypeError, ValueError, AttributeError):
        raise n.fail("its shape attribute is not a list of sizes") from None
    if len(shape) != 4:
        raise n.fail(f"input shape {shape}; convlens needs images (batch, height, width, channels)")
    _, h, w, ch = shape
    size = c.input_size
    if size is not None:
        h, w = size
    if h < 1 or w < 1:
        raise n.fail("the model accepts any image size; say which with --input-size H[,W]")
    if ch not in (1, 3):
        raise n.fail(f"the input has {ch} channels; convlens supports 1 or 3")
    if max(h, w) > MAX_SIDE:
        raise n.fail(f"input size {h}×{w} is over {MAX_SIDE} pixels a side")
    checked_elements((ch, h, w), what="the input image")
    c.input, c.input_shape = n.name, (ch, h, w)
    c.samples[n.name] = torch.zeros(1, 1, 1, 1).expand(1, ch, h, w)  # shapes only: no memory


def _const(c: _Converter, n: _Node) -> None:
    if n.name not in c.weights:
        raise n.fail("the weights manifest holds no value for this constant")
    c.consts[n.name] = c.weights[n.name]


def _identity(c: _Converter, n: _Node) -> None:
    if not n.inputs:
        raise n.fail("it has no input")
    c.alias[n.name] = c.value(n.inputs[0])


def _cast(c: _Converter, n: _Node) -> None:
    src = c.value(n.inputs[0]) if n.inputs else ""
    if src in c.consts:
        to = n._attr("DstT").get("type", "DT_FLOAT")
        c.consts[n.name] = c.consts[src].astype(np.float32 if to == "DT_FLOAT" else np.int64)
    elif n._attr("DstT").get("type", "DT_FLOAT") == "DT_FLOAT":
        c.alias[n.name] = c.act(n, 0, rank=None)
    else:
        raise n.fail("casting an activation to a non-float type is not supported")


def _fold(fn: Callable[[_Node, list[np.ndarray]], np.ndarray]) -> Callable[..., None]:
    """A handler computing its op on constant inputs at load time (shape arithmetic)."""

    def handle(c: _Converter, n: _Node) -> None:
        if not all(c.is_const(i) for i in n.inputs):
            raise n.fail(f"{n.op} is supported only on constants (shape arithmetic)")
        result = np.asarray(fn(n, [c.consts[c.value(i)] for i in n.inputs]))
        checked_elements(result.shape, what=f"node {n.name!r}")
        c.consts[n.name] = result

    return handle


def _shape(c: _Converter, n: _Node) -> None:
    src = c.value(n.inputs[0]) if n.inputs else ""
    if src in c.consts:
        c.consts[n.name] = np.array(c.consts[src].shape, dtype=np.int64)
        return
    t = c.samples[c.act(n, 0, rank=None)]
    shape = list(t.shape)
    if t.dim() == 4:
        shape = [shape[0], shape[2], shape[3], shape[1]]
    shape[0] = -1  # the batch: any size (Reshape targets built from it then keep -1)
    c.consts[n.name] = np.array(shape, dtype=np.int64)


def _strided_slice(n: _Node, a: list[np.ndarray]) -> np.ndarray:
    x, begin, end, strides = a[0], a[1], a[2], a[3] if len(a) > 3 else None
    if n.int("ellipsis_mask", 0) or n.int("new_axis_mask", 0):
        raise n.fail("StridedSlice with ellipsis or new-axis masks is not supported")
    bm, em, sm = n.int("begin_mask", 0), n.int("end_mask", 0), n.int("shrink_axis_mask", 0)
    index: list[Any] = []
    for i in range(len(begin)):
        step = int(strides[i]) if strides is not None else 1
        if sm >> i & 1:
            index.append(int(begin[i]))
            continue
        lo = None if bm >> i & 1 else int(begin[i])
        hi = None if em >> i & 1 else int(end[i])
        index.append(slice(lo, hi, step))
    return np.asarray(x[tuple(index)])


def _pack(n: _Node, a: list[np.ndarray]) -> np.ndarray:
    return np.stack(a, axis=n.int("axis", 0))


def _prod(n: _Node, a: list[np.ndarray]) -> np.ndarray:
    axes = tuple(int(v) for v in np.atleast_1d(a[1]))
    return np.prod(a[0], axis=axes, keepdims=n.bool("keep_dims", False))


def _expand_dims(n: _Node, a: list[np.ndarray]) -> np.ndarray:
    return np.expand_dims(a[0], int(np.asarray(a[1]).reshape(-1)[0]))


def _squeeze_const(n: _Node, a: list[np.ndarray]) -> np.ndarray:
    axes = n.ints("squeeze_dims", n.ints("axis", []))
    return np.squeeze(a[0], axis=tuple(axes)) if axes else np.squeeze(a[0])


def _reshape_const(n: _Node, a: list[np.ndarray]) -> np.ndarray:
    return a[0].reshape([int(v) for v in a[1]])


def _unary_const(fn: Callable[[np.ndarray], np.ndarray]) -> Callable[..., None]:
    return _fold(lambda n, a: fn(a[0]))


# -- convolutions


def _conv_pads(
    c: _Converter, n: _Node, src: str, k: tuple[int, int], s: list[int], d: list[int]
) -> list[int]:
    """``[top, bottom, left, right]`` for the op's ``padding`` attribute."""
    mode = n.string("padding", "VALID")
    if mode == "VALID":
        return [0, 0, 0, 0]
    if mode == "SAME":
        _, _, h, w = c.samples[src].shape
        top, bottom = same_padding(int(h), k[0], s[0], d[0])
        left, right = same_padding(int(w), k[1], s[1], d[1])
        return [top, bottom, left, right]
    if mode == "EXPLICIT":
        p = n.ints("explicit_paddings", [])
        if len(p) != 8 or any(p[i] for i in (0, 1, 6, 7)) or min(p) < 0 or max(p) > MAX_SIDE:
            raise n.fail(f"explicit_paddings {p} are not (H, W) paddings in NHWC order")
        return p[2:6]
    raise n.fail(f"padding {mode!r} is not supported; accepted: SAME, VALID, EXPLICIT")


def _check_nhwc(n: _Node) -> None:
    fmt = n.string("data_format", "NHWC")
    if fmt != "NHWC":
        raise n.fail(f"data_format {fmt} is not supported; accepted: NHWC (as TF.js runs it)")


def _spatial(n: _Node, key: str) -> list[int]:
    v = n.ints(key, [1, 1, 1, 1])
    if len(v) != 4 or v[0] != 1 or v[3] != 1 or min(v) < 1 or max(v) > MAX_SIDE:
        raise n.fail(f"{key} {v} are not [1, h, w, 1]")
    return v[1:3]


def _fused(n: _Node) -> tuple[list[str], list[str]]:
    """(extra ops, activations) of a fused op's ``fused_ops`` attribute, lower-cased."""
    ops = [s.lower() for s in n.strings("fused_ops")]
    extra = [o for o in ops if o in ("biasadd", "fusedbatchnorm", "add")]
    acts = [o for o in ops if o not in extra]
    if len(acts) > 1 or any(o not in (*_ACTIVATIONS, "prelu") for o in acts):
        raise n.fail(f"fused ops {ops} are not supported")
    return extra, acts


def _conv(c: _Converter, n: _Node) -> None:
    _check_nhwc(n)
    src = c.act(n, 0)
    w: np.ndarray = c.const(n, 1).astype(np.float64)
    if w.ndim != 4:
        raise n.fail(f"filter of shape {w.shape} is not (kh, kw, in, out)")
    s, d = _spatial(n, "strides"), _spatial(n, "dilations")
    kh, kw, fin, fout = (int(v) for v in w.shape)
    cin = int(c.samples[src].shape[1])
    depthwise = "Depthwise" in n.op
    if depthwise:
        if fin != cin:
            raise n.fail(f"depthwise filter {w.shape} for an input with {cin} channels")
        groups, cout = cin, cin * fout
        weight = w.transpose(2, 3, 0, 1).reshape(cout, 1, kh, kw)  # channel c·mult + j
    else:
        if fin < 1 or cin % fin:
            raise n.fail(f"filter {w.shape} does not fit an input with {cin} channels")
        groups, cout = cin // fin, fout
        weight = w.transpose(3, 2, 0, 1)
    bias: np.ndarray | None = None
    residual: str | None = None
    extra, acts = _fused(n) if n.op.startswith(("_Fused", "Fused")) else ([], [])
    args = n.inputs[2:]
    if "fusedbatchnorm" in extra:  # conv → BN: scale the filters, shift the bias
        if len(args) < 4:
            raise n.fail("FusedBatchNorm needs scale, offset, mean and variance")
        scale, offset, mean, var = (c.const(n, 2 + i).astype(np.float64) for i in range(4))
        factor = scale / np.sqrt(var + n.float("epsilon", 1e-3))
        weight = weight * factor.reshape(-1, 1, 1, 1)
        bias = offset - mean * factor
    elif extra and not c.is_const(n.inputs[2]):
        # TF's remapper fuses a residual into the conv: relu(conv(x) + y) with y a live tensor
        # (ResNet50's conv2_block1_out), which TF.js runs as a broadcast add
        if extra not in (["biasadd"], ["add"]):
            raise n.fail(f"fused ops {extra} with a live tensor are not supported")
        residual = c.act(n, 2)
    elif extra:
        bias = c.const(n, 2).astype(np.float64)
    top, bottom, left, right = _conv_pads(c, n, src, (kh, kw), s, d)
    layer = c.layer_name(n)
    if (top, left) != (bottom, right):
        pad = nn.ZeroPad2d((left, right, top, bottom))
        src = c.emit(n, pad, src, n.name + "#pad", "_pad", name=layer)
        top = left = 0
    conv = nn.Conv2d(cin, cout, (kh, kw), tuple(s), (top, left), tuple(d), groups,  # type: ignore[arg-type]
                     bias=bias is not None)  # fmt: skip
    conv.weight.data = _tensor(weight)
    if bias is not None:
        conv.bias.data = _tensor(np.broadcast_to(bias, (cout,)))  # type: ignore[union-attr]
    live = residual is not None
    out = n.name + "#conv" if acts or live else n.name
    c.emit(n, conv, src, out, name=layer)
    if residual is not None:
        summed = n.name + "#add" if acts else n.name
        if c.samples[residual].shape != c.samples[out].shape:
            raise n.fail(
                f"fused residual {tuple(c.samples[residual].shape)} does not match the conv's "
                f"output {tuple(c.samples[out].shape)}"
            )
        c.emit_fn(n, operator.add, [out, residual], result=summed)
        out = summed
    if acts:
        _emit_activation(c, n, acts[0], out, prelu_pos=2 + len(extra))


def _emit_activation(c: _Converter, n: _Node, act: str, src: str, prelu_pos: int) -> None:
    if act == "prelu":
        alpha = c.to_torch_layout(n, c.const(n, prelu_pos), c.samples[src].dim())
        c.emit(n, Prelu(alpha), src, n.name)
    else:
        c.emit(n, _ACTIVATIONS[act](n), src, n.name)


def _matmul(c: _Converter, n: _Node) -> None:
    src = c.act(n, 0, rank=2)
    if n.bool("transpose_a", False):
        raise n.fail("MatMul with transpose_a is not supported")
    w = c.const(n, 1).astype(np.float32)
    if w.ndim != 2:
        raise n.fail(f"MatMul with a weight of shape {w.shape} is not supported")
    w = w if n.bool("transpose_b", False) else w.T  # torch keeps (out, in)
    extra, acts = _fused(n) if n.op == "_FusedMatMul" else ([], [])
    lin = nn.Linear(w.shape[1], w.shape[0], bias=bool(extra))
    lin.weight.data = _tensor(w)
    if extra:
        if extra != ["biasadd"]:
            raise n.fail(f"fused ops {extra} are not supported on MatMul")
        bias = np.broadcast_to(c.const(n, 2), (w.shape[0],)).astype(np.float32)
        lin.bias.data = _tensor(bias)
    out = n.name + "#matmul" if acts else n.name
    c.emit(n, lin, src, out, name=c.layer_name(n))
    if acts:
        _emit_activation(c, n, acts[0], out, prelu_pos=2 + len(extra))


def _batch_norm(c: _Converter, n: _Node) -> None:
    _check_nhwc(n)
    src = c.act(n, 0)
    scale, offset, mean, var = (c.const(n, i).astype(np.float32) for i in range(1, 5))
    ch = int(c.samples[src].shape[1])
    if any(a.shape != (ch,) for a in (scale, offset, mean, var)):
        raise n.fail(f"batch-norm parameters do not all have shape ({ch},)")
    bn = nn.BatchNorm2d(ch, eps=n.float("epsilon", 1e-3))
    bn.weight.data, bn.bias.data = _tensor(scale), _tensor(offset)
    bn.running_mean.data = _tensor(mean)  # type: ignore[union-attr]
    bn.running_var.data = _tensor(var)  # type: ignore[union-attr]
    c.emit(n, bn, src, n.name)


def _activation(act: str) -> Callable[[_Converter, _Node], None]:
    def handle(c: _Converter, n: _Node) -> None:
        c.emit(n, _ACTIVATIONS[act](n), c.act(n, 0, rank=None), n.name)

    return handle


def _prelu(c: _Converter, n: _Node) -> None:
    src = c.act(n, 0, rank=None)
    c.emit(n, Prelu(c.to_torch_layout(n, c.const(n, 1), c.samples[src].dim())), src, n.name)


def _softmax(c: _Converter, n: _Node) -> None:
    src = c.act(n, 0, rank=None)
    rank = c.samples[src].dim()
    if rank not in (2, 4):
        raise n.fail(f"Softmax over a rank-{rank} tensor is not supported")
    c.emit(n, nn.Softmax(dim=1), src, n.name)  # TF's last axis: features, or NCHW channels


# -- pooling and reductions


def _pool(c: _Converter, n: _Node) -> None:
    _check_nhwc(n)
    src = c.act(n, 0)
    k, s = _spatial(n, "ksize"), _spatial(n, "strides")
    kt, st = (k[0], k[1]), (s[0], s[1])
    top, bottom, left, right = _conv_pads(c, n, src, kt, s, [1, 1])
    symmetric = (top, left) == (bottom, right)
    module: nn.Module
    if n.op == "MaxPool":
        if not symmetric:
            pad = nn.ConstantPad2d((left, right, top, bottom), float("-inf"))
            src = c.emit(n, pad, src, n.name + "#pad", "_pad")
            top = left = 0
        module = nn.MaxPool2d(kt, st, (top, left))
    elif symmetric:
        module = nn.AvgPool2d(kt, st, (top, left), count_include_pad=False)
    else:
        module = SamePadAvgPool(kt, st, [left, right, top, bottom])
    c.emit(n, module, src, n.name)


def _reduce(kind: str) -> Callable[[_Converter, _Node], None]:
    def handle(c: _Converter, n: _Node) -> None:
        src = c.act(n, 0)
        axes = sorted(int(a) % 4 for a in np.atleast_1d(c.const(n, 1)))
        if axes != [1, 2]:
            raise n.fail(f"{n.op} over axes {axes} is not supported (only height and width)")
        pool = nn.AdaptiveAvgPool2d(1) if kind == "mean" else nn.AdaptiveMaxPool2d(1)
        if n.bool("keep_dims", False):
            c.emit(n, pool, src, n.name)
        else:
            pooled = c.emit(n, pool, src, n.name + "#pooled")
            c.emit(n, nn.Flatten(), pooled, n.name, "_flatten")

    return handle


# -- elementwise


def _binary(c: _Converter, n: _Node) -> None:
    kind = _BINARY_OPS[n.op]
    if len(n.inputs) != 2:
        raise n.fail(f"{n.op} needs two inputs, has {len(n.inputs)}")
    a, b = (c.value(i) for i in n.inputs)
    if c.is_const(a) and c.is_const(b):
        shape = np.broadcast_shapes(c.consts[a].shape, c.consts[b].shape)
        checked_elements(shape, what=f"node {n.name!r}")
        c.consts[n.name] = np.asarray(_NP_BINARY[kind](c.consts[a], c.consts[b]))
        return
    if c.is_const(a) or c.is_const(b):
        const_first = c.is_const(a)
        const, src = (a, b) if const_first else (b, a)
        src = c.act(n, 1 if const_first else 0, rank=None)
        if kind == "add" and _fold_bias(c, n, src, c.consts[const]):
            return
        if _affine(c, n, kind, src, c.consts[const], const_first):
            return
        t = c.to_torch_layout(n, c.consts[const], c.samples[src].dim())
        c.emit(n, ConstantOp(kind, t, const_first), src, n.name)
        return
    x, y = c.act(n, 0, rank=None), c.act(n, 1, rank=None)
    if c.samples[x].dim() != c.samples[y].dim():
        raise n.fail("combining activations of different ranks is not supported")
    c.emit_fn(n, _BINARY[kind], [x, y])


def _affine(
    c: _Converter, n: _Node, kind: str, src: str, const: np.ndarray, const_first: bool
) -> bool:
    """A per-channel ``x·a + b`` (Mul/Add/Sub by constants) as a ``BatchNorm2d`` layer.

    A batch norm after a depthwise conv or an addition reaches the graph as ``Mul`` then
    ``Add`` by per-channel constants; one ``BatchNorm2d`` (mean 0, variance 1, so exactly
    ``x·weight + bias``) named after its Keras layer keeps it a layer that convlens
    lists, instead of two anonymous functions. A following affine op merges into it.
    """
    x = c.samples[src]
    channels = int(x.shape[1]) if x.dim() == 4 else 0
    arr = np.asarray(const, dtype=np.float64)
    if kind not in ("add", "sub", "mul") or not channels:
        return False
    if arr.size != 1 and (arr.shape[-1:] != (channels,) or arr.size != channels):
        return False
    value = np.broadcast_to(arr.reshape(-1), (channels,))
    scale, shift = {
        "mul": (value, np.zeros(channels)),
        "add": (np.ones(channels), value),
        "sub": (-np.ones(channels), value) if const_first else (np.ones(channels), -value),
    }[kind]
    last = c.ops[-1] if c.ops else None
    if (
        last is not None
        and last.output == src
        and id(last.module) in c.affine
        and c.uses.get(src, 0) == 1
        and isinstance(last.module, nn.BatchNorm2d)
    ):
        bn = last.module
        w0, b0 = bn.weight.detach().double().numpy(), bn.bias.detach().double().numpy()
        bn.weight.data = _tensor(w0 * scale)
        bn.bias.data = _tensor(b0 * scale + shift)
        with torch.no_grad():
            c.samples[src] = bn(c.samples[last.inputs[0]])
        c.alias[n.name] = src
        return True
    bn = nn.BatchNorm2d(channels, eps=1e-12)  # 1 + 1e-12 == 1 in float32: exactly x·w + b
    bn.weight.data = _tensor(scale)
    bn.bias.data = _tensor(shift)
    c.affine.add(id(bn))
    rel = n.name.removeprefix(c.prefix)
    scope = c.prefix + rel.split("/")[0] if "/" in rel else n.name
    c.emit(n, bn, src, n.name, name=scope)
    return True


def _fold_bias(c: _Converter, n: _Node, src: str, bias: np.ndarray) -> bool:
    """Fold a per-feature constant addition into the bias-less conv/linear that produced it."""
    last = c.ops[-1] if c.ops else None
    if last is None or last.output != src or c.uses.get(src, 0) != 1:
        return False
    mod = last.module
    if not isinstance(mod, nn.Conv2d | nn.Linear) or mod.bias is not None:
        return False
    width = mod.out_channels if isinstance(mod, nn.Conv2d) else mod.out_features
    flat = np.asarray(bias, dtype=np.float32).reshape(-1)
    if flat.size not in (1, width) or np.asarray(bias).ndim > 1:
        return False
    mod.bias = nn.Parameter(_tensor(np.broadcast_to(flat, width)))
    with torch.no_grad():
        c.samples[src] = mod(c.samples[last.inputs[0]])
    c.alias[n.name] = src
    return True


def _add_n(c: _Converter, n: _Node) -> None:
    if all(c.is_const(i) for i in n.inputs):
        parts = [c.consts[c.value(i)] for i in n.inputs]
        checked_elements(np.broadcast_shapes(*(p.shape for p in parts)), what=f"node {n.name!r}")
        c.consts[n.name] = sum(parts[1:], parts[0])
        return
    xs = [c.act(n, i, rank=None) for i in range(len(n.inputs))]
    if len({c.samples[x].dim() for x in xs}) != 1:
        raise n.fail("AddN of activations of different ranks is not supported")
    c.emit_fn(n, _sum, xs)


def _concat(c: _Converter, n: _Node) -> None:
    if len(n.inputs) < 2:
        raise n.fail("ConcatV2 needs values and an axis")
    axis = int(np.asarray(c.const(n, len(n.inputs) - 1)).reshape(-1)[0])
    parts = n.inputs[:-1]
    if all(c.is_const(i) for i in parts):
        c.consts[n.name] = np.concatenate([c.consts[c.value(i)] for i in parts], axis=axis)
        return
    xs = [c.act(n, i, rank=None) for i in range(len(parts))]
    rank = c.samples[xs[0]].dim()
    if any(c.samples[x].dim() != rank for x in xs):
        raise n.fail("ConcatV2 of activations of different ranks is not supported")
    axis = axis % rank
    c.emit_fn(n, _cat, xs, dim=_AXIS_4D[axis] if rank == 4 else axis)


# -- padding and shapes


def _pad(c: _Converter, n: _Node) -> None:
    src = c.act(n, 0)
    p = np.asarray(c.const(n, 1))
    if p.shape != (4, 2) or p[0].any() or p[3].any() or p.min() < 0 or p.max() > MAX_SIDE:
        raise n.fail(f"paddings {p.tolist()} are not non-negative (H, W) paddings of NHWC")
    (top, bottom), (left, right) = (int(v) for v in p[1]), (int(v) for v in p[2])
    box = (left, right, top, bottom)
    module: nn.Module
    if n.op == "MirrorPad":
        mode = n.string("mode", "REFLECT")
        if mode != "REFLECT":
            raise n.fail(f"MirrorPad mode {mode} is not supported; accepted: REFLECT")
        module = nn.ReflectionPad2d(box)
    elif n.op == "PadV2" and len(n.inputs) > 2:
        module = nn.ConstantPad2d(box, float(np.asarray(c.const(n, 2)).reshape(-1)[0]))
    else:
        module = nn.ZeroPad2d(box)
    c.emit(n, module, src, n.name)


def _reshape(c: _Converter, n: _Node) -> None:
    if c.is_const(n.inputs[0]):
        _fold(_reshape_const)(c, n)
        return
    src = c.act(n, 0, rank=None)
    target = [int(v) for v in np.asarray(c.const(n, 1)).reshape(-1)]
    if target and target[0] == 1 and -1 not in target:
        target[0] = -1  # the batch, when the converter froze it at 1
    c.emit(n, TFReshape(shape=tuple(target)), src, n.name)


def _squeeze(c: _Converter, n: _Node) -> None:
    if c.is_const(n.inputs[0]):
        _fold(_squeeze_const)(c, n)
        return
    src = c.act(n, 0, rank=None)
    axes = n.ints("squeeze_dims", n.ints("axis", []))
    if not axes or 0 in [a % c.samples[src].dim() for a in axes]:
        raise n.fail("Squeeze must name its axes, and not the batch axis")
    c.emit(n, TFReshape(squeeze=tuple(axes)), src, n.name)


HANDLERS: dict[str, Callable[[_Converter, _Node], None]] = {
    "Placeholder": _placeholder,
    "Const": _const,
    "Identity": _identity,
    "StopGradient": _identity,
    "Cast": _cast,
    "Conv2D": _conv,
    "DepthwiseConv2dNative": _conv,
    "_FusedConv2D": _conv,
    "FusedDepthwiseConv2dNative": _conv,
    "MatMul": _matmul,
    "_FusedMatMul": _matmul,
    "FusedBatchNorm": _batch_norm,
    "FusedBatchNormV2": _batch_norm,
    "FusedBatchNormV3": _batch_norm,
    "Relu": _activation("relu"),
    "Relu6": _activation("relu6"),
    "Elu": _activation("elu"),
    "Selu": _activation("selu"),
    "Sigmoid": _activation("sigmoid"),
    "Tanh": _activation("tanh"),
    "Softplus": _activation("softplus"),
    "LeakyRelu": _activation("leakyrelu"),
    "Prelu": _prelu,
    "Softmax": _softmax,
    "MaxPool": _pool,
    "AvgPool": _pool,
    "Mean": _reduce("mean"),
    "Max": _reduce("max"),
    **{op: _binary for op in _BINARY_OPS},
    "AddN": _add_n,
    "ConcatV2": _concat,
    "Pad": _pad,
    "PadV2": _pad,
    "MirrorPad": _pad,
    "Reshape": _reshape,
    "Squeeze": _squeeze,
    "Shape": _shape,
    "StridedSlice": _fold(_strided_slice),
    "Pack": _fold(_pack),
    "Prod": _fold(_prod),
    "ExpandDims": _fold(_expand_dims),
    "Neg": _unary_const(np.negative),
    "Sqrt": _unary_const(np.sqrt),
    "Rsqrt": _unary_const(lambda a: 1 / np.sqrt(a)),
}


# ------------------------------------------------------------------ loading


def convert_graph(
    doc: dict[str, Any], weights: dict[str, np.ndarray], input_size: tuple[int, int] | None = None
) -> tuple[nn.Module, InputSpec]:
    """The torch network computing a graph model's output, and its input spec."""
    conv = _Converter(doc, weights)
    conv.input_size = input_size
    net, (ch, h, w) = conv.run()
    return net, InputSpec(ch, h, w, conv.mean, conv.std)


def load(source: str, opts: LoadOptions) -> Model:
    from convlens.model.formats.base import input_size_override

    path = model_file(source)
    doc = read_model_json(path)
    if doc.get("format") != "graph-model":
        raise ConvlensError(f"{str(path)!r} is not a TF.js graph model (format: graph-model)")
    named = read_weights(path.parent, doc.get("weightsManifest") or [], Budget())
    weights = dict(named)
    net, spec = convert_graph(doc, weights, input_size_override(opts.input_spec))
    model = make_model(
        net,
        spec,
        path,
        opts.classes,
        name=path.stem if path.name != MODEL_FILE else path.parent.name or "tfjs-graph-model",
        input_overrides=opts.input_spec,
        file_classes=metadata_classes(doc),
    )
    return model.eval()  # else Model.probabilities restores the wrapper's training mode


FORMATS.add(
    "tfjs-graph",
    ModelFormat(
        detect, load, "a TensorFlow.js graph model (model.json with format graph-model + shards)"
    ),
)
