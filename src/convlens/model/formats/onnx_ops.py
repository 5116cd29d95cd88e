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
    REFUSED,
    Converter,
    Node,
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
    if len(n.outputs) > 1 and c.uses.get(n.outputs[1], 0):
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


# ------------------------------------------------------------- refused, with reasons

_REFUSED = {
    "If": "control flow", "Loop": "control flow", "Scan": "control flow",
    "RandomNormal": "random", "RandomUniform": "random", "RandomNormalLike": "random",
    "RandomUniformLike": "random", "Multinomial": "random", "Bernoulli": "random",
}  # fmt: skip


REFUSED.update(_REFUSED)


@handler(*_REFUSED)
def _refused(c: Converter, n: Node) -> None:
    raise n.fail(f"{_REFUSED[n.op]} operators are not supported: a CNN graph has none")
