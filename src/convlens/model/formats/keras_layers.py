"""Keras layers to torch modules, without TensorFlow: shared by ``.keras``, ``.h5`` and TF.js.

A Keras model arrives as its JSON config (``Sequential`` or ``Functional``, nested models
included) and its weights as numpy arrays grouped by layer. :func:`convert` expands the
config into one graph of layer calls (following ``inbound_nodes``), converts each call into
:class:`~convlens.model.formats.opgraph.Op` s and lets :func:`opgraph.assemble` build the
network: an ``nn.Sequential`` when the graph is a chain, else an ``fx.GraphModule``. Module
names are the Keras layer names, so ``conv_1_1`` in Keras is ``conv_1_1`` in ``model.graph``.

Graph syntax. Keras 2 (and TF.js) write each call of a layer as a list of
``[layer_name, node_index, tensor_index, kwargs]``; Keras 3 writes ``{"args": [...],
"kwargs": {...}}`` whose tensors are ``{"class_name": "__keras_tensor__", "config":
{"keras_history": [layer_name, node_index, tensor_index]}}``. ``node_index`` counts the calls
of that layer within the model, so a layer called twice (shared weights) has two inbound
nodes and one set of weights: the torch module is built once and called twice.

Layouts differ between the two libraries, and each conversion says how:

- Keras is channels-last. An image tensor ``(H, W, C)`` in Keras is ``(C, H, W)`` in torch;
  every other rank keeps its order. Axes of Concatenate, Softmax, Reshape and Permute are
  mapped accordingly.
- Conv2D kernels are ``(kh, kw, in, out)`` in Keras, ``(out, in, kh, kw)`` in torch;
  depthwise kernels ``(kh, kw, in, mult)`` become ``(in·mult, 1, kh, kw)`` with ``groups=in``;
  transposed-conv kernels ``(kh, kw, out, in)`` become ``(in, out, kh, kw)``.
- ``Flatten`` orders features ``(h, w, c)`` in Keras, ``(c, h, w)`` in torch. Rather than
  permuting activations, the rows of the next ``Dense`` kernel are permuted once:
  ``W_torch[:, c·H·W + h·W + w] = K[h·W·C + w·C + c, :]``; element-wise layers in between
  keep the torch order. Any other consumer gets the features reordered to Keras's order.
- ``padding="same"`` pads ``total = max((⌈n/s⌉ − 1)·s + (k − 1)·d + 1 − n, 0)`` with the odd
  pixel at the bottom/right (TensorFlow's rule). Symmetric padding goes into the conv or pool;
  an odd total becomes an ``nn.ZeroPad2d`` named ``<layer>_pad`` before a conv, and
  ``ceil_mode=True`` for a pool (whose partial last window then covers only real pixels).
- A fused activation (``Conv2D(..., activation="relu")``) becomes a separate module named
  ``<layer>_<activation>`` so that explanation methods can reach the pre-activation output.
- A softmax that is the network's final output is dropped and the model reports
  ``outputs="logits"``; a softmax anywhere else stays.
- ``Rescaling`` / ``Normalization`` layers applied straight to the input (and nothing else
  reading the raw input) are folded into the input spec's mean and std; elsewhere they
  become an :class:`Affine` module.
- ``hard_sigmoid`` is ``clip(0.2·x + 0.5, 0, 1)`` in Keras 2 and TF.js but
  ``relu6(x + 3) / 6`` in Keras 3; the caller says which Keras wrote the file.

Lambda layers, ``TFOpLambda`` and custom classes are refused by name and position: no Python
code from a model file is ever run.

>>> import numpy as np
>>> cfg = {"class_name": "Sequential", "config": {"layers": [
...     {"class_name": "Conv2D", "config": {"name": "conv", "filters": 4, "kernel_size": 3,
...      "activation": "relu", "batch_input_shape": [None, 8, 8, 3]}}]}}
>>> w = {"conv": [("kernel", np.zeros((3, 3, 3, 4))), ("bias", np.zeros(4))]}
>>> list(convert(cfg, w).net._modules)
['conv', 'conv_relu']
"""

from __future__ import annotations

import heapq
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from convlens.errors import ConvlensError
from convlens.model.formats.opgraph import Op, assemble, drop_final_softmax
from convlens.model.formats.safety import checked_elements

# Per layer key, its weights in Keras order, each with its short name when the file has one
# ("kernel", "bias", "gamma", ...); positional order is used when names are missing. The key
# is the layer's name, or "outer/inner" for a layer of a nested model when the file says so.
Weights = dict[str, list[tuple[str | None, np.ndarray]]]

MODEL_CLASSES = ("Sequential", "Functional", "Model")
# Values of one image's activation at any layer; ResNet-50 at 224 px peaks at 0.8 M.
MAX_ACTIVATION = 10**8


# ------------------------------------------------------------------ modules


class Affine(nn.Module):
    """``y = x · scale + offset`` per channel: a Keras Rescaling or Normalization mid-network."""

    def __init__(self, scale: torch.Tensor, offset: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("scale", scale)
        self.register_buffer("offset", offset)

    scale: torch.Tensor
    offset: torch.Tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.offset


class KerasReLU(nn.Module):
    """Keras's general ReLU: ``y = clip(x·[x > t], 0, max) − slope · relu(t − x)``.

    With threshold ``t = 0`` the negative part is ``slope · min(x, 0)`` (a leaky ReLU).
    """

    def __init__(self, max_value: float | None, slope: float, threshold: float) -> None:
        super().__init__()
        self.max_value, self.slope, self.threshold = max_value, slope, threshold

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x * (x > self.threshold) if self.threshold else torch.relu(x)
        if self.max_value is not None:
            y = y.clamp(0.0, self.max_value)
        if self.slope:
            y = y - self.slope * torch.relu(self.threshold - x)
        return y


class ThresholdedReLU(nn.Module):
    """``y = x`` where ``x > θ``, else 0 (Keras 2 / TF.js ``ThresholdedReLU``)."""

    def __init__(self, theta: float) -> None:
        super().__init__()
        self.theta = theta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * (x > self.theta)


class HardSigmoidKeras2(nn.Module):
    """Keras 2 / TF.js ``hard_sigmoid``: ``clip(0.2·x + 0.5, 0, 1)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (0.2 * x + 0.5).clamp(0.0, 1.0)


class Exponential(nn.Module):
    """Keras's ``exponential`` activation, ``eˣ``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.exp(x)


class PReLU(nn.Module):
    """``y = max(x, 0) + α · min(x, 0)`` with a learned ``α`` broadcast over shared axes."""

    def __init__(self, alpha: torch.Tensor) -> None:
        super().__init__()
        self.alpha = nn.Parameter(alpha)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x) - self.alpha * torch.relu(-x)


class ChannelsLast(nn.Module):
    """Run a Keras reshape/permute on the channels-last view of a tensor.

    An image tensor is turned to ``(N, H, W, C)``, ``op`` applied in Keras's layout, and a
    4-D result turned back to ``(N, C, H, W)``.
    """

    def __init__(self, kind: str, dims: tuple[int, ...]) -> None:
        super().__init__()
        self.kind, self.dims = kind, dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:
            x = x.permute(0, 2, 3, 1)
        if self.kind == "reshape":
            x = x.reshape(x.shape[0], *self.dims)
        else:
            x = x.permute(0, *self.dims)
        if x.dim() == 4:
            x = x.permute(0, 3, 1, 2)
        return x.contiguous()

    def extra_repr(self) -> str:
        return f"{self.kind}{self.dims}"


class LayerNormChannels(nn.LayerNorm):
    """Layer normalization over the channels of each pixel of an ``(N, C, H, W)`` tensor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def hwc_order(x: torch.Tensor, c: int, h: int, w: int) -> torch.Tensor:
    """Reorder torch-flattened ``(c, h, w)`` features into Keras's ``(h, w, c)`` order."""
    return x.reshape(-1, c, h, w).permute(0, 2, 3, 1).reshape(x.shape[0], -1)


def add_all(*xs: torch.Tensor) -> torch.Tensor:
    out = xs[0]
    for x in xs[1:]:
        out = out + x
    return out


def multiply_all(*xs: torch.Tensor) -> torch.Tensor:
    out = xs[0]
    for x in xs[1:]:
        out = out * x
    return out


def average_all(*xs: torch.Tensor) -> torch.Tensor:
    return add_all(*xs) / len(xs)


def maximum_all(*xs: torch.Tensor) -> torch.Tensor:
    out = xs[0]
    for x in xs[1:]:
        out = torch.maximum(out, x)
    return out


def minimum_all(*xs: torch.Tensor) -> torch.Tensor:
    out = xs[0]
    for x in xs[1:]:
        out = torch.minimum(out, x)
    return out


def concatenate(*xs: torch.Tensor, dim: int) -> torch.Tensor:
    return torch.cat(xs, dim=dim)


def subtract(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a - b


def reshape_to(x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    return x.reshape(x.shape[0], *shape)


# ------------------------------------------------------------------ results and state


@dataclass
class Converted:
    """The result of :func:`convert`: the network and what the file says about its input."""

    net: nn.Module
    channels: int
    height: int
    width: int
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    dropped_softmax: bool = False
    name: str = "keras-model"


@dataclass(frozen=True)
class _T:
    """A tensor of the converted graph: its value name and its Keras (channels-last) shape.

    ``hwc`` is set on flattened features still in torch's ``(c, h, w)`` order (see Flatten).
    """

    value: str
    shape: tuple[int, ...]
    hwc: tuple[int, int, int] | None = None

    @property
    def torch_shape(self) -> tuple[int, ...]:
        return _to_torch(self.shape)


def _to_torch(shape: tuple[int, ...]) -> tuple[int, ...]:
    return (shape[2], shape[0], shape[1]) if len(shape) == 3 else shape


def _to_keras(shape: tuple[int, ...]) -> tuple[int, ...]:
    return (shape[1], shape[2], shape[0]) if len(shape) == 3 else shape


@dataclass
class _Call:
    """One call of a Keras layer: which layer, which tensors it reads and writes."""

    cfg: dict[str, Any]
    key: str  # weights and module identity: "name", or "outer/name" inside a nested model
    index: int  # position in its model's layer list
    scope: str  # the nested model path for messages ("" at top level)
    inputs: list[str]
    output: str
    node: int = 0


@dataclass
class _Ctx:
    """The conversion so far: ops, module names, preprocessing folded into the input."""

    weights: Weights
    keras3: bool
    ops: list[Op] = field(default_factory=list)
    names: dict[tuple[str, str], str] = field(default_factory=dict)  # (key, local) → module
    modules: dict[str, nn.Module] = field(default_factory=dict)
    n_values: int = 0
    pre_value: str = "input"  # the value that is the input after folded preprocessing
    pre_scale: np.ndarray | None = None
    pre_offset: np.ndarray | None = None
    materialized: dict[str, _T] = field(default_factory=dict)
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # value → torch shape
    consumers: dict[str, int] = field(default_factory=dict)  # tensor id → calls reading it

    def new_value(self) -> str:
        self.n_values += 1
        return f"v{self.n_values}"


# ------------------------------------------------------------------ one layer call


def _sanitize(name: str) -> str:
    return name.replace(".", "_").replace("/", "_") or "layer"


class _Layer:
    """One Keras layer call being converted: its config, weights, place, and op emitter."""

    def __init__(self, call: _Call, ctx: _Ctx) -> None:
        self.call, self.ctx = call, ctx
        self.type = str(call.cfg.get("class_name", "?"))
        self.config: dict[str, Any] = call.cfg.get("config") or {}
        if not isinstance(self.config, dict):
            raise ConvlensError(f"layer {call.index} ({self.type}): its config is not an object")
        raw = str(self.config.get("name") or call.cfg.get("name") or f"layer_{call.index}")
        self.raw_name = raw
        self.name = _sanitize(raw)
        self.index = call.index
        self.weights = ctx.weights.get(call.key, ctx.weights.get(raw, []))
        self.used = 0

    def where(self) -> str:
        scope = f" of model {self.call.scope!r}" if self.call.scope else ""
        return f"layer {self.index} ({self.raw_name!r}, {self.type}){scope}"

    def fail(self, why: str) -> ConvlensError:
        return ConvlensError(f"{self.where()}: {why}")

    def get(self, key: str, default: Any = None) -> Any:
        return self.config.get(key, default)

    def weight(self, short: str, position: int, shape: tuple[int, ...]) -> torch.Tensor:
        """The weight called ``short`` (or the ``position``-th), checked against ``shape``."""
        aliases = {short, *_WEIGHT_ALIASES.get(short, ())}
        found = [a for n, a in self.weights if n in aliases]
        if not found:
            unnamed = all(n is None for n, _ in self.weights)
            if not unnamed or position >= len(self.weights):
                have = [n for n, _ in self.weights]
                raise self.fail(f"the weights file has no {short!r} (has {have})")
            found = [self.weights[position][1]]
        arr = np.asarray(found[0], dtype=np.float32)
        if tuple(arr.shape) != tuple(shape):
            raise self.fail(
                f"{short} has shape {tuple(arr.shape)} in the weights file but the architecture "
                f"needs {tuple(shape)}"
            )
        self.used += 1
        return torch.from_numpy(np.ascontiguousarray(arr))

    # -- emitting ops

    def module(self, local: str, inputs: Sequence[_T], module: nn.Module, hwc: Any = None) -> _T:
        """Call ``module`` (named ``local``, e.g. ``conv1`` or ``conv1_relu``) on ``inputs``.

        A second call of the same Keras layer reuses the module built by the first.
        """
        key = (self.call.key, local)
        name = self.ctx.names.get(key)
        if name is None:
            name = local
            k = 2
            while name in self.ctx.modules:
                name, k = f"{local}_{k}", k + 1
            self.ctx.names[key] = name
            self.ctx.modules[name] = module
        module = self.ctx.modules[name]
        return self._emit(Op(name, [t.value for t in inputs], self.ctx.new_value(), module), hwc)

    def function(
        self,
        inputs: Sequence[_T],
        fn: Callable[..., Any],
        hwc: Any = None,
        node: str | None = None,
        **kwargs: Any,
    ) -> _T:
        """Call ``fn`` on ``inputs``; its graph node is named ``node`` (e.g. ``mixed10``)."""
        values = [t.value for t in inputs]
        op = Op(self.name, values, self.ctx.new_value(), fn=fn, kwargs=kwargs, node_name=node)
        return self._emit(op, hwc)

    def _emit(self, op: Op, hwc: tuple[int, int, int] | None) -> _T:
        return _run(self.ctx, op, hwc, self.fail)


# Keras 3 calls a depthwise layer's kernel "kernel"; Keras 2 "depthwise_kernel".
_WEIGHT_ALIASES = {"depthwise_kernel": ("kernel",)}


# ------------------------------------------------------------------ helpers


def _pair(value: Any, what: str = "value") -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, list | tuple) and len(value) == 2:
        return (int(value[0]), int(value[1]))
    raise ConvlensError(f"expected an int or a pair for {what}, got {value!r}")


def same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TensorFlow's ``same`` padding along one axis: ``(before, after)``, odd pixel after.

    >>> same_padding(7, 2, 2)
    (0, 1)
    >>> same_padding(64, 3, 1)
    (1, 1)
    """
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def _check_channels_last(layer: _Layer) -> None:
    fmt = layer.get("data_format") or "channels_last"
    if fmt != "channels_last":
        raise layer.fail(f"data_format {fmt!r} is not supported; only channels_last")


def _chw(layer: _Layer, x: _T) -> tuple[int, int, int]:
    if len(x.shape) != 3:
        raise layer.fail(f"needs an image-shaped input (H, W, C), got a tensor of shape {x.shape}")
    h, w, c = x.shape
    return c, h, w


def _torch_dim(layer: _Layer, axis: Any, rank: int) -> int:
    """A Keras axis (counting the batch axis) of a rank-``rank`` example, as a torch dim."""
    if isinstance(axis, list) and len(axis) == 1:
        axis = axis[0]
    if not isinstance(axis, int) or not -rank - 1 <= axis <= rank or axis % (rank + 1) == 0:
        raise layer.fail(f"axis {axis!r} is not supported for a tensor of rank {rank + 1}")
    p = axis % (rank + 1) - 1  # index within one example's Keras shape
    return (2, 3, 1)[p] if rank == 3 else p + 1  # (H, W, C) → torch dims 2, 3, 1


# ------------------------------------------------------------------ activations


def _activation_modules(keras3: bool) -> dict[str, Callable[[], nn.Module] | None]:
    return {
        "linear": None,
        "relu": nn.ReLU,
        "relu6": nn.ReLU6,
        "sigmoid": nn.Sigmoid,
        "hard_sigmoid": nn.Hardsigmoid if keras3 else HardSigmoidKeras2,
        "hard_swish": nn.Hardswish,
        "hard_silu": nn.Hardswish,
        "tanh": nn.Tanh,
        "elu": nn.ELU,
        "selu": nn.SELU,
        "celu": nn.CELU,
        "softplus": nn.Softplus,
        "softsign": nn.Softsign,
        "swish": nn.SiLU,
        "silu": nn.SiLU,
        "mish": nn.Mish,
        "gelu": nn.GELU,
        "leaky_relu": lambda: nn.LeakyReLU(0.2),  # Keras 3's default negative_slope
        "exponential": Exponential,
        "softmax": lambda: nn.Softmax(dim=1),
    }


ACTIVATION_NAMES = tuple(_activation_modules(True))


def _activation_name(spec: Any) -> str:
    """Keras 2 writes ``"relu"``; Keras 3 may write ``{"class_name": "function", ...}``."""
    if spec is None:
        return "linear"
    if isinstance(spec, dict):
        cfg = spec.get("config")
        spec = cfg if isinstance(cfg, str) else spec.get("class_name", "")
    return str(spec).lower()


def _activation(layer: _Layer, x: _T, spec: Any, own: bool = False) -> _T:
    """Apply activation ``spec``: as module ``<layer>_<act>``, or ``<layer>`` if ``own``."""
    act = _activation_name(spec)
    table = _activation_modules(layer.ctx.keras3)
    if act not in table:
        raise layer.fail(f"activation {act!r} is not supported; accepted: {', '.join(table)}")
    make = table[act]
    if make is None:
        return x
    module = make()
    if act == "softmax":
        return _softmax_module(layer, x, -1, layer.name if own else f"{layer.name}_{act}")
    keep = x.hwc  # element-wise: the flatten order does not matter
    return layer.module(layer.name if own else f"{layer.name}_{act}", [x], module, keep)


def _softmax_module(layer: _Layer, x: _T, axis: Any, name: str) -> _T:
    rank = len(x.shape)
    dim = _torch_dim(layer, axis, rank)
    return layer.module(name, [x], nn.Softmax(dim=dim), x.hwc if rank == 1 else None)


# ------------------------------------------------------------------ converters


def _conv_padding(
    layer: _Layer, x: _T, k: tuple[int, int], s: tuple[int, int], d: tuple[int, int]
) -> tuple[_T, tuple[int, int]]:
    """Symmetric padding for the conv; an odd ``same`` total gets a ZeroPad2d first."""
    mode = str(layer.get("padding", "valid")).lower()
    if mode == "valid":
        return x, (0, 0)
    if mode != "same":
        raise layer.fail(f"padding {mode!r} is not supported; accepted: valid, same")
    _, h, w = _chw(layer, x)
    top, bottom = same_padding(h, k[0], s[0], d[0])
    left, right = same_padding(w, k[1], s[1], d[1])
    if top == bottom and left == right:
        return x, (top, left)
    return layer.module(f"{layer.name}_pad", [x], nn.ZeroPad2d((left, right, top, bottom))), (0, 0)


def _conv2d(layer: _Layer, xs: list[_T]) -> _T:
    _check_channels_last(layer)
    x = xs[0]
    cin, _, _ = _chw(layer, x)
    k = _pair(layer.get("kernel_size"), "kernel_size")
    s, d = _pair(layer.get("strides", 1)), _pair(layer.get("dilation_rate", 1))
    groups = int(layer.get("groups", 1))
    cout = int(layer.get("filters"))
    if groups < 1 or cin % groups or cout % groups:
        raise layer.fail(f"groups={groups} does not divide {cin} inputs and {cout} filters")
    x, pad = _conv_padding(layer, x, k, s, d)
    kernel = layer.weight("kernel", 0, (*k, cin // groups, cout))
    conv = nn.Conv2d(cin, cout, k, s, pad, d, groups, bias=bool(layer.get("use_bias", True)))
    conv.weight.data = kernel.permute(3, 2, 0, 1).contiguous()  # (kh,kw,in,out) → (out,in,kh,kw)
    if conv.bias is not None:
        conv.bias.data = layer.weight("bias", 1, (cout,))
    y = layer.module(layer.name, [x], conv)
    return _activation(layer, y, layer.get("activation"))


def _transposed_span(n: int, k: int, s: int, mode: str, out_pad: int | None) -> tuple[int, int]:
    """Where TensorFlow's transposed conv output starts in the full one, and its length.

    The full output of a transposed conv is ``(n − 1)·s + k`` long (``k`` dilated). Keras keeps
    ``L = n·s + max(k − s, 0)`` (valid) or ``L = n·s`` (same), or with ``output_padding``
    ``L = (n − 1)·s + k − 2·pad + output_padding`` (``pad = k // 2`` for same). TensorFlow
    computes it as the gradient of a conv over ``L`` pixels, so ``same`` starts at that
    conv's leading pad, ``max((n − 1)·s + k − L, 0) // 2``; past the full output it is zero.
    """
    if out_pad is None:
        length = n * s + max(k - s, 0) if mode == "valid" else n * s
    else:
        pad = k // 2 if mode == "same" else 0
        length = (n - 1) * s + k - 2 * pad + out_pad
    start = max((n - 1) * s + k - length, 0) // 2 if mode == "same" else 0
    return start, length


def _conv2d_transpose(layer: _Layer, xs: list[_T]) -> _T:
    _check_channels_last(layer)
    x = xs[0]
    cin, h, w = _chw(layer, x)
    k = _pair(layer.get("kernel_size"), "kernel_size")
    s, d = _pair(layer.get("strides", 1)), _pair(layer.get("dilation_rate", 1))
    mode = str(layer.get("padding", "valid")).lower()
    if mode not in ("valid", "same"):
        raise layer.fail(f"padding {mode!r} is not supported; accepted: valid, same")
    opad = layer.get("output_padding")
    opads = (None, None) if opad is None else _pair(opad, "output_padding")
    cout = int(layer.get("filters"))
    # torch's output_padding extends the output at the end (with the bias, as Keras does);
    # a negative ZeroPad2d then crops the start and any excess.
    starts, extras, crops = [], [], []
    for n, kk, ss, dd, o in zip((h, w), k, s, d, opads, strict=True):
        full = (n - 1) * ss + (kk - 1) * dd + 1
        start, length = _transposed_span(n, (kk - 1) * dd + 1, ss, mode, o)
        extra = max(0, start + length - full)
        if extra >= max(ss, dd):
            raise layer.fail(f"output length {length} cannot be expressed in torch")
        starts.append(start)
        extras.append(extra)
        crops.append(full + extra - start - length)
    kernel = layer.weight("kernel", 0, (*k, cout, cin))
    conv = nn.ConvTranspose2d(
        cin, cout, k, s, output_padding=tuple(extras), dilation=d,  # type: ignore[arg-type]
        bias=bool(layer.get("use_bias", True)),
    )  # fmt: skip
    conv.weight.data = kernel.permute(3, 2, 0, 1).contiguous()  # (kh,kw,out,in) → (in,out,kh,kw)
    if conv.bias is not None:
        conv.bias.data = layer.weight("bias", 1, (cout,))
    y = layer.module(layer.name, [x], conv)
    if any(starts) or any(crops):
        crop = nn.ZeroPad2d((-starts[1], -crops[1], -starts[0], -crops[0]))  # negative crops
        y = layer.module(f"{layer.name}_crop", [y], crop)
    return _activation(layer, y, layer.get("activation"))


def _depthwise(layer: _Layer, x: _T, name: str, bias: bool, key: str) -> _T:
    cin, _, _ = _chw(layer, x)
    k = _pair(layer.get("kernel_size"), "kernel_size")
    s, d = _pair(layer.get("strides", 1)), _pair(layer.get("dilation_rate", 1))
    mult = int(layer.get("depth_multiplier", 1))
    x, pad = _conv_padding(layer, x, k, s, d)
    kernel = layer.weight(key, 0, (*k, cin, mult))
    conv = nn.Conv2d(cin, cin * mult, k, s, pad, d, groups=cin, bias=bias)
    # (kh, kw, in, mult) → (in·mult, 1, kh, kw): output channel c·mult + j, as in Keras.
    conv.weight.data = kernel.permute(2, 3, 0, 1).reshape(cin * mult, 1, *k).contiguous()
    if bias:
        conv.bias.data = layer.weight("bias", 1, (cin * mult,))  # type: ignore[union-attr]
    return layer.module(name, [x], conv)


def _depthwise_conv2d(layer: _Layer, xs: list[_T]) -> _T:
    _check_channels_last(layer)
    y = _depthwise(layer, xs[0], layer.name, bool(layer.get("use_bias", True)), "depthwise_kernel")
    return _activation(layer, y, layer.get("activation"))


def _separable_conv2d(layer: _Layer, xs: list[_T]) -> _T:
    _check_channels_last(layer)
    mid = _depthwise(layer, xs[0], f"{layer.name}_depthwise", False, "depthwise_kernel")
    cmid = mid.shape[2]
    cout = int(layer.get("filters"))
    use_bias = bool(layer.get("use_bias", True))
    kernel = layer.weight("pointwise_kernel", 1, (1, 1, cmid, cout))
    point = nn.Conv2d(cmid, cout, 1, bias=use_bias)
    point.weight.data = kernel.permute(3, 2, 0, 1).contiguous()
    if point.bias is not None:
        point.bias.data = layer.weight("bias", 2, (cout,))
    y = layer.module(layer.name, [mid], point)
    return _activation(layer, y, layer.get("activation"))


def _dense(layer: _Layer, xs: list[_T]) -> _T:
    """Dense on features; on an image tensor it acts on channels, i.e. a 1×1 conv."""
    x = xs[0]
    n_in, units = x.shape[-1], int(layer.get("units"))
    use_bias = bool(layer.get("use_bias", True))
    kernel = layer.weight("kernel", 0, (n_in, units))
    module: nn.Linear | nn.Conv2d
    if len(x.shape) == 3:
        module = nn.Conv2d(n_in, units, 1, bias=use_bias)
        module.weight.data = kernel.t().reshape(units, n_in, 1, 1).contiguous()
    else:
        module = nn.Linear(n_in, units, bias=use_bias)
        if x.hwc is not None:
            h, w, c = x.hwc
            # Rows are in Keras's (h, w, c) flatten order; reorder them to torch's (c, h, w).
            kernel = kernel.reshape(h, w, c, units).permute(2, 0, 1, 3).reshape(n_in, units)
        module.weight.data = kernel.t().contiguous()
    if module.bias is not None:
        module.bias.data = layer.weight("bias", 1, (units,))
    y = layer.module(layer.name, [x], module)
    return _activation(layer, y, layer.get("activation"))


def _pool(layer: _Layer, xs: list[_T], kind: str) -> _T:
    _check_channels_last(layer)
    x = xs[0]
    _, h, w = _chw(layer, x)
    k = _pair(layer.get("pool_size", 2), "pool_size")
    s = _pair(layer.get("strides") or k, "strides")
    mode = str(layer.get("padding", "valid")).lower()
    pad, ceil = (0, 0), False
    if mode == "same":
        (top, bottom), (left, right) = same_padding(h, k[0], s[0]), same_padding(w, k[1], s[1])
        pad = (top, left)
        if (bottom, right) != (top, left):
            x, pad, ceil = _asymmetric_pool_padding(layer, x, kind, s, (top, bottom, left, right))
    elif mode != "valid":
        raise layer.fail(f"padding {mode!r} is not supported; accepted: valid, same")
    module: nn.Module
    if kind == "max":
        module = nn.MaxPool2d(k, s, pad, ceil_mode=ceil)
    else:
        module = nn.AvgPool2d(k, s, pad, ceil_mode=ceil, count_include_pad=False)
    return layer.module(layer.name, [x], module)


def _asymmetric_pool_padding(
    layer: _Layer, x: _T, kind: str, s: tuple[int, int], tblr: tuple[int, int, int, int]
) -> tuple[_T, tuple[int, int], bool]:
    """TensorFlow's odd ``same`` padding for a pool, as torch padding plus ``ceil_mode``.

    With stride > 1, ``ceil_mode`` adds exactly the extra partial window at the end, which
    averages real pixels only, as TensorFlow does. With stride 1 a max pool gets an explicit
    ``-inf`` pad (``<layer>_pad``); an average pool cannot be expressed.
    """
    top, bottom, left, right = tblr
    if s[0] > 1 and s[1] > 1 and bottom - top in (0, 1) and right - left in (0, 1):
        return x, (top, left), True
    if kind == "max":
        pad = nn.ConstantPad2d((left, right, top, bottom), float("-inf"))
        return layer.module(f"{layer.name}_pad", [x], pad), (0, 0), False
    raise layer.fail(
        "average pooling with same padding, stride 1 and an even pool size cannot be expressed "
        "in torch"
    )


def _global_pool(layer: _Layer, xs: list[_T], kind: str) -> _T:
    _check_channels_last(layer)
    _chw(layer, xs[0])
    pool = nn.AdaptiveMaxPool2d(1) if kind == "max" else nn.AdaptiveAvgPool2d(1)
    y = layer.module(layer.name, xs, pool)
    if layer.get("keepdims", False):
        return y
    return layer.module(f"{layer.name}_flatten", [y], nn.Flatten())


def _flatten(layer: _Layer, xs: list[_T]) -> _T:
    _check_channels_last(layer)
    x = _materialize(layer.ctx, xs[0])
    hwc = None
    if len(x.shape) == 3:
        h, w, c = x.shape
        hwc = (h, w, c) if h * w > 1 and c > 1 else None
    elif len(x.shape) == 2:
        raise layer.fail("Flatten of a rank-3 tensor is not supported; only images or vectors")
    return layer.module(layer.name, [x], nn.Flatten(), hwc)


def _activation_layer(layer: _Layer, xs: list[_T]) -> _T:
    return _activation(layer, xs[0], layer.get("activation"), own=True)


def _relu(layer: _Layer, xs: list[_T]) -> _T:
    max_value = layer.get("max_value")
    max_value = None if max_value is None else float(max_value)
    slope = float(layer.get("negative_slope", 0.0) or 0.0)
    threshold = float(layer.get("threshold", 0.0) or 0.0)
    module: nn.Module
    if threshold or (slope and max_value is not None):
        module = KerasReLU(max_value, slope, threshold)
    elif slope:
        module = nn.LeakyReLU(slope)
    elif max_value is None:
        module = nn.ReLU()
    elif max_value == 6.0:
        module = nn.ReLU6()
    else:
        module = nn.Hardtanh(0.0, max_value)
    return layer.module(layer.name, xs, module, xs[0].hwc)


def _leaky_relu(layer: _Layer, xs: list[_T]) -> _T:
    slope = layer.get("negative_slope", layer.get("alpha", 0.3))  # Keras 3 / Keras 2 names
    return layer.module(layer.name, xs, nn.LeakyReLU(float(slope)), xs[0].hwc)


def _elu(layer: _Layer, xs: list[_T]) -> _T:
    return layer.module(layer.name, xs, nn.ELU(float(layer.get("alpha", 1.0))), xs[0].hwc)


def _thresholded_relu(layer: _Layer, xs: list[_T]) -> _T:
    theta = float(layer.get("theta", 1.0))
    return layer.module(layer.name, xs, ThresholdedReLU(theta), xs[0].hwc)


def _prelu(layer: _Layer, xs: list[_T]) -> _T:
    x = _materialize(layer.ctx, xs[0])
    shape = list(x.shape)
    for axis in layer.get("shared_axes") or []:
        if not isinstance(axis, int) or not 1 <= axis <= len(shape):
            raise layer.fail(f"shared axis {axis!r} is not an axis of shape {tuple(shape)}")
        shape[axis - 1] = 1
    alpha = layer.weight("alpha", 0, tuple(shape))
    if len(shape) == 3:
        alpha = alpha.permute(2, 0, 1).contiguous()
    return layer.module(layer.name, [x], PReLU(alpha))


def _softmax(layer: _Layer, xs: list[_T]) -> _T:
    return _softmax_module(layer, xs[0], layer.get("axis", -1), layer.name)


def _dropout(layer: _Layer, xs: list[_T]) -> _T:
    rate = float(layer.get("rate", 0.5))
    if layer.type.startswith("SpatialDropout"):
        _chw(layer, xs[0])
        return layer.module(layer.name, xs, nn.Dropout2d(rate))
    return layer.module(layer.name, xs, nn.Dropout(rate), xs[0].hwc)


def _identity(layer: _Layer, xs: list[_T]) -> _T:
    """Noise layers act only in training: identity at inference, no module."""
    return xs[0]


def _batch_norm(layer: _Layer, xs: list[_T]) -> _T:
    x = xs[0]
    rank = len(x.shape)
    if rank not in (1, 3) or _torch_dim(layer, layer.get("axis", -1), rank) != 1:
        raise layer.fail(
            f"batch normalization over axis {layer.get('axis')} of a rank-{rank + 1} tensor is "
            "not supported; only the channels axis"
        )
    n = x.shape[-1]
    bn: nn.BatchNorm1d | nn.BatchNorm2d
    eps = float(layer.get("epsilon", 1e-3))
    bn = nn.BatchNorm2d(n, eps=eps) if rank == 3 else nn.BatchNorm1d(n, eps=eps)
    pos = 0
    for short, param, on in (
        ("gamma", bn.weight, layer.get("scale", True)),
        ("beta", bn.bias, layer.get("center", True)),
    ):
        if on:
            param.data = _unflatten_vector(x, layer.weight(short, pos, (n,)))
            pos += 1
        else:  # Keras leaves them out of the file; they are the identity
            param.data = torch.ones(n) if short == "gamma" else torch.zeros(n)
    assert bn.running_mean is not None and bn.running_var is not None
    bn.running_mean.data = _unflatten_vector(x, layer.weight("moving_mean", pos, (n,)))
    bn.running_var.data = _unflatten_vector(x, layer.weight("moving_variance", pos + 1, (n,)))
    return layer.module(layer.name, [x], bn, x.hwc)


def _unflatten_vector(x: _T, v: torch.Tensor) -> torch.Tensor:
    """Per-feature parameters after a Flatten are in (h, w, c) order: reorder to (c, h, w)."""
    if x.hwc is None:
        return v
    h, w, c = x.hwc
    return v.reshape(h, w, c).permute(2, 0, 1).reshape(-1).contiguous()


def _layer_norm(layer: _Layer, xs: list[_T]) -> _T:
    x = _materialize(layer.ctx, xs[0])
    rank = len(x.shape)
    axis = layer.get("axis", -1)
    axes = sorted({a % (rank + 1) for a in (axis if isinstance(axis, list) else [axis])})
    if layer.get("rms_scaling"):
        raise layer.fail("rms_scaling is not supported")
    eps = float(layer.get("epsilon", 1e-3))
    if axes == [rank]:  # the last (channels) axis
        n = x.shape[-1]
        norm: nn.LayerNorm = LayerNormChannels(n, eps) if rank == 3 else nn.LayerNorm(n, eps)
        shape: tuple[int, ...] = (n,)
    elif axes == list(range(1, rank + 1)):
        shape = x.torch_shape
        norm = nn.LayerNorm(shape, eps)
    else:
        raise layer.fail(f"layer normalization over axes {axis} is not supported")
    pos = 0
    for short, param, on in (
        ("gamma", norm.weight, layer.get("scale", True)),
        ("beta", norm.bias, layer.get("center", True)),
    ):
        if on:
            keras_shape = x.shape if len(shape) > 1 else shape
            value = layer.weight(short, pos, tuple(keras_shape))
            param.data = value.permute(2, 0, 1).contiguous() if value.dim() == 3 else value
            pos += 1
        else:
            param.data = torch.ones(shape) if short == "gamma" else torch.zeros(shape)
    return layer.module(layer.name, [x], norm)


def _affine(layer: _Layer, x: _T, scale: np.ndarray, offset: np.ndarray) -> _T:
    """Fold into the input spec when ``x`` is the (preprocessed) input, else an Affine."""
    ctx = layer.ctx
    if x.value == ctx.pre_value and layer.call.node == 0 and _consumers(layer) == 1:
        base_s = ctx.pre_scale if ctx.pre_scale is not None else np.float64(255.0)
        base_o = ctx.pre_offset if ctx.pre_offset is not None else np.float64(0.0)
        ctx.pre_scale, ctx.pre_offset = base_s * scale, base_o * scale + offset
        return x
    x = _materialize(ctx, x)
    shape = (-1, 1, 1) if len(x.shape) == 3 else (-1,)
    if (scale.size > 1 and scale.size != x.shape[-1]) or (
        offset.size > 1 and offset.size != x.shape[-1]
    ):
        raise layer.fail(f"per-channel values of length {scale.size} do not fit {x.shape}")
    module = Affine(
        torch.tensor(np.asarray(scale, dtype=np.float32)).reshape(shape),
        torch.tensor(np.asarray(offset, dtype=np.float32)).reshape(shape),
    )
    return layer.module(layer.name, [x], module)


def _consumers(layer: _Layer) -> int:
    return layer.ctx.consumers.get(layer.call.inputs[0], 0)


def _number_array(layer: _Layer, value: Any, what: str) -> np.ndarray:
    """A scalar or list from a config; Keras 3 may wrap arrays as ``__numpy__`` objects."""
    if isinstance(value, dict) and isinstance(value.get("config"), dict):
        value = value["config"].get("value")
    try:
        arr = np.asarray(value, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise layer.fail(f"{what} {value!r} is not a number or a list of numbers") from None
    if arr.size > 4096 or not np.all(np.isfinite(arr)):
        raise layer.fail(f"{what} must be finite numbers, one per channel at most")
    return arr if arr.size > 1 else arr.reshape(())


def _rescaling(layer: _Layer, xs: list[_T]) -> _T:
    scale = _number_array(layer, layer.get("scale", 1.0), "scale")
    offset = _number_array(layer, layer.get("offset", 0.0), "offset")
    return _affine(layer, xs[0], scale, offset)


def _normalization(layer: _Layer, xs: list[_T]) -> _T:
    mean, var = layer.get("mean"), layer.get("variance")
    if mean is None or var is None:
        n = xs[0].shape[-1]
        named = {k for k, _ in layer.weights}
        shape = (n,) if named != {None} or layer.weights[0][1].ndim == 1 else None
        mean = layer.weight("mean", 0, shape or tuple(layer.weights[0][1].shape)).numpy()
        var = layer.weight("variance", 1, shape or tuple(layer.weights[1][1].shape)).numpy()
    layer.used = len(layer.weights)  # the sample count beside mean and variance is unused
    m = _number_array(layer, np.asarray(mean, dtype=np.float64).tolist(), "mean")
    v = _number_array(layer, np.asarray(var, dtype=np.float64).tolist(), "variance")
    std = np.maximum(np.sqrt(v), 1e-7)  # Keras divides by max(sqrt(var), epsilon)
    if bool(layer.get("invert", False)):
        return _affine(layer, xs[0], std, m)
    return _affine(layer, xs[0], 1.0 / std, -m / std)


def _zero_padding(layer: _Layer, xs: list[_T]) -> _T:
    """``padding``: an int, ``(rows, cols)`` or ``((top, bottom), (left, right))``."""
    _check_channels_last(layer)
    _chw(layer, xs[0])
    (t, b), (left, r) = _two_pairs(layer, layer.get("padding", 1))
    return layer.module(layer.name, xs, nn.ZeroPad2d((left, r, t, b)))


def _two_pairs(layer: _Layer, value: Any) -> tuple[tuple[int, int], tuple[int, int]]:
    if isinstance(value, int):
        value = [[value, value], [value, value]]
    try:
        rows, cols = ([p, p] if isinstance(p, int) else list(p) for p in value)
        out = ((int(rows[0]), int(rows[1])), (int(cols[0]), int(cols[1])))
    except (TypeError, ValueError, IndexError):
        raise layer.fail(f"cannot read {value!r}; accepted: n, (rows, cols) or pairs") from None
    if min(*out[0], *out[1]) < 0:
        raise layer.fail(f"negative sizes {value!r}")
    return out


def _cropping(layer: _Layer, xs: list[_T]) -> _T:
    _check_channels_last(layer)
    _, h, w = _chw(layer, xs[0])
    (t, b), (left, r) = _two_pairs(layer, layer.get("cropping", 0))
    if t + b >= h or left + r >= w:
        raise layer.fail(f"cropping {(t, b), (left, r)} leaves nothing of a {h}×{w} input")
    return layer.module(layer.name, xs, nn.ZeroPad2d((-left, -r, -t, -b)))  # negative pad crops


def _upsampling(layer: _Layer, xs: list[_T]) -> _T:
    _check_channels_last(layer)
    _chw(layer, xs[0])
    size = _pair(layer.get("size", 2), "size")
    mode = str(layer.get("interpolation", "nearest"))
    if mode not in ("nearest", "bilinear"):
        raise layer.fail(f"interpolation {mode!r} is not supported; accepted: nearest, bilinear")
    # bilinear with half-pixel centres (align_corners=False) is what tf.image.resize does
    up = nn.Upsample(scale_factor=(float(size[0]), float(size[1])), mode=mode)
    if mode == "bilinear":
        up.align_corners = False
    return layer.module(layer.name, xs, up)


def _reshape(layer: _Layer, xs: list[_T]) -> _T:
    x = _materialize(layer.ctx, xs[0])
    target = layer.get("target_shape")
    if not isinstance(target, list | tuple) or not all(isinstance(d, int) for d in target):
        raise layer.fail(f"target_shape {target!r} is not a list of integers")
    return layer.module(layer.name, [x], ChannelsLast("reshape", tuple(target)))


def _permute(layer: _Layer, xs: list[_T]) -> _T:
    x = _materialize(layer.ctx, xs[0])
    dims = layer.get("dims")
    rank = len(x.shape)
    if not isinstance(dims, list | tuple) or sorted(dims) != list(range(1, rank + 1)):
        raise layer.fail(f"dims {dims!r} is not a permutation of 1..{rank}")
    return layer.module(layer.name, [x], ChannelsLast("permute", tuple(int(d) for d in dims)))


# -- merge layers


def _aligned(layer: _Layer, xs: list[_T]) -> list[_T]:
    """Inputs of an element-wise merge, lower ranks broadcast NumPy-style in Keras's layout."""
    hwcs = {x.hwc for x in xs}
    if len(hwcs) > 1 or (hwcs != {None} and len({x.shape for x in xs}) > 1):
        xs = [_materialize(layer.ctx, x) for x in xs]
    rank = max(len(x.shape) for x in xs)
    out = []
    for x in xs:
        if len(x.shape) < rank:
            keras = (1,) * (rank - len(x.shape)) + x.shape
            x = layer.function(
                [x], reshape_to, node=f"{layer.name}_broadcast", shape=_to_torch(keras)
            )
        out.append(x)
    return out


def _merge(fn: Callable[..., torch.Tensor], exactly: int | None = None) -> Callable[..., _T]:
    def convert_merge(layer: _Layer, xs: list[_T]) -> _T:
        if exactly is not None and len(xs) != exactly:
            raise layer.fail(f"takes exactly {exactly} inputs, got {len(xs)}")
        if len(xs) < 2:
            raise layer.fail(f"a merge layer needs at least 2 inputs, got {len(xs)}")
        ys = _aligned(layer, xs)
        hwc = ys[0].hwc if len({y.hwc for y in ys}) == 1 else None
        return layer.function(ys, fn, hwc, node=layer.name)

    return convert_merge


def _concatenate(layer: _Layer, xs: list[_T]) -> _T:
    if len(xs) < 2:
        raise layer.fail(f"needs at least 2 inputs, got {len(xs)}")
    xs = [_materialize(layer.ctx, x) for x in xs]
    ranks = {len(x.shape) for x in xs}
    if len(ranks) != 1:
        raise layer.fail(f"inputs of different ranks {[x.shape for x in xs]}")
    dim = _torch_dim(layer, layer.get("axis", -1), ranks.pop())
    return layer.function(xs, concatenate, node=layer.name, dim=dim)


def _skip(layer: _Layer, xs: list[_T]) -> _T:
    return xs[0]


def _run(
    ctx: _Ctx, op: Op, hwc: tuple[int, int, int] | None, fail: Callable[[str], ConvlensError]
) -> _T:
    """Append ``op`` and learn its output shape by running it on the ``meta`` device.

    Meta tensors carry shapes only, so a config declaring a huge padding or upsampling
    allocates nothing; the resulting shape is then checked against :data:`MAX_ACTIVATION`.
    """
    shapes = [ctx.shapes[i] for i in op.inputs]
    xs = [torch.empty((1, *s), device="meta") for s in shapes]
    try:
        with torch.no_grad():
            if op.module is not None:
                op.module.eval()
                state = {
                    **{n: p.to("meta") for n, p in op.module.named_parameters()},
                    **{n: b.to("meta") for n, b in op.module.named_buffers()},
                }
                y = torch.func.functional_call(op.module, state, tuple(xs))
            else:
                assert op.fn is not None
                y = op.fn(*xs, **op.kwargs)
    except (RuntimeError, ValueError, IndexError, TypeError, NotImplementedError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise fail(
            f"cannot be applied to inputs of shape {[_to_keras(s) for s in shapes]}: {msg}"
        ) from None
    if y.dim() < 2 or y.dim() > 4 or y.shape[0] != 1:
        raise fail(f"gives a tensor of shape {tuple(y.shape)}; convlens handles ranks 2 to 4")
    torch_shape = tuple(int(d) for d in y.shape[1:])
    if checked_elements(torch_shape, "an activation") > MAX_ACTIVATION:
        raise fail(f"gives {_to_keras(torch_shape)} values per image, over {MAX_ACTIVATION}")
    ctx.shapes[op.output] = torch_shape
    ctx.ops.append(op)
    return _T(op.output, _to_keras(torch_shape), hwc)


def _materialize(ctx: _Ctx, x: _T) -> _T:
    """``x`` with flattened features in Keras's ``(h, w, c)`` order (see Flatten)."""
    if x.hwc is None:
        return x
    if x.value not in ctx.materialized:
        h, w, c = x.hwc
        kwargs = {"c": c, "h": h, "w": w}
        op = Op("hwc", [x.value], ctx.new_value(), fn=hwc_order, kwargs=kwargs, node_name="hwc")
        ctx.materialized[x.value] = _run(ctx, op, None, ConvlensError)
    return ctx.materialized[x.value]


CONVERTERS: dict[str, Callable[[_Layer, list[_T]], _T]] = {
    "InputLayer": _skip,
    "Conv2D": _conv2d,
    "Convolution2D": _conv2d,
    "Conv2DTranspose": _conv2d_transpose,
    "Convolution2DTranspose": _conv2d_transpose,
    "SeparableConv2D": _separable_conv2d,
    "SeparableConvolution2D": _separable_conv2d,
    "DepthwiseConv2D": _depthwise_conv2d,
    "Dense": _dense,
    "MaxPooling2D": lambda la, xs: _pool(la, xs, "max"),
    "MaxPool2D": lambda la, xs: _pool(la, xs, "max"),
    "AveragePooling2D": lambda la, xs: _pool(la, xs, "avg"),
    "AvgPool2D": lambda la, xs: _pool(la, xs, "avg"),
    "GlobalAveragePooling2D": lambda la, xs: _global_pool(la, xs, "avg"),
    "GlobalAvgPool2D": lambda la, xs: _global_pool(la, xs, "avg"),
    "GlobalMaxPooling2D": lambda la, xs: _global_pool(la, xs, "max"),
    "GlobalMaxPool2D": lambda la, xs: _global_pool(la, xs, "max"),
    "Flatten": _flatten,
    "ZeroPadding2D": _zero_padding,
    "Cropping2D": _cropping,
    "UpSampling2D": _upsampling,
    "Reshape": _reshape,
    "Permute": _permute,
    "Activation": _activation_layer,
    "ReLU": _relu,
    "LeakyReLU": _leaky_relu,
    "ELU": _elu,
    "PReLU": _prelu,
    "ThresholdedReLU": _thresholded_relu,
    "Softmax": _softmax,
    "Dropout": _dropout,
    "SpatialDropout2D": _dropout,
    "GaussianNoise": _identity,
    "GaussianDropout": _identity,
    "AlphaDropout": _identity,
    "BatchNormalization": _batch_norm,
    "LayerNormalization": _layer_norm,
    "Rescaling": _rescaling,
    "Normalization": _normalization,
    "Add": _merge(add_all),
    "Subtract": _merge(subtract, exactly=2),
    "Multiply": _merge(multiply_all),
    "Average": _merge(average_all),
    "Maximum": _merge(maximum_all),
    "Minimum": _merge(minimum_all),
    "Concatenate": _concatenate,
}
_MERGE_LAYERS = ("Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum", "Concatenate")
_CODE_LAYERS = ("Lambda", "TFOpLambda", "SlicingOpLambda", "TensorFlowOpLayer")


# ------------------------------------------------------------------ the model config


def _unwrap_model_config(cfg: Any) -> dict[str, Any]:
    """Accept ``{"model_config": ...}`` (TF.js), ``{"class_name": ..., "config": ...}``."""
    if isinstance(cfg, dict) and "model_config" in cfg:
        cfg = cfg["model_config"]
    if not isinstance(cfg, dict) or "class_name" not in cfg or "config" not in cfg:
        raise ConvlensError("the Keras model config has no class_name/config")
    return cfg


def _model_layers(cfg: dict[str, Any], scope: str) -> list[dict[str, Any]]:
    kind = cfg.get("class_name")
    inner = cfg.get("config")
    layers = inner.get("layers") if isinstance(inner, dict) else inner  # Keras 2.0: a list
    if not isinstance(layers, list) or not all(isinstance(la, dict) for la in layers):
        where = f"model {scope!r}" if scope else "the Keras model config"
        raise ConvlensError(f"{where} has no list of layers")
    if kind not in MODEL_CLASSES:
        raise ConvlensError(
            f"Keras model class {kind!r} is not supported; accepted: Sequential and Functional"
        )
    return layers


def _tensor_refs(node: Any, where: str) -> list[tuple[str, int, int]]:
    """``(layer, node, tensor)`` triples a call reads, in Keras 2 or Keras 3 syntax."""
    refs: list[tuple[str, int, int]] = []
    stack: list[Any] = [node["args"]] if isinstance(node, dict) and "args" in node else [node]
    if isinstance(node, dict) and "args" in node and _has_tensor(node.get("kwargs")):
        raise ConvlensError(f"{where} takes tensors as keyword arguments; not supported")
    while stack:
        item = stack.pop(0)
        if isinstance(item, dict):
            hist = (item.get("config") or {}).get("keras_history")
            if isinstance(hist, list) and len(hist) == 3:
                refs.append(_triple(hist, where))
        elif isinstance(item, list):
            if len(item) in (3, 4) and isinstance(item[0], str) and isinstance(item[1], int):
                refs.append(_triple(item[:3], where))  # Keras 2: [name, node, tensor, kwargs]
            else:
                stack[:0] = item
    return refs


def _has_tensor(value: Any) -> bool:
    if isinstance(value, dict):
        return value.get("class_name") == "__keras_tensor__" or any(
            _has_tensor(v) for v in value.values()
        )
    if isinstance(value, list):
        return any(_has_tensor(v) for v in value)
    return False


def _triple(raw: list[Any], where: str) -> tuple[str, int, int]:
    name, node, tensor = raw[0], raw[1], raw[2]
    if not isinstance(name, str) or not isinstance(node, int) or not isinstance(tensor, int):
        raise ConvlensError(f"{where}: cannot read the input reference {raw!r}")
    return name, node, tensor


def _io_refs(value: Any, where: str) -> list[tuple[str, int, int]]:
    """``input_layers``/``output_layers``: one ``[name, node, tensor]`` or a list of them."""
    if isinstance(value, list) and len(value) == 3 and isinstance(value[0], str):
        return [_triple(value, where)]
    if isinstance(value, list) and all(isinstance(v, list) and len(v) == 3 for v in value):
        return [_triple(v, where) for v in value]
    raise ConvlensError(f"{where}: cannot read the model's inputs/outputs {value!r}")


def _is_model(lay: dict[str, Any]) -> bool:
    return lay.get("class_name") in MODEL_CLASSES and isinstance(
        (lay.get("config") or {}).get("layers"), list
    )


class _Graph:
    """A Keras config expanded into layer calls over tensor ids, nested models inlined."""

    def __init__(self) -> None:
        self.calls: list[_Call] = []
        self.aliases: dict[str, str] = {}

    def resolve(self, tid: str) -> str:
        seen = 0
        while tid in self.aliases:
            tid = self.aliases[tid]
            seen += 1
            if seen > 10_000:
                raise ConvlensError("the Keras model's layers refer to each other in a cycle")
        return tid

    def expand(self, cfg: dict[str, Any], key: str, tscope: str, inputs: list[str]) -> list[str]:
        """Inline model ``cfg`` reading tensors ``inputs``; return its output tensor ids."""
        layers = _model_layers(cfg, key)
        if cfg.get("class_name") == "Sequential":
            return [self._sequential(layers, key, tscope, inputs)]
        return self._functional(cfg, layers, key, tscope, inputs)

    def _qualify(self, key: str, name: str) -> str:
        return f"{key}/{name}" if key else name

    def _sequential(
        self, layers: list[dict[str, Any]], key: str, tscope: str, inputs: list[str]
    ) -> str:
        if len(inputs) != 1:
            raise ConvlensError(f"a Sequential model ({key or 'top'}) takes one input")
        prev = inputs[0]
        for i, lay in enumerate(layers):
            name = str((lay.get("config") or {}).get("name") or lay.get("name") or f"layer_{i}")
            if lay.get("class_name") == "InputLayer":
                continue
            if _is_model(lay):
                prev = self.expand(lay, self._qualify(key, name), f"{tscope}{name}/", [prev])[0]
                continue
            out = f"{tscope}{name}#0#0"
            self.calls.append(_Call(lay, self._qualify(key, name), i, key, [prev], out))
            prev = out
        return prev

    def _functional(
        self, cfg: dict[str, Any], layers: list[dict[str, Any]], key: str, tscope: str,
        inputs: list[str],
    ) -> list[str]:  # fmt: skip
        inner = cfg["config"]
        where = f"model {key!r}" if key else "the Keras model"
        in_refs = _io_refs(inner.get("input_layers"), where)
        if len(in_refs) != len(inputs):
            raise ConvlensError(f"{where} takes {len(in_refs)} inputs; convlens feeds one image")
        for (name, node, tensor), tid in zip(in_refs, inputs, strict=True):
            self.aliases[f"{tscope}{name}#{node}#{tensor}"] = tid
        for i, lay in enumerate(layers):
            name = str(lay.get("name") or (lay.get("config") or {}).get("name") or f"layer_{i}")
            nodes = lay.get("inbound_nodes") or []
            if not isinstance(nodes, list):
                raise ConvlensError(f"layer {i} ({name!r}) of {where}: inbound_nodes is not a list")
            if lay.get("class_name") == "InputLayer":
                continue
            for k, node in enumerate(nodes):
                lwhere = f"layer {i} ({name!r}, {lay.get('class_name')})"
                ids = [f"{tscope}{n}#{nd}#{t}" for n, nd, t in _tensor_refs(node, lwhere)]
                out = f"{tscope}{name}#{k}#0"
                if _is_model(lay):
                    outs = self.expand(lay, self._qualify(key, name), f"{tscope}{name}@{k}/", ids)
                    for t, tid in enumerate(outs):
                        self.aliases[f"{tscope}{name}#{k}#{t}"] = tid
                    continue
                self.calls.append(_Call(lay, self._qualify(key, name), i, key, ids, out, k))
        return [f"{tscope}{n}#{nd}#{t}" for n, nd, t in _io_refs(inner.get("output_layers"), where)]

    def ordered(self, source: str) -> list[_Call]:
        """The calls in an order where each comes after the calls it reads (Kahn's)."""
        for call in self.calls:
            call.inputs = [self.resolve(t) for t in call.inputs]
        producer = {c.output: n for n, c in enumerate(self.calls)}
        waiting = [0] * len(self.calls)
        readers: dict[int, list[int]] = {}
        for n, call in enumerate(self.calls):
            for tid in call.inputs:
                if tid == source:
                    continue
                if tid not in producer:
                    raise ConvlensError(
                        f"layer {call.index} ({_name(call)!r}) reads {_pretty(tid)!r}, which no "
                        "layer of the model produces"
                    )
                readers.setdefault(producer[tid], []).append(n)
                waiting[n] += 1
        ready = [n for n, w in enumerate(waiting) if w == 0]
        heapq.heapify(ready)
        out: list[_Call] = []
        while ready:
            n = heapq.heappop(ready)
            out.append(self.calls[n])
            for r in readers.get(n, []):
                waiting[r] -= 1
                if waiting[r] == 0:
                    heapq.heappush(ready, r)
        if len(out) != len(self.calls):
            raise ConvlensError("the Keras model's layers refer to each other in a cycle")
        return out


def _name(call: _Call) -> str:
    return str((call.cfg.get("config") or {}).get("name") or call.cfg.get("name"))


def _pretty(tid: str) -> str:
    return tid.split("#", 1)[0]


def _input_shape(cfg: dict[str, Any], depth: int = 0) -> list[Any] | None:
    """The (H, W, C) the model's first input layer (or build config) declares."""
    inner = cfg.get("config")
    layers = inner.get("layers") if isinstance(inner, dict) else inner
    layers = [la for la in layers if isinstance(la, dict)] if isinstance(layers, list) else []
    first = layers[:1]
    inputs = [la for la in layers if la.get("class_name") == "InputLayer"]
    for lay in first + inputs:  # a Sequential's first layer, or a Functional's input layer
        c = lay.get("config")
        c = c if isinstance(c, dict) else {}
        for key in ("batch_input_shape", "batch_shape"):
            if isinstance(c.get(key), list) and c[key]:
                return list(c[key])[1:]
        if _is_model(lay) and depth < 32:
            return _input_shape(lay, depth + 1)
    build = cfg.get("build_config")
    shape = build.get("input_shape") if isinstance(build, dict) else None
    if isinstance(shape, list) and shape:
        return list(shape)[1:]
    return None


def _detect_keras3(cfg: dict[str, Any]) -> bool:
    """Keras 3 writes ``batch_shape`` on input layers; Keras 2 and TF.js ``batch_input_shape``."""
    return '"batch_shape"' in _json_sample(cfg)


def _json_sample(cfg: dict[str, Any]) -> str:
    return json.dumps(cfg)[:200_000]


def convert(
    model_config: dict[str, Any],
    weights: Weights,
    input_size: tuple[int, int] | None = None,
    keras3: bool | None = None,
) -> Converted:
    """Build the torch network for a Keras ``model_config`` with ``weights`` (per layer).

    ``input_size`` (height, width) is needed only when the config leaves the input size open.
    ``keras3`` says which Keras wrote the file (it changes ``hard_sigmoid``); by default it is
    guessed from the config. Raises :class:`ConvlensError` naming the layer's type and position
    when a layer cannot be converted, and the layer and both shapes when a weight does not fit.
    """
    cfg = _unwrap_model_config(model_config)
    shape = _input_shape(cfg)
    if shape is None or len(shape) != 3:
        raise ConvlensError(
            f"the Keras model's input shape is {shape}; convlens needs images (H, W, C)"
        )
    h, w, c = shape
    if input_size is not None:
        h, w = input_size
    if h is None or w is None:
        raise ConvlensError(
            "the Keras model accepts any image size; say which with --input-size H[,W]"
        )
    if c not in (1, 3):
        raise ConvlensError(f"the Keras model takes {c} channels; convlens supports 1 or 3")
    if checked_elements((h, w, c), "the Keras model's input") > MAX_ACTIVATION:
        raise ConvlensError(f"the Keras model's input {h}×{w} is too large")
    try:
        return _convert(cfg, weights, (int(h), int(w), int(c)), keras3)
    except ConvlensError:
        raise
    except (TypeError, KeyError, AttributeError, ValueError, IndexError) as e:
        # A config of the right outline but wrong types deep inside: say so in one line.
        raise ConvlensError(
            f"the Keras model config is malformed ({type(e).__name__}: {e}); it was not written "
            "by Keras, or by a version convlens does not know"
        ) from None


def _convert(
    cfg: dict[str, Any], weights: Weights, hwc: tuple[int, int, int], keras3: bool | None
) -> Converted:
    h, w, c = hwc
    graph = _Graph()
    outputs = graph.expand(cfg, "", "", ["input"])
    if len(outputs) != 1:
        raise ConvlensError(f"the Keras model has {len(outputs)} outputs; convlens needs one")
    calls = graph.ordered("input")
    output = graph.resolve(outputs[0])
    ctx = _Ctx(weights, _detect_keras3(cfg) if keras3 is None else keras3)
    ctx.consumers = _count_consumers(calls, output)
    env: dict[str, _T] = {"input": _T("input", (int(h), int(w), int(c)))}
    ctx.shapes["input"] = env["input"].torch_shape
    built: set[str] = set()
    for call in calls:
        env[call.output] = _convert_call(call, ctx, env, first=call.key not in built)
        built.add(call.key)
    result = _materialize(ctx, env[output])
    out_value, dropped = drop_final_softmax(ctx.ops, result.value)
    mean, std = _spec_normalization(ctx, int(c))
    return Converted(
        assemble("input", ctx.ops, out_value),
        channels=int(c),
        height=int(h),
        width=int(w),
        mean=mean,
        std=std,
        dropped_softmax=dropped,
        name=str(cfg["config"].get("name", "keras-model"))
        if isinstance(cfg["config"], dict)
        else "keras-model",
    )


def _count_consumers(calls: list[_Call], output: str) -> dict[str, int]:
    counts: dict[str, int] = {output: 1}
    for call in calls:
        for tid in call.inputs:
            counts[tid] = counts.get(tid, 0) + 1
    return counts


def _convert_call(call: _Call, ctx: _Ctx, env: dict[str, _T], first: bool) -> _T:
    layer = _Layer(call, ctx)
    fn = CONVERTERS.get(layer.type)
    if fn is None:
        why = (
            "runs Python code, which convlens never loads from a model file"
            if layer.type in _CODE_LAYERS
            else "is not a built-in Keras layer convlens can convert"
        )
        raise layer.fail(
            f"Keras layer type {layer.type!r} is not supported ({why}); accepted: "
            + ", ".join(sorted(set(CONVERTERS)))
        )
    xs = [env[t] for t in call.inputs]
    merge = layer.type in _MERGE_LAYERS
    if not xs or (len(xs) != 1 and not merge):
        raise layer.fail(f"takes one input, got {len(xs)}")
    try:
        out = fn(layer, xs)
    except ConvlensError:
        raise
    except (TypeError, KeyError, AttributeError, ValueError, IndexError) as e:
        raise layer.fail(f"its config is malformed ({type(e).__name__}: {e})") from None
    if first and layer.used < len(layer.weights):
        unused = [n for n, _ in layer.weights][layer.used :]
        raise layer.fail(f"the weights file has weights this layer does not use: {unused}")
    return out


def _spec_normalization(ctx: _Ctx, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Input mean/std from folded preprocessing: ``net_in = x·a + b = (x − mean) / std``."""
    if ctx.pre_scale is None or ctx.pre_offset is None:
        return (0.0,), (1.0,)
    try:
        a = np.broadcast_to(np.asarray(ctx.pre_scale, dtype=np.float64), (channels,))
        b = np.broadcast_to(np.asarray(ctx.pre_offset, dtype=np.float64), (channels,))
    except ValueError:
        raise ConvlensError(
            f"the leading Rescaling/Normalization has per-channel values that do not fit "
            f"{channels} channels"
        ) from None
    if np.any(a <= 0):
        raise ConvlensError("a leading Rescaling/Normalization with a non-positive scale")
    std = 1.0 / a
    mean = -b * std
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def weights_by_layer(named: Sequence[tuple[str, np.ndarray]]) -> Weights:
    """Group ``("conv_1_1/kernel:0", array)`` pairs by layer name, keeping file order.

    >>> pairs = [("a/kernel:0", np.zeros(1)), ("a/bias", np.zeros(1))]
    >>> [n for n, _ in weights_by_layer(pairs)["a"]]
    ['kernel', 'bias']
    """
    out: Weights = {}
    for full, arr in named:
        name = full.split(":")[0]
        layer, _, short = name.rpartition("/")
        if not layer:
            layer, short = short, ""
        # Nested scopes ("model/conv/kernel") keep the innermost layer name.
        layer = layer.rsplit("/", 1)[-1]
        out.setdefault(layer, []).append((short or None, arr))
    return out
