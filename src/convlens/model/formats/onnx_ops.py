"""ONNX operators as torch: one handler per operator family, registered once.

Each handler reads its node's attributes, refuses what it does not reproduce exactly (an
attribute that would change the result is honoured or refused, never ignored), and emits
either a named ``nn.Module`` (convolutions, normalisations, activations, pools: the layers
convlens views hook) or a module-level torch function. Every op folds to a constant when all
its inputs are constants (see ``onnx_graph``). Semantics follow the ONNX operator
specification (https://onnx.ai/onnx/operators/), opsets 7 onward.
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from convlens.model.formats.onnx_graph import (
    BATCH,
    Converter,
    Node,
    batch_free_reshape,
    handler,
    to_torch,
)

# ONNX TensorProto data types convlens computes with (strings, float8 and complex are refused)
DTYPES: dict[int, torch.dtype] = {
    1: torch.float32, 2: torch.uint8, 3: torch.int8, 5: torch.int16,
    6: torch.int32, 7: torch.int64, 9: torch.bool, 10: torch.float16, 11: torch.float64,
}  # fmt: skip
# (torch has no CPU kernels for most ops on uint16/32/64, and no numpy bfloat16: refused)


def _axis(n: Node, axis: int, rank: int) -> int:
    if not -rank <= axis < max(rank, 1):
        raise n.fail(f"axis {axis} is out of range for a rank-{rank} input")
    return axis % max(rank, 1)


def _axes(c: Converter, n: Node, pos: int, attr_until: int) -> list[int] | None:
    """Axes from the attribute (opsets before ``attr_until``) or input ``pos``; None if absent."""
    if n.opset < attr_until:
        return n.ints("axes", []) if "axes" in n.attrs else None
    arr = c.opt_const(n, pos)
    return None if arr is None else [int(v) for v in arr.reshape(-1)]


def _float_input(c: Converter, name: str) -> bool:
    return c.dtype(name).is_floating_point


def _no_batch_axis(c: Converter, n: Node, axes: Sequence[int], what: str) -> None:
    src = n.inputs[0]
    if c.batch_free and not c.is_const(src):
        shape = c.shape(src)
        if any(shape[a] == BATCH for a in axes):
            raise n.fail(f"{what} along the batch axis is not supported (any batch size runs)")


# ------------------------------------------------------------------- element-wise


def div(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """ONNX Div on integers truncates toward zero (C division)."""
    return torch.div(a, b, rounding_mode="trunc")


def pow_cast(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """ONNX Pow: the result has the base's type, whatever the exponent's."""
    return torch.pow(a.to(torch.float64), b.to(torch.float64)).to(dtype)


def sum_n(*xs: torch.Tensor) -> torch.Tensor:
    return functools.reduce(operator.add, xs)


def mean_n(*xs: torch.Tensor) -> torch.Tensor:
    return functools.reduce(operator.add, xs) / len(xs)


def max_n(*xs: torch.Tensor) -> torch.Tensor:
    return functools.reduce(torch.maximum, xs)


def min_n(*xs: torch.Tensor) -> torch.Tensor:
    return functools.reduce(torch.minimum, xs)


_BINARY: dict[str, Callable[..., Any]] = {
    "Add": operator.add, "Sub": operator.sub, "Mul": operator.mul,
    "Equal": torch.eq, "Greater": torch.gt, "Less": torch.lt, "GreaterOrEqual": torch.ge,
    "LessOrEqual": torch.le, "And": torch.logical_and, "Or": torch.logical_or,
    "Xor": torch.logical_xor,
}  # fmt: skip


def _fuse_bias(c: Converter, n: Node) -> bool:
    """MatMul + Add of a constant vector: the constant becomes the Linear layer's bias."""
    a, b = (c.value(i) for i in n.inputs[:2])
    const, other = (b, a) if c.is_const(b) else (a, b)
    last = c.ops[-1] if c.ops else None
    if (
        n.op != "Add"
        or c.is_const(other)
        or not c.is_const(const)
        or last is None
        or not isinstance(last.module, nn.Linear)
        or last.module.bias is not None
        or last.output != other
        or c.uses.get(other, 0) != 1
    ):
        return False
    bias = c.consts[const]
    out = last.module.out_features
    if bias.shape not in ((), (1,), (out,), (1, out)) or bias.dtype != np.float32:
        return False
    last.module.bias = nn.Parameter(to_torch(np.broadcast_to(bias.reshape(-1), (out,))))
    c.alias[n.outputs[0]] = other
    return True


@handler(*_BINARY, "Div", "Pow", "Mod")
def _binary(c: Converter, n: Node) -> None:
    a, b = n.inputs[:2]
    if _fuse_bias(c, n):
        return
    if n.op == "Div":
        c.emit(n, operator.truediv if _float_input(c, a) else div, [a, b])
    elif n.op == "Pow":
        if c.dtype(a) == c.dtype(b) and _float_input(c, a):
            c.emit(n, torch.pow, [a, b])
        else:
            c.emit(n, pow_cast, [a, b], dtype=c.dtype(a))
    elif n.op == "Mod":
        c.emit(n, torch.fmod if n.geti("fmod", 0) else torch.remainder, [a, b])
    else:
        c.emit(n, _BINARY[n.op], [a, b])


@handler("Sum", "Mean", "Max", "Min")
def _variadic(c: Converter, n: Node) -> None:
    fn = {"Sum": sum_n, "Mean": mean_n, "Max": max_n, "Min": min_n}[n.op]
    c.emit(n, fn, [i for i in n.inputs if i])


_UNARY: dict[str, Callable[..., Any]] = {
    "Sqrt": torch.sqrt, "Neg": torch.neg, "Abs": torch.abs, "Reciprocal": torch.reciprocal,
    "Exp": torch.exp, "Log": torch.log, "Floor": torch.floor, "Ceil": torch.ceil,
    "Sign": torch.sign, "Sin": torch.sin, "Cos": torch.cos, "Tan": torch.tan,
    "Asin": torch.asin, "Acos": torch.acos, "Atan": torch.atan, "Sinh": torch.sinh,
    "Cosh": torch.cosh, "Asinh": torch.asinh, "Acosh": torch.acosh, "Atanh": torch.atanh,
    "Erf": torch.erf, "Round": torch.round, "Not": torch.logical_not, "IsNaN": torch.isnan,
}  # fmt: skip


@handler(*_UNARY)
def _unary(c: Converter, n: Node) -> None:
    c.emit(n, _UNARY[n.op], [n.inputs[0]])


def where(cond: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.where(cond, x, y)


@handler("Where")
def _where(c: Converter, n: Node) -> None:
    c.emit(n, where, n.inputs[:3])


# -------------------------------------------------------------------- activations


def hard_sigmoid(x: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """``max(0, min(1, alpha * x + beta))``."""
    return torch.clamp(alpha * x + beta, 0.0, 1.0)


def selu(x: torch.Tensor, alpha: float, gamma: float) -> torch.Tensor:
    """``gamma * (x if x > 0 else alpha * (exp(x) - 1))`` (Klambauer et al. 2017)."""
    return gamma * torch.where(x > 0, x, alpha * torch.expm1(x))


def prelu(x: torch.Tensor, slope: torch.Tensor) -> torch.Tensor:
    """``x if x >= 0 else slope * x`` with the slope broadcast to ``x``."""
    return torch.where(x < 0, x * slope, x)


def clamp(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """ONNX Clip: ``min(max(x, lo), hi)``; all ``hi`` when ``lo > hi``, as torch.clamp does."""
    return torch.clamp(x, lo, hi)


_SELU_ALPHA, _SELU_GAMMA = 1.67326319217681884765625, 1.05070102214813232421875

_ACTIVATIONS: dict[str, Callable[[Node], nn.Module]] = {
    "Relu": lambda n: nn.ReLU(),
    "LeakyRelu": lambda n: nn.LeakyReLU(n.getf("alpha", 0.01)),
    "Sigmoid": lambda n: nn.Sigmoid(),
    "Tanh": lambda n: nn.Tanh(),
    "Elu": lambda n: nn.ELU(n.getf("alpha", 1.0)),
    "Celu": lambda n: nn.CELU(n.getf("alpha", 1.0)),
    "Softsign": lambda n: nn.Softsign(),
    "Mish": lambda n: nn.Mish(),
    "HardSwish": lambda n: nn.Hardswish(),
    "ThresholdedRelu": lambda n: nn.Threshold(n.getf("alpha", 1.0), 0.0),
    # torch switches to x above 20 (x·beta); log(1 + e^x) - x < 2e-9 there
    "Softplus": lambda n: nn.Softplus(),
}


@handler(*_ACTIVATIONS)
def _activation(c: Converter, n: Node) -> None:
    c.module(n, _ACTIVATIONS[n.op](n))


@handler("Gelu")
def _gelu(c: Converter, n: Node) -> None:
    approx = n.gets("approximate", "none")
    if approx not in ("none", "tanh"):
        raise n.fail(f"approximate={approx!r} is not supported; accepted: none, tanh")
    c.module(n, nn.GELU(approximate=approx))


@handler("HardSigmoid")
def _hard_sigmoid(c: Converter, n: Node) -> None:
    alpha, beta = n.getf("alpha", 0.2), n.getf("beta", 0.5)
    if np.float32(alpha) == np.float32(1 / 6) and beta == 0.5:
        c.module(n, nn.Hardsigmoid())  # torch's hard sigmoid is x / 6 + 1 / 2
    else:
        c.emit(n, hard_sigmoid, [n.inputs[0]], alpha=alpha, beta=beta)


@handler("Selu")
def _selu(c: Converter, n: Node) -> None:
    alpha, gamma = n.getf("alpha", _SELU_ALPHA), n.getf("gamma", _SELU_GAMMA)
    if np.float32(alpha) == np.float32(_SELU_ALPHA) and np.float32(gamma) == np.float32(
        _SELU_GAMMA
    ):
        c.module(n, nn.SELU())
    else:
        c.emit(n, selu, [n.inputs[0]], alpha=alpha, gamma=gamma)


@handler("PRelu")
def _prelu(c: Converter, n: Node) -> None:
    x, slope = n.inputs[:2]
    shape = c.shape(x)
    if c.is_const(slope) and len(shape) >= 2 and not c.is_const(x):
        w = c.consts[c.value(slope)]
        ch = shape[1]
        per_channel = (
            w.size == ch
            and w.shape[-(len(shape) - 1) :][0:1] in ((ch,), ())
            and (
                w.ndim <= len(shape) - 1 and all(d == 1 for d in w.shape[w.ndim - len(shape) + 2 :])
            )
        )
        if w.dtype == np.float32 and (w.size == 1 or (per_channel and w.ndim == len(shape) - 1)):
            mod = nn.PReLU(int(w.size))
            mod.weight.data = to_torch(w.reshape(-1))
            c.module(n, mod)
            return
    c.emit(n, prelu, [x, slope])


def clamp_min(x: torch.Tensor, lo: torch.Tensor) -> torch.Tensor:
    return torch.clamp(x, lo, None)


def clamp_max(x: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    return torch.clamp(x, None, hi)


def clamp_scalar(x: torch.Tensor, lo: Any = None, hi: Any = None) -> torch.Tensor:
    """ONNX Clip with constant bounds (``None``: unbounded)."""
    if lo is None and hi is None:
        return x.clone()
    return torch.clamp(x, lo, hi)


def _bound(value: Any) -> Any:
    """A Clip bound as a Python number, ``None`` when unbounded."""
    v = value.item() if hasattr(value, "item") else value
    return None if isinstance(v, float) and math.isinf(v) else v


@handler("Clip")
def _clip(c: Converter, n: Node) -> None:
    x = n.inputs[0]
    if n.opset < 11:
        lo, hi = _bound(n.getf("min", -math.inf)), _bound(n.getf("max", math.inf))
    else:
        dynamic = [n.has(i) and not c.is_const(n.inputs[i]) for i in (1, 2)]
        if any(dynamic):
            present = [i for i in (1, 2) if n.has(i)]
            fn = clamp if present == [1, 2] else clamp_min if present == [1] else clamp_max
            c.emit(n, fn, [x, *[n.inputs[i] for i in present]])
            return
        lo_a, hi_a = c.opt_const(n, 1), c.opt_const(n, 2)
        lo = None if lo_a is None else _bound(lo_a.reshape(-1)[0])
        hi = None if hi_a is None else _bound(hi_a.reshape(-1)[0])
    if _float_input(c, x) and not c.is_const(x):
        lo_f = -math.inf if lo is None else float(lo)
        hi_f = math.inf if hi is None else float(hi)
        if (lo_f, hi_f) == (0.0, 6.0):
            c.module(n, nn.ReLU6())
            return
        if lo_f == 0.0 and hi_f == math.inf:
            c.module(n, nn.ReLU())
            return
        if lo_f < hi_f and math.isfinite(lo_f) and math.isfinite(hi_f):
            c.module(n, nn.Hardtanh(lo_f, hi_f))
            return
    c.emit(n, clamp_scalar, [x], lo=lo, hi=hi)


# ----------------------------------------------------------------- softmax family


def softmax_nd(x: torch.Tensor, axis: int, kind: str, coerce: bool) -> torch.Tensor:
    """Softmax, LogSoftmax or Hardmax over ``axis``; before opset 13 over all of
    ``x``'s dims from ``axis`` on at once (the input is coerced to 2-D)."""
    y = torch.flatten(x, start_dim=axis) if coerce else x
    dim = axis if not coerce else y.dim() - 1
    if kind == "Softmax":
        z = torch.softmax(y, dim)
    elif kind == "LogSoftmax":
        z = torch.log_softmax(y, dim)
    else:  # Hardmax: one-hot of the first maximum
        z = torch.zeros_like(y).scatter_(dim, torch.argmax(y, dim, keepdim=True), 1.0)
    return z.reshape(x.shape) if coerce else z


@handler("Softmax", "LogSoftmax", "Hardmax")
def _softmax(c: Converter, n: Node) -> None:
    x = n.inputs[0]
    shape = c.shape(x)
    rank = len(shape)
    axis = _axis(n, n.geti("axis", 1 if n.opset < 13 else -1), rank)
    coerce = n.opset < 13 and any(d != 1 for d in shape[axis + 1 :])
    if not coerce and n.op != "Hardmax" and rank > 0:
        c.module(n, nn.Softmax(dim=axis) if n.op == "Softmax" else nn.LogSoftmax(dim=axis))
    else:
        c.emit(n, softmax_nd, [x], axis=axis, kind=n.op, coerce=coerce)


# -------------------------------------------------------------------- convolution


def _same_pads(size: int, k: int, s: int, d: int, upper: bool) -> tuple[int, int]:
    """``auto_pad`` SAME: output ``ceil(size / s)``; the odd pixel at the end (UPPER)."""
    out = -(-size // s)
    total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
    small, big = total // 2, total - total // 2
    return (small, big) if upper else (big, small)


def _pads2d(c: Converter, n: Node, k: list[int], s: list[int], d: list[int]) -> list[int]:
    """``[top, left, bottom, right]`` from ``pads`` or ``auto_pad``."""
    auto = n.gets("auto_pad", "NOTSET")
    if auto in ("NOTSET", ""):
        p = n.ints("pads", [0, 0, 0, 0])
        if len(p) != 4:
            raise n.fail(f"pads {p} do not describe a 2-D window")
        return p
    if auto == "VALID":
        return [0, 0, 0, 0]
    if auto not in ("SAME_UPPER", "SAME_LOWER"):
        raise n.fail(f"auto_pad {auto!r} is not supported")
    h, w = c.shape(n.inputs[0])[2:4]
    (top, bottom), (left, right) = (
        _same_pads(size, k[i], s[i], d[i], auto == "SAME_UPPER") for i, size in enumerate((h, w))
    )
    return [top, left, bottom, right]


def _require_2d(c: Converter, n: Node, what: str) -> None:
    rank = len(c.shape(n.inputs[0]))
    if rank != 4:
        raise n.fail(
            f"only 2-D {what} (rank-4 N×C×H×W inputs) are supported; this input has rank {rank}"
        )


def conv2d(
    x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None, **kw: Any
) -> torch.Tensor:
    """A convolution whose weights are computed in the graph."""
    return F.conv2d(x, w, b, **kw)


@handler("Conv")
def _conv(c: Converter, n: Node) -> None:
    _require_2d(c, n, "convolutions")
    wshape = c.shape(n.inputs[1])
    if len(wshape) != 4:
        raise n.fail(f"only 2-D convolutions are supported (weight shape {wshape})")
    k = n.ints("kernel_shape", list(wshape[2:]))
    if k != list(wshape[2:]):
        raise n.fail(f"kernel_shape {k} disagrees with the weight's {list(wshape[2:])}")
    s, d = n.ints("strides", [1, 1]), n.ints("dilations", [1, 1])
    groups = n.geti("group", 1)
    top, left, bottom, right = _pads2d(c, n, k, s, d)
    src = n.inputs[0]
    if (top, left) != (bottom, right):
        src = c.pad_layer(n, nn.ZeroPad2d((left, right, top, bottom)), src)
        top = left = 0
    kw: dict[str, Any] = {
        "stride": tuple(s),
        "padding": (top, left),
        "dilation": tuple(d),
        "groups": groups,
    }
    if not c.is_const(n.inputs[1]) or (n.has(2) and not c.is_const(n.inputs[2])):
        c.emit(n, conv2d, [src, *[i for i in n.inputs[1:3] if i]], **kw)
        return
    w = c.const(n, 1)
    b = c.opt_const(n, 2)
    conv = nn.Conv2d(
        wshape[1] * groups,
        wshape[0],
        (k[0], k[1]),
        bias=b is not None,
        **kw,
    )
    conv.weight.data = to_torch(w)
    if b is not None:
        conv.bias.data = to_torch(b)  # type: ignore[union-attr]
    c.module(n, conv, src)


def crop2d(x: torch.Tensor, top: int, left: int, bottom: int, right: int) -> torch.Tensor:
    """Remove rows and columns from the edges (a transposed convolution's uneven pads)."""
    return x[:, :, top : x.shape[2] - bottom, left : x.shape[3] - right]


@handler("ConvTranspose")
def _conv_transpose(c: Converter, n: Node) -> None:
    _require_2d(c, n, "transposed convolutions")
    w = c.const(n, 1, "(the weight) ")
    if w.ndim != 4:
        raise n.fail(f"only 2-D transposed convolutions are supported (weight shape {w.shape})")
    b = c.opt_const(n, 2)
    groups = n.geti("group", 1)
    k = n.ints("kernel_shape", list(w.shape[2:]))
    s, d = n.ints("strides", [1, 1]), n.ints("dilations", [1, 1])
    op = n.ints("output_padding", [0, 0])
    in_hw = c.shape(n.inputs[0])[2:4]
    full = [(in_hw[i] - 1) * s[i] + (k[i] - 1) * d[i] + 1 for i in range(2)]
    auto = n.gets("auto_pad", "NOTSET")
    if "output_shape" in n.attrs:
        out = n.ints("output_shape", [])[-2:]
        total = [full[i] + op[i] - out[i] for i in range(2)]
        if min(total) < 0:
            raise n.fail(f"output_shape {out} is larger than the full output {full}")
        upper = auto != "SAME_LOWER"
        begin = [t // 2 if upper else t - t // 2 for t in total]
        pads = [begin[0], begin[1], total[0] - begin[0], total[1] - begin[1]]
    elif auto in ("SAME_UPPER", "SAME_LOWER"):
        total = [full[i] + op[i] - in_hw[i] * s[i] for i in range(2)]
        upper = auto == "SAME_UPPER"
        begin = [t // 2 if upper else t - t // 2 for t in total]
        pads = [begin[0], begin[1], total[0] - begin[0], total[1] - begin[1]]
        if min(total) < 0:
            raise n.fail("auto_pad SAME needs a larger kernel than the stride here")
    elif auto in ("NOTSET", "", "VALID"):
        pads = [0, 0, 0, 0] if auto == "VALID" else n.ints("pads", [0, 0, 0, 0])
    else:
        raise n.fail(f"auto_pad {auto!r} is not supported")
    top, left, bottom, right = pads
    symmetric = (top, left) == (bottom, right)
    if min(pads) < 0 or any(op[i] >= max(s[i], d[i]) for i in range(2)):
        raise n.fail(f"pads {pads} with output_padding {op} are not supported")
    if not symmetric and (op[0] > bottom or op[1] > right):
        raise n.fail(f"uneven pads {pads} with output_padding {op} are not supported")
    conv = nn.ConvTranspose2d(
        w.shape[0], w.shape[1] * groups, (k[0], k[1]), (s[0], s[1]),
        padding=(top, left) if symmetric else 0,
        output_padding=(op[0], op[1]) if symmetric else 0,
        groups=groups, bias=b is not None, dilation=(d[0], d[1]),
    )  # fmt: skip
    conv.weight.data = to_torch(w)
    if b is not None:
        conv.bias.data = to_torch(b)  # type: ignore[union-attr]
    if symmetric:
        c.module(n, conv)
        return
    full_out = n.outputs[0] + "#full"
    c.emit(n, conv, [n.inputs[0]], outputs=[full_out])
    c.emit(n, crop2d, [full_out], top=top, left=left,
           bottom=bottom - op[0], right=right - op[1])  # fmt: skip


# ------------------------------------------------------------------------ pooling


def avg_pool_exclusive(
    x: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int], pad: tuple[int, ...]
) -> torch.Tensor:
    """Average over real pixels only, for any pads: ``pool(pad0(x)) / pool(pad0(1))``."""
    ones = torch.ones_like(x[:1, :1])
    num = F.avg_pool2d(F.pad(x, pad), kernel, stride)
    den = F.avg_pool2d(F.pad(ones, pad), kernel, stride)
    return num / den


@handler("MaxPool", "AveragePool", "LpPool")
def _pool(c: Converter, n: Node) -> None:
    _require_2d(c, n, "pools")
    if n.op == "LpPool":
        raise n.fail("LpPool is not supported")
    if len(n.outputs) > 1 and n.outputs[1]:
        raise n.fail("the indices output of MaxPool is not supported")
    k = n.ints("kernel_shape", [])
    if len(k) != 2:
        raise n.fail(f"kernel_shape {k} is not a 2-D window")
    s = n.ints("strides", [1, 1])
    d = n.ints("dilations", [1, 1])
    if n.op == "AveragePool" and d != [1, 1]:
        raise n.fail(f"AveragePool with dilations {d} is not supported")
    ceil = bool(n.geti("ceil_mode", 0))
    include = bool(n.geti("count_include_pad", 0))
    top, left, bottom, right = _pads2d(c, n, k, s, d)
    auto = n.gets("auto_pad", "NOTSET")
    if auto.startswith("SAME"):
        ceil = False  # SAME defines the output size as ceil(size / stride) by itself
    src = n.inputs[0]
    eff = [(k[i] - 1) * d[i] + 1 for i in range(2)]
    fits = (top, left) == (bottom, right) and 2 * top <= eff[0] and 2 * left <= eff[1]
    if n.op == "MaxPool":
        if not fits:
            pad = nn.ConstantPad2d((left, right, top, bottom), -math.inf)
            src = c.pad_layer(n, pad, src)
            top = left = 0
        module: nn.Module = nn.MaxPool2d(
            (k[0], k[1]), (s[0], s[1]), (top, left), (d[0], d[1]), ceil_mode=ceil
        )
        c.module(n, module, src)
        return
    if fits and not (ceil and include and top + left > 0):
        c.module(n, nn.AvgPool2d((k[0], k[1]), (s[0], s[1]), (top, left), ceil, include), src)
        return
    if ceil:
        raise n.fail(
            f"AveragePool with ceil_mode and pads {[top, left, bottom, right]} is not supported"
        )
    pad4 = (left, right, top, bottom)
    if include:
        src = c.pad_layer(n, nn.ZeroPad2d(pad4), src)
        c.module(n, nn.AvgPool2d((k[0], k[1]), (s[0], s[1])), src)
    else:
        c.emit(n, avg_pool_exclusive, [src], kernel=(k[0], k[1]), stride=(s[0], s[1]), pad=pad4)


def global_pool(x: torch.Tensor, kind: str) -> torch.Tensor:
    """Pool over every axis after the channels, keeping them as size 1."""
    dims = tuple(range(2, x.dim()))
    return x.mean(dims, keepdim=True) if kind == "avg" else x.amax(dims, keepdim=True)


@handler("GlobalAveragePool", "GlobalMaxPool")
def _global_pool(c: Converter, n: Node) -> None:
    if len(c.shape(n.inputs[0])) == 4:
        avg = n.op == "GlobalAveragePool"
        c.module(n, nn.AdaptiveAvgPool2d(1) if avg else nn.AdaptiveMaxPool2d(1))
    else:
        c.emit(n, global_pool, [n.inputs[0]], kind="avg" if "Average" in n.op else "max")


# ------------------------------------------------------------------ normalisation


def batch_norm(
    x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor, mean: torch.Tensor,
    var: torch.Tensor, eps: float,
) -> torch.Tensor:  # fmt: skip
    return F.batch_norm(x, mean, var, scale, bias, False, 0.0, eps)


@handler("BatchNormalization")
def _batch_norm(c: Converter, n: Node) -> None:
    if n.geti("training_mode", 0):
        raise n.fail("training_mode=1 (batch statistics) is not supported")
    if n.opset < 9 and n.geti("spatial", 1) != 1:
        raise n.fail("spatial=0 (per-position statistics) is not supported")
    eps = n.getf("epsilon", 1e-5)
    rank = len(c.shape(n.inputs[0]))
    args = n.inputs[:5]
    if all(c.is_const(a) for a in args[1:]) and rank in (2, 3, 4, 5):
        scale, bias, mean, var = (c.const(n, i) for i in range(1, 5))
        if all(a.dtype == np.float32 and a.ndim == 1 for a in (scale, bias, mean, var)):
            cls = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}
            bn = cls[rank](scale.shape[0], eps=eps)
            bn.weight.data, bn.bias.data = to_torch(scale), to_torch(bias)
            bn.running_mean.data, bn.running_var.data = to_torch(mean), to_torch(var)  # type: ignore[union-attr]
            c.module(n, bn)
            return
    c.emit(n, batch_norm, args, eps=eps)


def instance_norm(
    x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor, eps: float
) -> torch.Tensor:
    return F.instance_norm(x, weight=scale, bias=bias, eps=eps)


@handler("InstanceNormalization")
def _instance_norm(c: Converter, n: Node) -> None:
    c.emit(n, instance_norm, n.inputs[:3], eps=n.getf("epsilon", 1e-5))


def layer_norm(
    x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None, axis: int, eps: float
) -> torch.Tensor:
    """``(x - mean) / sqrt(var + eps) * scale + bias`` over the axes from ``axis`` on."""
    dims = tuple(range(axis, x.dim()))
    mean = x.mean(dims, keepdim=True)
    var = ((x - mean) ** 2).mean(dims, keepdim=True)
    y = (x - mean) / torch.sqrt(var + eps) * scale
    return y + bias if bias is not None else y


@handler("LayerNormalization")
def _layer_norm(c: Converter, n: Node) -> None:
    rank = len(c.shape(n.inputs[0]))
    axis = _axis(n, n.geti("axis", -1), rank)
    c.emit(n, layer_norm, [i for i in n.inputs[:3] if i], axis=axis, eps=n.getf("epsilon", 1e-5))


class OnnxLRN(nn.Module):
    """Local response normalisation over channels as ONNX defines it (Krizhevsky et al. 2012):
    ``x / (bias + alpha / size * sum(x²))^beta`` over channels
    ``c - floor((size-1)/2) .. c + ceil((size-1)/2)`` (torch's window differs for even sizes).
    """

    def __init__(self, size: int, alpha: float, beta: float, bias: float) -> None:
        super().__init__()
        self.size, self.alpha, self.beta, self.bias = size, alpha, beta, bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sq = (x * x).unsqueeze(1)  # (N, 1, C, ...): pool along the channels
        before, after = (self.size - 1) // 2, self.size - 1 - (self.size - 1) // 2
        pad = [0, 0] * (x.dim() - 2) + [before, after]
        summed = F.pad(sq, pad).unfold(2, self.size, 1).sum(-1).squeeze(1)
        return x / (self.bias + self.alpha / self.size * summed) ** self.beta


@handler("LRN")
def _lrn(c: Converter, n: Node) -> None:
    size = n.geti("size", 0)
    if size < 1:
        raise n.fail(f"size {size} must be a positive window")
    alpha, beta, bias = n.getf("alpha", 1e-4), n.getf("beta", 0.75), n.getf("bias", 1.0)
    if size % 2 == 1 and len(c.shape(n.inputs[0])) >= 3:
        c.module(n, nn.LocalResponseNorm(size, alpha, beta, bias))  # same window when odd
    else:
        c.module(n, OnnxLRN(size, alpha, beta, bias))


# --------------------------------------------------------------- dense and matmul


def gemm(
    a: torch.Tensor, b: torch.Tensor, cc: torch.Tensor | None = None, *, alpha: float,
    beta: float, trans_a: bool, trans_b: bool,
) -> torch.Tensor:  # fmt: skip
    """``alpha * A' B' + beta * C`` (A', B' optionally transposed)."""
    y = (a.T if trans_a else a) @ (b.T if trans_b else b)
    y = alpha * y if alpha != 1.0 else y
    return y + beta * cc if cc is not None else y


@handler("Gemm")
def _gemm(c: Converter, n: Node) -> None:
    ta, tb = bool(n.geti("transA", 0)), bool(n.geti("transB", 0))
    alpha, beta = n.getf("alpha", 1.0), n.getf("beta", 1.0)
    a, b = n.inputs[:2]
    bias = n.inputs[2] if n.has(2) else None
    if not ta and c.is_const(b) and not c.is_const(a) and c.dtype(b) == torch.float32:
        w = c.consts[c.value(b)]
        w = (w if tb else w.T) * np.float32(alpha)  # torch keeps (out, in)
        out = w.shape[0]
        cb = c.consts.get(c.value(bias)) if bias else None
        if bias is None or (cb is not None and cb.shape in ((), (1,), (out,), (1, out))):
            lin = nn.Linear(w.shape[1], out, bias=bias is not None)
            lin.weight.data = to_torch(w.astype(np.float32))
            if cb is not None:
                bvec = np.broadcast_to(cb.reshape(-1) * np.float32(beta), (out,))
                lin.bias.data = to_torch(bvec.astype(np.float32))
            c.module(n, lin, a)
            return
    inputs = [a, b] + ([bias] if bias else [])
    c.emit(n, gemm, inputs, alpha=alpha, beta=beta, trans_a=ta, trans_b=tb)


@handler("MatMul")
def _matmul(c: Converter, n: Node) -> None:
    a, b = n.inputs[:2]
    if c.is_const(b) and not c.is_const(a) and c.shape(b).__len__() == 2:
        w = c.consts[c.value(b)]
        if w.dtype == np.float32:
            lin = nn.Linear(w.shape[0], w.shape[1], bias=False)
            lin.weight.data = to_torch(w.T)
            c.module(n, lin, a)
            return
    c.emit(n, torch.matmul, [a, b])


# ------------------------------------------------------------------ shape changes


def flatten2d(x: torch.Tensor, axis: int) -> torch.Tensor:
    """ONNX Flatten: ``(prod(shape[:axis]), prod(shape[axis:]))``."""
    if axis == 0:
        return x.reshape(1, -1)
    if axis == x.dim():
        return torch.flatten(x).unsqueeze(-1)
    return torch.flatten(torch.flatten(x, axis), 0, axis - 1)


@handler("Flatten")
def _flatten(c: Converter, n: Node) -> None:
    rank = len(c.shape(n.inputs[0]))
    axis = n.geti("axis", 1)
    if not -rank <= axis <= rank:
        raise n.fail(f"axis {axis} is out of range for a rank-{rank} input")
    axis = axis + rank if axis < 0 else axis
    if axis == 1 and rank >= 2:
        c.module(n, nn.Flatten())
    else:
        if c.batch_free and axis != 1 and not c.is_const(n.inputs[0]):
            raise n.fail(f"Flatten from axis {axis} would mix the batch with other axes")
        c.emit(n, flatten2d, [n.inputs[0]], axis=axis)


def _resolve_shape(
    n: Node, in_shape: tuple[int, ...], target: list[int], allow_zero: bool
) -> list[int]:
    out = list(target)
    for i, v in enumerate(out):
        if v == 0 and not allow_zero:
            if i >= len(in_shape):
                raise n.fail(f"shape {target}: 0 at position {i} has no input dimension to copy")
            out[i] = in_shape[i]
    if out.count(-1) > 1 or any(v < -1 for v in out):
        raise n.fail(f"shape {target} is not a valid reshape target")
    total = math.prod(in_shape)
    if -1 in out:
        known = math.prod(v for v in out if v != -1)
        if known == 0 or total % known:
            raise n.fail(f"cannot reshape {in_shape} to {target}")
        out[out.index(-1)] = total // known
    if math.prod(out) != total:
        raise n.fail(f"cannot reshape {in_shape} to {target}")
    return out


@handler("Reshape")
def _reshape(c: Converter, n: Node) -> None:
    x = n.inputs[0]
    if n.opset < 5:
        target = n.ints("shape", [])
    else:
        target = [int(v) for v in c.const(n, 1, "(the target shape) ").reshape(-1)]
    in_shape = c.shape(x)
    if c.batch_free and in_shape[:1] == (BATCH,) and target[:1] == [1] and BATCH not in target:
        # exported at batch 1: a leading 1 is the batch (the product check below confirms)
        target = [BATCH, *target[1:]]
    resolved = _resolve_shape(n, in_shape, target, bool(n.geti("allowzero", 0)))
    if c.is_const(x):
        c.set_const(n.outputs[0], c.consts[c.value(x)].reshape(resolved))
        return
    final = batch_free_reshape(n, in_shape, resolved) if c.batch_free else resolved
    c.emit(n, torch.reshape, [x], shape=tuple(final))


def permute(x: torch.Tensor, perm: tuple[int, ...]) -> torch.Tensor:
    return x.permute(perm)


@handler("Transpose")
def _transpose(c: Converter, n: Node) -> None:
    x = n.inputs[0]
    rank = len(c.shape(x))
    perm = n.ints("perm", list(range(rank))[::-1])
    if sorted(perm) != list(range(rank)):
        raise n.fail(f"perm {perm} is not a permutation of {rank} axes")
    src = c.value(x)
    if c.batch_free and src in c.inputs and perm == [0, 3, 1, 2] and not c.ops:
        # A TensorFlow export: NHWC input transposed first. The model takes NCHW instead.
        b, h, w, ch = c.meta[src].shape
        c.meta[src] = torch.empty((b, ch, h, w), dtype=c.meta[src].dtype, device="meta")
        c.alias[n.outputs[0]] = src
        return
    if c.batch_free and not c.is_const(x) and BATCH in c.shape(x) and perm[0] != 0:
        raise n.fail(f"Transpose {perm} moves the batch axis")
    c.emit(n, permute, [x], perm=tuple(perm))


def slice_nd(x: torch.Tensor, index: tuple[slice, ...], flip: tuple[int, ...]) -> torch.Tensor:
    """``x[index]`` after reversing axes ``flip`` (ONNX's negative steps)."""
    return (torch.flip(x, flip) if flip else x)[index]


@handler("Slice")
def _slice(c: Converter, n: Node) -> None:
    x = n.inputs[0]
    shape = c.shape(x)
    rank = len(shape)
    if n.opset < 10:
        starts, ends = n.ints("starts", []), n.ints("ends", [])
        axes = n.ints("axes", list(range(len(starts))))
        steps = [1] * len(starts)
    else:
        starts = [int(v) for v in c.const(n, 1, "(starts) ").reshape(-1)]
        ends = [int(v) for v in c.const(n, 2, "(ends) ").reshape(-1)]
        ax = c.opt_const(n, 3)
        st = c.opt_const(n, 4)
        axes = list(range(len(starts))) if ax is None else [int(v) for v in ax.reshape(-1)]
        steps = [1] * len(starts) if st is None else [int(v) for v in st.reshape(-1)]
    if not len(starts) == len(ends) == len(axes) == len(steps):
        raise n.fail("starts, ends, axes and steps differ in length")
    index = [slice(None)] * rank
    flip: list[int] = []
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        a = _axis(n, axis, rank)
        if step == 0:
            raise n.fail("a slice step of 0 is invalid")
        lo, hi, st_ = slice(start, end, step).indices(shape[a])
        if c.batch_free and shape[a] == BATCH and not c.is_const(x):
            if (lo, hi, st_) != (0, BATCH, 1):
                raise n.fail("slicing along the batch axis is not supported")
            continue
        count = len(range(lo, hi, st_))
        if st_ < 0:
            flip.append(a)
            lo = shape[a] - 1 - lo
            st_ = -st_
        index[a] = slice(lo, lo + count * st_ if count else lo, st_)
    c.emit(n, slice_nd, [x], index=tuple(index), flip=tuple(flip))


def split(x: torch.Tensor, sizes: tuple[int, ...], dim: int) -> tuple[torch.Tensor, ...]:
    return torch.split(x, list(sizes), dim)


@handler("Split")
def _split(c: Converter, n: Node) -> None:
    x = n.inputs[0]
    shape = c.shape(x)
    axis = _axis(n, n.geti("axis", 0), len(shape))
    _no_batch_axis(c, n, [axis], "Split")
    count = len(n.outputs)
    given = n.ints("split", []) if n.opset < 13 else (
        [int(v) for v in c.opt_const(n, 1).reshape(-1)] if n.has(1) else []  # type: ignore[union-attr]
    )  # fmt: skip
    if not given:
        if n.opset >= 18 and "num_outputs" in n.attrs:
            count = n.geti("num_outputs", count)
            chunk = -(-shape[axis] // count)
            given = [min(chunk, shape[axis] - i * chunk) for i in range(count)]
        elif shape[axis] % count:
            raise n.fail(f"axis of size {shape[axis]} does not split into {count} equal parts")
        else:
            given = [shape[axis] // count] * count
    if sum(given) != shape[axis] or len(given) != len(n.outputs) or min(given) < 0:
        raise n.fail(f"split sizes {given} do not cover the axis of size {shape[axis]}")
    c.emit(n, split, [x], outputs=n.outputs, sizes=tuple(given), dim=axis)


def cat(*xs: torch.Tensor, dim: int) -> torch.Tensor:
    return torch.cat(xs, dim=dim)


@handler("Concat")
def _concat(c: Converter, n: Node) -> None:
    rank = len(c.shape(n.inputs[0]))
    axis = _axis(n, n.geti("axis", 1), rank)
    c.emit(n, cat, [i for i in n.inputs if i], dim=axis)


def squeeze(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    return torch.squeeze(x, dims) if dims else x


def unsqueeze(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    for d in dims:  # ascending: each index is in the output's numbering
        x = torch.unsqueeze(x, d)
    return x


@handler("Squeeze")
def _squeeze(c: Converter, n: Node) -> None:
    shape = c.shape(n.inputs[0])
    axes = _axes(c, n, 1, 13)
    if axes is None:
        dims = [i for i, d in enumerate(shape) if d == 1]
    else:
        dims = sorted({_axis(n, a, len(shape)) for a in axes})
        if any(shape[d] != 1 for d in dims):
            raise n.fail(f"cannot squeeze axes {axes} of shape {shape}: not of size 1")
    c.emit(n, squeeze, [n.inputs[0]], dims=tuple(dims))


@handler("Unsqueeze")
def _unsqueeze(c: Converter, n: Node) -> None:
    shape = c.shape(n.inputs[0])
    axes = _axes(c, n, 1, 13)
    if not axes:
        raise n.fail("Unsqueeze needs axes")
    out_rank = len(shape) + len(axes)
    dims = sorted(_axis(n, a, out_rank) for a in axes)
    if len(set(dims)) != len(dims):
        raise n.fail(f"axes {axes} repeat")
    c.emit(n, unsqueeze, [n.inputs[0]], dims=tuple(dims))


def gather(x: torch.Tensor, idx: torch.Tensor, axis: int, shape: tuple[int, ...]) -> torch.Tensor:
    """ONNX Gather: ``x``'s axis replaced by ``idx``'s shape (``idx`` already non-negative)."""
    out = torch.index_select(x, axis, idx.reshape(-1))
    return out.unflatten(axis, shape) if shape else out.squeeze(axis)


def gather_elements(x: torch.Tensor, idx: torch.Tensor, axis: int) -> torch.Tensor:
    return torch.gather(x, axis, idx)


def _norm_indices(c: Converter, n: Node, size: int) -> str:
    """Input 1 (constant indices) made non-negative, checked in ``[-size, size)``."""
    idx = c.const(n, 1, "(the indices) ").astype(np.int64)
    if idx.size and (idx.min() < -size or idx.max() >= size):
        raise n.fail(f"indices {idx.min()}..{idx.max()} are out of range for size {size}")
    name = n.outputs[0] + "#indices"
    c.consts[name] = np.where(idx < 0, idx + size, idx)
    return name


@handler("Gather", "GatherElements")
def _gather(c: Converter, n: Node) -> None:
    x = n.inputs[0]
    shape = c.shape(x)
    axis = _axis(n, n.geti("axis", 0), len(shape))
    _no_batch_axis(c, n, [axis], n.op)
    idx = _norm_indices(c, n, shape[axis])
    if n.op == "Gather":
        c.emit(n, gather, [x, idx], axis=axis, shape=tuple(c.consts[idx].shape))
    else:
        c.emit(n, gather_elements, [x, idx], axis=axis)


@handler("Shape")
def _shape(c: Converter, n: Node) -> None:
    shape = c.shape(n.inputs[0])
    start, end = n.geti("start", 0), n.attrs.get("end")
    c.set_const(n.outputs[0], np.array(shape[start : None if end is None else int(end)], np.int64))


@handler("Size")
def _size(c: Converter, n: Node) -> None:
    c.set_const(n.outputs[0], np.array(math.prod(c.shape(n.inputs[0])), np.int64))


def _tensor(c: Converter, n: Node, proto: Any) -> np.ndarray:
    from convlens.model.formats.onnx_format import tensor_to_array

    return tensor_to_array(proto, f"ONNX node {n.index} ({n.op}) value", c.budget)


@handler("Constant")
def _constant(c: Converter, n: Node) -> None:
    a = n.attrs
    if "value" in a:
        arr = _tensor(c, n, a["value"])
    elif "value_float" in a:
        arr = np.array(a["value_float"], np.float32)
    elif "value_floats" in a:
        arr = np.array(a["value_floats"], np.float32)
    elif "value_int" in a:
        arr = np.array(a["value_int"], np.int64)
    elif "value_ints" in a:
        arr = np.array(a["value_ints"], np.int64)
    else:
        raise n.fail(f"a Constant of kind {sorted(a)} is not supported (only numeric tensors)")
    c.set_const(n.outputs[0], arr)


@handler("ConstantOfShape")
def _constant_of_shape(c: Converter, n: Node) -> None:
    shape = [int(v) for v in c.const(n, 0, "(the shape) ").reshape(-1)]
    c.check_batch_free(np.array(shape, np.int64), "the shape of ConstantOfShape")
    value = _tensor(c, n, n.attrs["value"]) if "value" in n.attrs else np.zeros(1, np.float32)
    if value.size != 1:
        raise n.fail("value must hold one element")
    from convlens.model.formats.safety import checked_elements

    checked_elements(shape, f"ONNX node {n.index} (ConstantOfShape)")
    c.set_const(n.outputs[0], np.full(shape, value.reshape(-1)[0], dtype=value.dtype))


def expand(x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    return x.expand(shape)


@handler("Expand")
def _expand(c: Converter, n: Node) -> None:
    x = n.inputs[0]
    target = [int(v) for v in c.const(n, 1, "(the shape) ").reshape(-1)]
    in_shape = c.shape(x)
    try:
        out = list(np.broadcast_shapes(in_shape, tuple(target)))
    except ValueError:
        raise n.fail(f"cannot expand {in_shape} to {target}") from None
    if c.is_const(x):
        c.check_batch_free(np.array(out, np.int64), "the shape of Expand")
        c.emit(n, expand, [x], shape=tuple(out))
        return
    lead = len(out) - len(in_shape)
    for i, d in enumerate(out):
        if d == BATCH and c.batch_free:
            if i < lead or in_shape[i - lead] != BATCH:
                raise n.fail("Expand to the batch size is not supported (any batch size runs)")
            out[i] = -1
    c.emit(n, expand, [x], shape=tuple(out))


def tile(x: torch.Tensor, reps: tuple[int, ...]) -> torch.Tensor:
    return torch.tile(x, reps)


@handler("Tile")
def _tile(c: Converter, n: Node) -> None:
    reps = [int(v) for v in c.const(n, 1, "(repeats) ").reshape(-1)]
    if min(reps, default=0) < 0:
        raise n.fail(f"negative repeats {reps}")
    shape = c.shape(n.inputs[0])
    if c.batch_free and BATCH in shape and reps[shape.index(BATCH)] != 1:
        raise n.fail("Tile along the batch axis is not supported")
    c.emit(n, tile, [n.inputs[0]], reps=tuple(reps))


@handler("Range")
def _range(c: Converter, n: Node) -> None:
    start, limit, delta = (c.const(n, i).reshape(()) for i in range(3))
    for v in (start, limit, delta):
        c.check_batch_free(np.asarray(v), "Range")
    if delta == 0:
        raise n.fail("delta is 0")
    count = max(math.ceil(float(limit - start) / float(delta)), 0)
    from convlens.model.formats.safety import checked_elements

    checked_elements([count], f"ONNX node {n.index} (Range)")
    c.set_const(n.outputs[0], (start + np.arange(count) * delta).astype(start.dtype))


def cast(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return x.to(dtype)


@handler("Cast", "CastLike")
def _cast(c: Converter, n: Node) -> None:
    if n.op == "Cast":
        to = n.geti("to", 0)
        if to not in DTYPES:
            raise n.fail(f"casting to ONNX type {to} is not supported (only numeric types)")
        dtype = DTYPES[to]
    else:
        dtype = c.dtype(n.inputs[1])
    c.emit(n, cast, [n.inputs[0]], dtype=dtype)


@handler("Identity", "Dropout")
def _identity(c: Converter, n: Node) -> None:
    if n.op == "Dropout" and n.has(2):
        mode = c.const(n, 2, "(training_mode) ")
        if bool(mode.reshape(-1)[0]):
            raise n.fail("Dropout in training mode is random; not supported")
    if n.op == "Dropout" and len(n.outputs) > 1 and n.outputs[1]:
        raise n.fail("the mask output of Dropout is not supported")
    src = c.value(n.inputs[0])
    if src in c.consts:
        c.consts[n.outputs[0]] = c.consts[src]
    else:
        c.alias[n.outputs[0]] = src


def argmax(x: torch.Tensor, axis: int, keepdims: bool, last: bool, kind: str) -> torch.Tensor:
    """Index of the first (or ``last``) maximum or minimum along ``axis``."""
    fn = torch.argmax if kind == "max" else torch.argmin
    if not last:
        return fn(x, axis, keepdim=keepdims)
    return x.shape[axis] - 1 - fn(torch.flip(x, (axis,)), axis, keepdim=keepdims)


@handler("ArgMax", "ArgMin")
def _argmax(c: Converter, n: Node) -> None:
    rank = len(c.shape(n.inputs[0]))
    axis = _axis(n, n.geti("axis", 0), rank)
    _no_batch_axis(c, n, [axis], n.op)
    c.emit(n, argmax, [n.inputs[0]], axis=axis, keepdims=bool(n.geti("keepdims", 1)),
           last=bool(n.geti("select_last_index", 0)), kind=n.op[3:].lower())  # fmt: skip


# --------------------------------------------------------------------- reductions


def reduce(x: torch.Tensor, dims: tuple[int, ...], keepdim: bool, kind: str) -> torch.Tensor:
    """ONNX Reduce* over ``dims`` (all given explicitly)."""
    if not dims:
        return x.clone()
    if kind == "mean":
        return x.mean(dims, keepdim=keepdim)
    if kind == "sum":
        return x.sum(dims, keepdim=keepdim, dtype=x.dtype)
    if kind == "max":
        return x.amax(dims, keepdim=keepdim)
    if kind == "min":
        return x.amin(dims, keepdim=keepdim)
    if kind == "prod":
        out = x
        for d in sorted(dims, reverse=True):
            out = out.prod(d, keepdim=keepdim, dtype=x.dtype)
        return out
    if kind == "l1":
        return x.abs().sum(dims, keepdim=keepdim, dtype=x.dtype)
    if kind == "l2":
        return torch.sqrt((x * x).sum(dims, keepdim=keepdim, dtype=x.dtype))
    if kind == "sumsquare":
        return (x * x).sum(dims, keepdim=keepdim, dtype=x.dtype)
    if kind == "logsum":
        return torch.log(x.sum(dims, keepdim=keepdim, dtype=x.dtype))
    return torch.logsumexp(x, dims, keepdim=keepdim)  # logsumexp


_REDUCE = {
    "ReduceMean": ("mean", 18), "ReduceSum": ("sum", 13), "ReduceMax": ("max", 18),
    "ReduceMin": ("min", 18), "ReduceProd": ("prod", 18), "ReduceL1": ("l1", 18),
    "ReduceL2": ("l2", 18), "ReduceSumSquare": ("sumsquare", 18),
    "ReduceLogSum": ("logsum", 18), "ReduceLogSumExp": ("logsumexp", 18),
}  # fmt: skip


@handler(*_REDUCE)
def _reduce(c: Converter, n: Node) -> None:
    kind, since = _REDUCE[n.op]
    x = n.inputs[0]
    shape = c.shape(x)
    rank = len(shape)
    axes = _axes(c, n, 1, since)
    keep = bool(n.geti("keepdims", 1))
    if not axes:
        if (n.geti("noop_with_empty_axes", 0) and axes is not None) or (
            axes is None and n.geti("noop_with_empty_axes", 0)
        ):
            c.emit(n, reduce, [x], dims=(), keepdim=keep, kind=kind)
            return
        axes = list(range(rank))
    dims = tuple(sorted({_axis(n, a, rank) for a in axes}))
    if any(shape[d] == 0 for d in dims) and kind in ("max", "min"):
        raise n.fail("reducing an empty axis by max or min is not supported")
    _no_batch_axis(c, n, dims, n.op)
    if kind == "mean" and rank == 4 and dims == (2, 3) and _float_input(c, x):
        if keep:
            c.module(n, nn.AdaptiveAvgPool2d(1))  # global average pooling, a named layer
        else:
            pooled = n.outputs[0] + "#pooled"
            c.emit(n, nn.AdaptiveAvgPool2d(1), [x], outputs=[pooled])
            c.emit(n, torch.flatten, [pooled], start_dim=1)
        return
    c.emit(n, reduce, [x], dims=dims, keepdim=keep, kind=kind)


# ------------------------------------------------------------------------ padding


def pad_index(x: torch.Tensor, idx: torch.Tensor, axis: int) -> torch.Tensor:
    return torch.index_select(x, axis, idx)


def _pad_indices(size: int, before: int, after: int, mode: str) -> np.ndarray:
    """Source index of each padded position: ``edge`` repeats, ``reflect`` mirrors without
    the edge, ``wrap`` wraps around."""
    pos = np.arange(-before, size + after)
    if mode == "edge":
        return np.clip(pos, 0, size - 1)
    if mode == "wrap":
        return np.mod(pos, size)
    period = 2 * (size - 1)
    m = np.mod(pos, period) if period else np.zeros_like(pos)
    return np.where(m >= size, period - m, m)


@handler("Pad")
def _pad(c: Converter, n: Node) -> None:
    x = n.inputs[0]
    shape = c.shape(x)
    rank = len(shape)
    mode = n.gets("mode", "constant")
    if n.opset < 11:
        pads = n.ints("pads", [])
        value = n.getf("value", 0.0)
        axes = list(range(rank))
    else:
        pads = [int(v) for v in c.const(n, 1, "(pads) ").reshape(-1)]
        v = c.opt_const(n, 2)
        value = 0.0 if v is None or v.size == 0 else v.reshape(-1)[0].item()
        ax = c.opt_const(n, 3)
        axes = list(range(rank)) if ax is None else [_axis(n, int(a), rank) for a in ax.reshape(-1)]
    if len(pads) != 2 * len(axes):
        raise n.fail(f"{len(pads)} pads for {len(axes)} axes")
    begin = dict(zip(axes, pads[: len(axes)], strict=True))
    end = dict(zip(axes, pads[len(axes) :], strict=True))
    moved = [a for a in axes if begin[a] or end[a]]
    _no_batch_axis(c, n, moved, "Pad")
    if mode == "constant":
        flat: list[int] = []
        for a in range(rank - 1, -1, -1):  # F.pad lists the last axis first
            flat += [begin.get(a, 0), end.get(a, 0)]
        c.emit(n, F.pad, [x], pad=tuple(flat), value=value)
        return
    if mode not in ("reflect", "edge", "wrap"):
        raise n.fail(f"mode {mode!r} is not supported; accepted: constant, reflect, edge, wrap")
    src = x
    for k, a in enumerate(moved):
        if min(begin[a], end[a]) < 0 or (mode == "reflect" and max(begin[a], end[a]) >= shape[a]):
            raise n.fail(f"{mode} pads {[begin[a], end[a]]} on an axis of size {shape[a]}")
        if shape[a] == 0:
            raise n.fail(f"{mode} padding of an empty axis")
        idx_name = f"{n.outputs[0]}#idx{a}"
        c.consts[idx_name] = _pad_indices(shape[a], begin[a], end[a], mode).astype(np.int64)
        out = n.outputs[0] if k == len(moved) - 1 else f"{n.outputs[0]}#ax{a}"
        c.emit(n, pad_index, [src, idx_name], outputs=[out], axis=a)
        src = out
    if not moved:
        c.emit(n, torch.clone, [x])


# ------------------------------------------------------------------------- resize


def lerp_axis(
    x: torch.Tensor, i0: torch.Tensor, i1: torch.Tensor, w: torch.Tensor, axis: int
) -> torch.Tensor:
    """Linear interpolation along one axis: ``x[i0] + (x[i1] - x[i0]) * w``."""
    a = torch.index_select(x, axis, i0)
    b = torch.index_select(x, axis, i1)
    return a + (b - a) * w


def _source_coords(n: Node, mode: str, out_len: int, in_len: int, scale: float) -> np.ndarray:
    """Where each output position samples the input, by ``coordinate_transformation_mode``."""
    x = np.arange(out_len, dtype=np.float64)
    out_w = scale * in_len  # the reference uses the unrounded output length
    if mode == "half_pixel":
        return (x + 0.5) / scale - 0.5
    if mode == "pytorch_half_pixel":
        return (x + 0.5) / scale - 0.5 if out_w != 1 else np.full_like(x, -0.5)
    if mode == "align_corners":
        return x * (in_len - 1) / (out_w - 1) if out_w != 1 else np.zeros_like(x)
    if mode == "asymmetric":
        return x / scale
    if mode == "half_pixel_symmetric":
        adjustment = out_len / (scale * in_len)
        center = in_len / 2
        offset = center * (1 - adjustment)
        return offset + (x + 0.5) / scale - 0.5
    raise n.fail(
        f"coordinate_transformation_mode {mode!r} is not supported; accepted: half_pixel, "
        "pytorch_half_pixel, align_corners, asymmetric, half_pixel_symmetric"
    )


def _nearest(n: Node, coords: np.ndarray, rule: str, in_len: int) -> np.ndarray:
    frac = coords - np.floor(coords)
    if rule == "round_prefer_floor":
        idx = np.where(frac == 0.5, np.floor(coords), np.round(coords))
    elif rule == "round_prefer_ceil":
        idx = np.where(frac == 0.5, np.ceil(coords), np.round(coords))
    elif rule == "floor":
        idx = np.floor(coords)
    elif rule == "ceil":
        idx = np.ceil(coords)
    else:
        raise n.fail(f"nearest_mode {rule!r} is not supported")
    return np.clip(idx, 0, in_len - 1).astype(np.int64)


@handler("Resize", "Upsample")
def _resize(c: Converter, n: Node) -> None:
    x = n.inputs[0]
    shape = c.shape(x)
    rank = len(shape)
    mode = n.gets("mode", "nearest")
    if mode == "bilinear":
        mode = "linear"
    if mode not in ("nearest", "linear"):
        raise n.fail(f"mode {mode!r} is not supported; accepted: nearest, linear")
    legacy = n.op == "Upsample" or n.opset < 11
    axes = list(range(rank))
    sizes = None
    if n.op == "Upsample" and n.opset < 9:
        scales = [float(v) for v in n.attrs.get("scales", [])]
    elif legacy:
        scales = [float(v) for v in c.const(n, 1, "(scales) ").reshape(-1)]
    else:
        if n.geti("antialias", 0):
            raise n.fail("antialias=1 is not supported")
        if n.gets("keep_aspect_ratio_policy", "stretch") != "stretch":
            raise n.fail("keep_aspect_ratio_policy other than stretch is not supported")
        if "axes" in n.attrs:
            axes = [_axis(n, a, rank) for a in n.ints("axes", [])]
        sc = c.opt_const(n, 2)
        sz = c.opt_const(n, 3)
        scales = [] if sc is None or sc.size == 0 else [float(v) for v in sc.reshape(-1)]
        if sz is not None and sz.size:
            sizes = [int(v) for v in sz.reshape(-1)]
    if sizes is None:
        if len(scales) != len(axes) or min(scales, default=0) <= 0:
            raise n.fail(f"scales {scales} do not match {len(axes)} axes")
        outs = [math.floor(shape[a] * s) for a, s in zip(axes, scales, strict=True)]
    else:
        if len(sizes) != len(axes):
            raise n.fail(f"sizes {sizes} do not match {len(axes)} axes")
        outs = sizes
        scales = [o / shape[a] for a, o in zip(axes, outs, strict=True)]
    if legacy:
        coord, rule = "asymmetric", "floor"
        if mode == "nearest" and min(scales) < 1:
            raise n.fail("nearest downsampling before opset 11 differs between runtimes; refused")
    else:
        coord = n.gets("coordinate_transformation_mode", "half_pixel")
        rule = n.gets("nearest_mode", "round_prefer_floor")
    src = x
    moved = [
        (a, o, s) for a, o, s in zip(axes, outs, scales, strict=True) if o != shape[a] or s != 1
    ]
    _no_batch_axis(c, n, [a for a, _, _ in moved], n.op)
    up = _as_upsample(c, n, mode, coord, moved, sizes is not None)
    if up is not None:
        c.module(n, up)
        return
    for k, (a, out_len, scale) in enumerate(moved):
        in_len = shape[a]
        coords = _source_coords(n, coord, out_len, in_len, scale)
        out = n.outputs[0] if k == len(moved) - 1 else f"{n.outputs[0]}#ax{a}"
        base = f"{n.outputs[0]}#{a}"
        if mode == "nearest":
            c.consts[base + "i"] = _nearest(n, coords, rule, in_len)
            c.emit(n, pad_index, [src, base + "i"], outputs=[out], axis=a)
        else:
            i0 = np.floor(coords)
            w = (coords - i0).astype(np.float32)
            c.consts[base + "i0"] = np.clip(i0, 0, in_len - 1).astype(np.int64)
            c.consts[base + "i1"] = np.clip(i0 + 1, 0, in_len - 1).astype(np.int64)
            view = [1] * rank
            view[a] = out_len
            c.consts[base + "w"] = w.reshape(view).astype(_np_dtype(c.dtype(x)))
            names = [src, base + "i0", base + "i1", base + "w"]
            c.emit(n, lerp_axis, names, outputs=[out], axis=a)
        src = out
    if not moved:
        c.emit(n, torch.clone, [x])


def _as_upsample(
    c: Converter, n: Node, mode: str, coord: str, moved: list[tuple[int, int, float]], sized: bool
) -> nn.Module | None:
    """``nn.Upsample`` (one named layer) for bilinear resizing of H and W where torch's
    arithmetic is ONNX's: half-pixel centres, or pytorch_half_pixel with outputs over 1 pixel
    (torch clamps negative source positions to 0, as ONNX's edge rule does)."""
    x = n.inputs[0]
    shape = c.shape(x)
    if mode != "linear" or len(shape) != 4 or c.is_const(x) or not _float_input(c, x):
        return None
    if not moved or any(a not in (2, 3) for a, _, _ in moved):
        return None
    ok = coord == "half_pixel" or (
        coord == "pytorch_half_pixel" and min(o for _, o, _ in moved) > 1
    )
    if not ok:
        return None
    out = {2: shape[2], 3: shape[3]} | {a: o for a, o, _ in moved}
    factor = {2: 1.0, 3: 1.0} | {a: s for a, _, s in moved}
    if sized:
        return nn.Upsample(size=(out[2], out[3]), mode="bilinear", align_corners=False)
    return nn.Upsample(scale_factor=(factor[2], factor[3]), mode="bilinear", align_corners=False)


def _np_dtype(dtype: torch.dtype) -> Any:
    return torch.empty(0, dtype=dtype).numpy().dtype


# ------------------------------------------------------------- refused, with reasons

_REFUSED = {
    "If": "control flow", "Loop": "control flow", "Scan": "control flow",
    "RandomNormal": "random", "RandomUniform": "random", "RandomNormalLike": "random",
    "RandomUniformLike": "random", "Multinomial": "random", "Bernoulli": "random",
}  # fmt: skip


@handler(*_REFUSED)
def _refused(c: Converter, n: Node) -> None:
    raise n.fail(f"{_REFUSED[n.op]} operators are not supported: a CNN graph has none")
