"""ONNX models (``.onnx``), converted to torch modules for the CNN operator set.

Why not onnx2torch: it imports torchvision at import time, and torchvision builds are pinned
to one torch release, so it breaks beside the torch that convlens runs on. A CNN needs few
operators, and converting them here also gives ordinary, well-named modules
(``nn.Conv2d`` named after the exporter's ``/layer1/layer1.0/conv1/Conv`` path, or after its
weight ``conv1.weight``) that every convlens view can hook.

Supported: Conv (explicit pads, asymmetric ones through ``ZeroPad2d``), Relu, LeakyRelu,
Sigmoid, Tanh, Clip (as ReLU6/Hardtanh), MaxPool, AveragePool, GlobalAveragePool,
GlobalMaxPool, ReduceMean over H and W, BatchNormalization, Gemm, MatMul (+ Add of a
constant bias), Flatten, Reshape to (batch, features), Add, Concat, Softmax, Dropout,
Identity and Constant, plus the shape arithmetic that exporters emit for a dynamic batch
(Shape, Gather, Unsqueeze, Squeeze, Cast and Concat on constants, folded at load time).
The graph is read with the ``onnx`` package (protobuf only: loading cannot run code);
``onnx`` comes with the ``formats`` extra.

>>> m = load_model("resnet.onnx", input_spec={"mean": [0.485, 0.456, 0.406],
...                                          "std": [0.229, 0.224, 0.225]})  # doctest: +SKIP
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from convlens.errors import ConvlensError
from convlens.io.spec import InputSpec
from convlens.model.core import Model
from convlens.model.formats.base import make_model, parse_class_list
from convlens.model.formats.keras_layers import same_padding
from convlens.model.formats.opgraph import Op, assemble, clean_name, drop_final_softmax, unique
from convlens.model.load import FORMATS, LoadOptions, ModelFormat


def _onnx() -> Any:
    try:
        import onnx
    except ImportError:
        raise ConvlensError(
            "reading ONNX files needs onnx: pip install 'convlens[formats]'"
        ) from None
    return onnx


def detect(source: str) -> bool:
    p = Path(source)
    return p.suffix.lower() == ".onnx" and p.is_file()


class _Node:
    """An ONNX node with its attributes decoded and its position for error messages."""

    def __init__(self, proto: Any, index: int, onnx: Any) -> None:
        self.proto = proto
        self.op = str(proto.op_type)
        self.inputs = [str(i) for i in proto.input]
        self.outputs = [str(o) for o in proto.output]
        self.index = index
        self.attrs = {a.name: onnx.helper.get_attribute_value(a) for a in proto.attribute}
        self.raw_name = str(proto.name)

    def fail(self, why: str) -> ConvlensError:
        return ConvlensError(f"ONNX node {self.index} ({self.raw_name or '?'}, {self.op}): {why}")

    def ints(self, key: str, default: list[int]) -> list[int]:
        return [int(v) for v in self.attrs.get(key, default)]


class _Converter:
    def __init__(self, model: Any, onnx: Any) -> None:
        self.onnx = onnx
        graph = model.graph
        self.consts: dict[str, np.ndarray] = {
            t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer
        }
        self.ops: list[Op] = []
        self.alias: dict[str, str] = {}
        self.taken: set[str] = set()
        self.shapes: dict[str, tuple[int, ...]] = {}
        inputs = [i for i in graph.input if i.name not in self.consts]
        if len(inputs) != 1:
            raise ConvlensError(
                f"the ONNX model has {len(inputs)} inputs; convlens needs one image"
            )
        self.input = str(inputs[0].name)
        dims = inputs[0].type.tensor_type.shape.dim
        self.input_shape = tuple(int(d.dim_value) if d.dim_value > 0 else -1 for d in dims)
        if len(graph.output) != 1:
            raise ConvlensError(
                f"the ONNX model has {len(graph.output)} outputs; convlens needs one"
            )
        self.output = str(graph.output[0].name)
        self.graph = graph
        self.shapes = _inferred_shapes(model, onnx)

    # -------------------------------------------------------------- helpers

    def value(self, name: str) -> str:
        return self.alias.get(name, name)

    def const(self, node: _Node, pos: int, required: bool = True) -> np.ndarray | None:
        if pos >= len(node.inputs) or not node.inputs[pos]:
            if required:
                raise node.fail(f"input {pos} is missing")
            return None
        name = self.value(node.inputs[pos])
        if name not in self.consts:
            if required:
                raise node.fail(f"input {pos} ({name}) must be a constant (a weight)")
            return None
        return self.consts[name]

    def is_const(self, name: str) -> bool:
        return self.value(name) in self.consts

    def name_for(self, node: _Node) -> str:
        weight = node.inputs[1] if len(node.inputs) > 1 else ""
        base = ""
        if weight.endswith(".weight") and not weight.startswith("onnx::"):
            base = weight[: -len(".weight")]
        if not base:
            raw = node.raw_name.removeprefix("node_")  # the dynamo exporter's prefix
            base = clean_name(raw, f"{node.op.lower()}_{node.index}")
        return unique(base, self.taken)

    def add(self, node: _Node, module: nn.Module, src: str | None = None) -> None:
        name = self.name_for(node)
        self.ops.append(
            Op(name, [self.value(src or node.inputs[0])], node.outputs[0], module=module)
        )

    def fn(self, node: _Node, fn: Callable[..., Any], inputs: list[str], **kw: Any) -> None:
        out = node.outputs[0]
        self.ops.append(Op(out, [self.value(i) for i in inputs], out, fn=fn, kwargs=kw))

    def run(self) -> tuple[nn.Module, tuple[int, ...]]:
        for i, proto in enumerate(self.graph.node):
            node = _Node(proto, i, self.onnx)
            handler = _HANDLERS.get(node.op)
            if handler is None:
                raise node.fail(
                    f"operator {node.op!r} is not supported; accepted: "
                    + ", ".join(sorted(_HANDLERS))
                )
            handler(self, node)
        output, _ = drop_final_softmax(self.ops, self.value(self.output))
        return assemble(self.input, self.ops, output), self.input_shape


def _inferred_shapes(model: Any, onnx: Any) -> dict[str, tuple[int, ...]]:
    """Every value's shape from ONNX shape inference; ``-1`` for a symbolic dim (the batch)."""
    try:
        graph = onnx.shape_inference.infer_shapes(model).graph
    except Exception:  # inference is a help for Shape nodes, not a requirement
        graph = model.graph
    shapes: dict[str, tuple[int, ...]] = {}
    for info in [*graph.input, *graph.value_info, *graph.output]:
        t = info.type.tensor_type
        if t.HasField("shape"):
            shapes[info.name] = tuple(d.dim_value if d.dim_value > 0 else -1 for d in t.shape.dim)
    return shapes


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(a, dtype=np.float32, copy=True))  # owned, writable


def _pads(node: _Node, conv: _Converter, k: list[int], s: list[int], d: list[int]) -> list[int]:
    """``[top, left, bottom, right]`` from ``pads`` or ``auto_pad``.

    ``SAME_UPPER`` is TensorFlow's ``same`` (odd pixel at the end), ``SAME_LOWER`` puts it at
    the start; both need the input's size, from shape inference.
    """
    auto = node.attrs.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else str(auto)
    if auto in ("NOTSET", ""):
        pads = node.ints("pads", [0, 0, 0, 0])
        return [pads[0], pads[1], pads[2], pads[3]]
    if auto == "VALID":
        return [0, 0, 0, 0]
    shape = conv.shapes.get(node.inputs[0])  # the raw name: an alias may skip a transpose
    if auto not in ("SAME_UPPER", "SAME_LOWER") or shape is None or len(shape) != 4:
        raise node.fail(f"auto_pad {auto} is not supported here; re-export with explicit pads")
    (top, bottom), (left, right) = (same_padding(shape[2 + i], k[i], s[i], d[i]) for i in range(2))
    if auto == "SAME_LOWER":
        top, bottom, left, right = bottom, top, right, left
    return [top, left, bottom, right]


def _conv(c: _Converter, n: _Node) -> None:
    w = c.const(n, 1)
    assert w is not None
    if w.ndim != 4:
        raise n.fail(f"only 2-D convolutions are supported (weight shape {w.shape})")
    b = c.const(n, 2, required=False)
    k = n.ints("kernel_shape", list(w.shape[2:]))
    s, d = n.ints("strides", [1, 1]), n.ints("dilations", [1, 1])
    groups = int(n.attrs.get("group", 1))
    top, left, bottom, right = _pads(n, c, k, s, d)
    src, name = n.inputs[0], c.name_for(n)
    if (top, left) != (bottom, right):
        pad_name = unique(name + "_pad", c.taken)
        c.ops.append(
            Op(
                pad_name,
                [c.value(src)],
                src + "#pad",
                module=nn.ZeroPad2d((left, right, top, bottom)),
            )
        )
        src, top, left = src + "#pad", 0, 0
    conv = nn.Conv2d(
        w.shape[1] * groups, w.shape[0], (k[0], k[1]), (s[0], s[1]), (top, left), (d[0], d[1]),
        groups, bias=b is not None,
    )  # fmt: skip
    conv.weight.data = _t(w)
    if b is not None:
        conv.bias.data = _t(b)  # type: ignore[union-attr]
    c.ops.append(Op(name, [c.value(src)], n.outputs[0], module=conv))


def _pool(c: _Converter, n: _Node) -> None:
    k = n.ints("kernel_shape", [1, 1])
    s = n.ints("strides", [1, 1])
    top, left, bottom, right = _pads(n, c, k, s, [1, 1])
    ceil = bool(n.attrs.get("ceil_mode", 0))
    include = bool(n.attrs.get("count_include_pad", 0))
    src = n.inputs[0]
    if (top, left) != (bottom, right):
        # One extra pixel at the end: with stride > 1, ceil_mode adds exactly that partial
        # window (over real pixels only); a max pool can instead pad with -inf.
        extra_end = bottom - top in (0, 1) and right - left in (0, 1)
        if extra_end and min(s) > 1 and not ceil and not include:
            ceil = True
        elif n.op == "MaxPool":
            pad_name = unique(clean_name(n.raw_name, "pool") + "_pad", c.taken)
            pad = nn.ConstantPad2d((left, right, top, bottom), float("-inf"))
            c.ops.append(Op(pad_name, [c.value(src)], src + "#pad", module=pad))
            src, top, left = src + "#pad", 0, 0
        else:
            raise n.fail(f"average pooling with pads {[top, left, bottom, right]} is not supported")
    module: nn.Module
    if n.op == "MaxPool":
        d = n.ints("dilations", [1, 1])
        module = nn.MaxPool2d((k[0], k[1]), (s[0], s[1]), (top, left), (d[0], d[1]), ceil_mode=ceil)
    else:
        module = nn.AvgPool2d((k[0], k[1]), (s[0], s[1]), (top, left), ceil, include)
    c.add(n, module, src)


def _batch_norm(c: _Converter, n: _Node) -> None:
    scale, bias, mean, var = (c.const(n, i) for i in range(1, 5))
    assert scale is not None and bias is not None and mean is not None and var is not None
    bn = nn.BatchNorm2d(scale.shape[0], eps=float(n.attrs.get("epsilon", 1e-5)))
    bn.weight.data, bn.bias.data = _t(scale), _t(bias)
    bn.running_mean.data, bn.running_var.data = _t(mean), _t(var)  # type: ignore[union-attr]
    c.add(n, bn)


def _gemm(c: _Converter, n: _Node) -> None:
    if int(n.attrs.get("transA", 0)):
        raise n.fail("Gemm with transA=1 is not supported")
    w = c.const(n, 1)
    assert w is not None
    w = w * float(n.attrs.get("alpha", 1.0))
    w = w if int(n.attrs.get("transB", 0)) else w.T  # torch keeps (out, in)
    b = c.const(n, 2, required=False)
    lin = nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
    lin.weight.data = _t(w)
    if b is not None:
        lin.bias.data = _t(np.broadcast_to(b * float(n.attrs.get("beta", 1.0)), (w.shape[0],)))
    c.add(n, lin)


def _matmul(c: _Converter, n: _Node) -> None:
    w = c.const(n, 1)
    assert w is not None
    if w.ndim != 2:
        raise n.fail(f"MatMul with a weight of shape {w.shape} is not supported")
    lin = nn.Linear(w.shape[0], w.shape[1], bias=False)
    lin.weight.data = _t(w.T)
    c.add(n, lin)


def _add(c: _Converter, n: _Node) -> None:
    a, b = n.inputs[:2]
    if c.is_const(a) or c.is_const(b):
        const, other = (a, b) if c.is_const(a) else (b, a)
        last = c.ops[-1] if c.ops else None
        # MatMul + Add: the constant is the Linear layer's bias.
        if (
            last is not None
            and isinstance(last.module, nn.Linear)
            and last.module.bias is None
            and last.output == c.value(other)
        ):
            bias = np.broadcast_to(c.consts[c.value(const)], (last.module.out_features,))
            last.module.bias = nn.Parameter(_t(bias))
            c.alias[n.outputs[0]] = last.output
            return
        raise n.fail("adding a constant is only supported as the bias after a MatMul")
    c.fn(n, operator.add, [a, b])


def _concat(c: _Converter, n: _Node) -> None:
    axis = int(n.attrs.get("axis", 1))
    if all(c.is_const(i) for i in n.inputs):  # shape arithmetic
        parts = [c.consts[c.value(i)] for i in n.inputs]
        c.consts[n.outputs[0]] = np.concatenate(parts, axis=axis)
        return
    c.fn(n, _cat, n.inputs, dim=axis)


def _cat(*xs: torch.Tensor, dim: int = 1) -> torch.Tensor:
    return torch.cat(xs, dim=dim)


def _transpose(c: _Converter, n: _Node) -> None:
    """Only the NHWC → NCHW transpose that TensorFlow exporters put right after the input."""
    perm = n.ints("perm", [])
    if c.value(n.inputs[0]) != c.input or perm != [0, 3, 1, 2] or c.ops:
        raise n.fail(f"Transpose {perm} is supported only as the first NHWC → NCHW step")
    b, h, w, ch = c.input_shape
    c.input_shape = (b, ch, h, w)
    c.alias[n.outputs[0]] = c.input


def _flatten(c: _Converter, n: _Node) -> None:
    if int(n.attrs.get("axis", 1)) != 1:
        raise n.fail("Flatten is supported only from axis 1")
    c.add(n, nn.Flatten())


def _reshape(c: _Converter, n: _Node) -> None:
    shape = c.const(n, 1)
    assert shape is not None
    if shape.ndim != 1 or len(shape) != 2:
        raise n.fail(f"Reshape to {shape.tolist()} is not supported (only to (batch, features))")
    c.add(n, nn.Flatten())


def _reduce_mean(c: _Converter, n: _Node) -> None:
    axes = c.const(n, 1, required=False)
    axes_list = [int(v) for v in (axes if axes is not None else n.attrs.get("axes", []))]
    if sorted(a % 4 for a in axes_list) != [2, 3]:
        raise n.fail(f"ReduceMean over axes {axes_list} is not supported (only H and W)")
    keep = bool(n.attrs.get("keepdims", 1))
    out = n.outputs[0]
    if keep:
        c.add(n, nn.AdaptiveAvgPool2d(1))
        return
    name = c.name_for(n)
    c.ops.append(Op(name, [c.value(n.inputs[0])], out + "#pooled", module=nn.AdaptiveAvgPool2d(1)))
    c.ops.append(
        Op(unique(name + "_flatten", c.taken), [out + "#pooled"], out, module=nn.Flatten())
    )


# Exporters compute reshape targets from the input's shape (Shape → Gather → Unsqueeze →
# Concat → Reshape) when the batch is dynamic. These run once here on known shapes, with -1
# standing for the batch, and only the Reshape remains.


def _shape(c: _Converter, n: _Node) -> None:
    shape = c.shapes.get(n.inputs[0])
    if shape is None:
        raise n.fail("the shape of its input is unknown (ONNX shape inference failed)")
    start, end = int(n.attrs.get("start", 0)), n.attrs.get("end")
    c.consts[n.outputs[0]] = np.array(shape[start : None if end is None else int(end)], np.int64)


def _fold(fn: Callable[[_Converter, _Node, list[np.ndarray]], np.ndarray]) -> Callable[..., None]:
    """A handler that computes an operator on constant inputs at load time."""

    def handle(c: _Converter, n: _Node) -> None:
        if not all(c.is_const(i) for i in n.inputs if i):
            raise n.fail(f"{n.op} is supported only on constants (shape arithmetic)")
        c.consts[n.outputs[0]] = fn(c, n, [c.consts[c.value(i)] for i in n.inputs if i])

    return handle


def _axes(n: _Node, args: list[np.ndarray]) -> list[int]:
    return [int(a) for a in (args[1] if len(args) > 1 else n.attrs.get("axes", []))]


def _unsqueeze(c: _Converter, n: _Node, args: list[np.ndarray]) -> np.ndarray:
    out = args[0]
    for axis in sorted(_axes(n, args)):
        out = np.expand_dims(out, axis if axis >= 0 else axis + out.ndim + 1)
    return out


def _squeeze(c: _Converter, n: _Node, args: list[np.ndarray]) -> np.ndarray:
    axes = _axes(n, args)
    return np.squeeze(args[0], axis=tuple(axes)) if axes else np.squeeze(args[0])


def _clip(c: _Converter, n: _Node) -> None:
    lo_c, hi_c = c.const(n, 1, required=False), c.const(n, 2, required=False)
    lo = float(lo_c) if lo_c is not None else float(n.attrs.get("min", -np.inf))
    hi = float(hi_c) if hi_c is not None else float(n.attrs.get("max", np.inf))
    if (lo, hi) == (0.0, 6.0):
        c.add(n, nn.ReLU6())
    elif lo == 0.0 and hi == np.inf:
        c.add(n, nn.ReLU())
    else:
        c.add(n, nn.Hardtanh(lo, hi))


def _softmax(c: _Converter, n: _Node) -> None:
    axis = int(n.attrs.get("axis", -1))
    if axis not in (-1, 1):
        raise n.fail(f"Softmax over axis {axis} is not supported")
    c.add(n, nn.Softmax(dim=1))


def _identity(c: _Converter, n: _Node) -> None:
    src = c.value(n.inputs[0])
    if src in c.consts:
        c.consts[n.outputs[0]] = c.consts[src]
    else:
        c.alias[n.outputs[0]] = src


def _constant(c: _Converter, n: _Node) -> None:
    value = n.attrs.get("value")
    if value is None:
        raise n.fail("only tensor-valued Constant nodes are supported")
    c.consts[n.outputs[0]] = c.onnx.numpy_helper.to_array(value)


def _module(make: Callable[[_Node], nn.Module]) -> Callable[[_Converter, _Node], None]:
    return lambda c, n: c.add(n, make(n))


_HANDLERS: dict[str, Callable[[_Converter, _Node], None]] = {
    "Conv": _conv,
    "Relu": _module(lambda n: nn.ReLU()),
    "LeakyRelu": _module(lambda n: nn.LeakyReLU(float(n.attrs.get("alpha", 0.01)))),
    "Sigmoid": _module(lambda n: nn.Sigmoid()),
    "Tanh": _module(lambda n: nn.Tanh()),
    "Clip": _clip,
    "MaxPool": _pool,
    "AveragePool": _pool,
    "GlobalAveragePool": _module(lambda n: nn.AdaptiveAvgPool2d(1)),
    "GlobalMaxPool": _module(lambda n: nn.AdaptiveMaxPool2d(1)),
    "ReduceMean": _reduce_mean,
    "BatchNormalization": _batch_norm,
    "Gemm": _gemm,
    "MatMul": _matmul,
    "Add": _add,
    "Concat": _concat,
    "Flatten": _flatten,
    "Reshape": _reshape,
    "Softmax": _softmax,
    "Dropout": _identity,
    "Identity": _identity,
    "Constant": _constant,
    "Shape": _shape,
    "Transpose": _transpose,
    "Gather": _fold(lambda c, n, a: np.take(a[0], a[1], axis=int(n.attrs.get("axis", 0)))),
    "Unsqueeze": _fold(_unsqueeze),
    "Squeeze": _fold(_squeeze),
    "Cast": _fold(lambda c, n, a: a[0]),
}


def convert_onnx(model: Any) -> tuple[nn.Module, tuple[int, ...]]:
    """Torch modules computing the ONNX ``model``, and its declared input shape."""
    return _Converter(model, _onnx()).run()


def _metadata_classes(proto: Any) -> list[str] | None:
    """Class names in ``metadata_props``: ``classes``, ``class_names`` or ``labels``."""
    props = {p.key: p.value for p in proto.metadata_props}
    for key in ("classes", "class_names", "labels"):
        if key in props:
            return parse_class_list(props[key])
    return None


def load(source: str, opts: LoadOptions) -> Model:
    onnx = _onnx()
    try:
        proto = onnx.load(source)
    except Exception as e:
        raise ConvlensError(f"cannot read {source!r} as an ONNX model: {e}") from None
    net, shape = convert_onnx(proto)
    if len(shape) != 4 or min(shape[1:]) < 1:
        given = opts.input_spec
        if not ({"size"} <= set(given) or {"height", "width"} <= set(given)):
            raise ConvlensError(
                f"the ONNX model's input shape is {shape}; give the image size with --input-size"
            )
        shape = (1, int(given.get("channels", shape[1] if len(shape) == 4 else 3)), 1, 1)
    spec = InputSpec(shape[1], max(shape[2], 1), max(shape[3], 1))
    return make_model(
        net,
        spec,
        source,
        opts.classes,
        name=Path(source).stem,
        input_overrides=opts.input_spec,
        file_classes=_metadata_classes(proto),
    )


FORMATS.add("onnx", ModelFormat(detect, load, "an ONNX model (.onnx) of CNN operators"))
