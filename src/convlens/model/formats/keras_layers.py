"""Keras layers to torch modules, without TensorFlow: shared by ``.keras``, ``.h5`` and TF.js.

A Keras model arrives as its JSON config (a ``Sequential`` or a chain-like ``Functional``)
and its weights as numpy arrays, grouped by layer name. :func:`convert` walks the layers in
order and builds an ``nn.Sequential`` whose module names are the Keras layer names, so
``conv_1_1`` in Keras is ``conv_1_1`` in ``model.graph``.

Layouts differ between the two libraries, and each conversion says how:

- Conv2D kernels are ``(kh, kw, in, out)`` in Keras, ``(out, in, kh, kw)`` in torch;
  depthwise kernels ``(kh, kw, in, mult)`` become ``(in·mult, 1, kh, kw)`` with ``groups=in``.
- Keras is channels-last, so ``Flatten`` orders features ``(h, w, c)``; torch's ``(c, h, w)``.
  Rather than permuting activations, the rows of the next ``Dense`` kernel are permuted once:
  ``W_torch[:, c·H·W + h·W + w] = K[h·W·C + w·C + c, :]``. The flatten stays a plain
  ``nn.Flatten`` and the network is the same shape as a native torch CNN.
- ``padding="same"`` pads ``total = max((⌈n/s⌉ − 1)·s + (k − 1)·d + 1 − n, 0)`` with the odd
  pixel at the bottom/right (TensorFlow's rule). Symmetric padding goes into the conv or pool;
  an odd total becomes an ``nn.ZeroPad2d`` named ``<layer>_pad`` before a conv, and
  ``ceil_mode=True`` for a pool (whose partial last window then covers only real pixels, as
  in TensorFlow).
- A fused activation (``Conv2D(..., activation="relu")``) becomes a separate module named
  ``<layer>_<activation>`` so that explanation methods can reach the pre-activation output.
- A softmax at the very end of the network is dropped and the model reports
  ``outputs="logits"``: attribution methods want logits, and ``Model.probabilities`` applies
  the softmax, giving back Keras's probabilities exactly.
- Leading ``Rescaling`` / ``Normalization`` layers are folded into the input spec's mean and
  std (a Keras model that starts with them takes raw 0–255 pixels); later ones become an
  :class:`Affine` module.

>>> import numpy as np
>>> cfg = {"class_name": "Sequential", "config": {"layers": [
...     {"class_name": "Conv2D", "config": {"name": "conv", "filters": 4, "kernel_size": 3,
...      "activation": "relu", "batch_input_shape": [None, 8, 8, 3]}}]}}
>>> w = {"conv": [("kernel", np.zeros((3, 3, 3, 4))), ("bias", np.zeros(4))]}
>>> list(convert(cfg, w).net._modules)
['conv', 'conv_relu']
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from convlens.errors import ConvlensError

# Per layer name, its weights in Keras order, each with its short name when the file has one
# ("kernel", "bias", "gamma", ...); positional order is used when names are missing.
Weights = dict[str, list[tuple[str | None, np.ndarray]]]


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


@dataclass
class Converted:
    """The result of :func:`convert`: the network and what the file says about its input."""

    net: nn.Sequential
    channels: int
    height: int
    width: int
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    dropped_softmax: bool = False
    name: str = "keras-model"


@dataclass
class _State:
    """What the walk knows so far: modules built, current activation shape, pending flatten."""

    modules: OrderedDict[str, nn.Module] = field(default_factory=OrderedDict)
    shape: tuple[int, ...] = ()  # per example, torch layout: (C, H, W) or (N,)
    flatten_hwc: tuple[int, int, int] | None = None  # (H, W, C) of the last Flatten's input
    # Affine map from [0, 1] pixels to the network's input, while only preprocessing was seen.
    pre_scale: np.ndarray | None = None
    pre_offset: np.ndarray | None = None
    leading: bool = True

    def add(self, name: str, module: nn.Module) -> None:
        if name in self.modules:
            raise ConvlensError(f"two Keras layers produce the torch module name {name!r}")
        self.modules[name] = module
        self.leading = False
        with torch.no_grad():
            x = torch.zeros((1, *self.shape))
            self.shape = tuple(module.eval()(x).shape[1:])


_ACTIVATIONS: dict[str, Callable[[], nn.Module] | None] = {
    "linear": None,
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "selu": nn.SELU,
    "softplus": nn.Softplus,
    "softsign": nn.Softsign,
    "swish": nn.SiLU,
    "silu": nn.SiLU,
    "gelu": nn.GELU,
    "softmax": lambda: nn.Softmax(dim=1),
}


def _activation_name(spec: Any) -> str:
    """Keras 2 writes ``"relu"``; Keras 3 may write ``{"class_name": "function", ...}``."""
    if spec is None:
        return "linear"
    if isinstance(spec, dict):
        cfg = spec.get("config")
        spec = cfg if isinstance(cfg, str) else spec.get("class_name", "")
    return str(spec).lower()


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


# Keras 3 calls a depthwise layer's kernel "kernel"; Keras 2 "depthwise_kernel".
_WEIGHT_ALIASES = {"depthwise_kernel": ("kernel",)}


class _Layer:
    """One Keras layer being converted: its config, its weights and where it sits."""

    def __init__(self, cfg: dict[str, Any], index: int, weights: Weights) -> None:
        self.type = str(cfg.get("class_name", "?"))
        self.config: dict[str, Any] = cfg.get("config") or {}
        raw = str(self.config.get("name") or f"layer_{index}")
        self.name = raw.replace(".", "_")  # torch module names cannot contain dots

        self.index = index
        self.weights = weights.get(raw, [])
        self.used = 0

    def where(self) -> str:
        return f"layer {self.index} ({self.name!r}, {self.type})"

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


def _check_channels_last(layer: _Layer) -> None:
    fmt = layer.get("data_format") or "channels_last"
    if fmt != "channels_last":
        raise layer.fail(f"data_format {fmt!r} is not supported; only channels_last")


def _need_spatial(layer: _Layer, st: _State) -> tuple[int, int, int]:
    if len(st.shape) != 3:
        raise layer.fail(f"needs an image-shaped input (H, W, C), got a tensor of shape {st.shape}")
    c, h, w = st.shape
    return c, h, w


def _add_activation(layer: _Layer, st: _State, spec: Any, name: str | None = None) -> None:
    act = _activation_name(spec)
    if act not in _ACTIVATIONS:
        raise layer.fail(
            f"activation {act!r} is not supported; accepted: {', '.join(_ACTIVATIONS)}"
        )
    make = _ACTIVATIONS[act]
    if make is not None:
        st.add(name or f"{layer.name}_{act}", make())


def _conv_padding(
    layer: _Layer, st: _State, k: tuple[int, int], s: tuple[int, int], d: tuple[int, int]
) -> tuple[int, int]:
    """Symmetric padding for the conv; an odd ``same`` total gets a ZeroPad2d first."""
    mode = str(layer.get("padding", "valid")).lower()
    if mode == "valid":
        return (0, 0)
    if mode != "same":
        raise layer.fail(f"padding {mode!r} is not supported; accepted: valid, same")
    _, h, w = _need_spatial(layer, st)
    top, bottom = same_padding(h, k[0], s[0], d[0])
    left, right = same_padding(w, k[1], s[1], d[1])
    if top == bottom and left == right:
        return (top, left)
    st.add(f"{layer.name}_pad", nn.ZeroPad2d((left, right, top, bottom)))
    return (0, 0)


def _conv2d(layer: _Layer, st: _State) -> None:
    _check_channels_last(layer)
    cin, _, _ = _need_spatial(layer, st)
    k = _pair(layer.get("kernel_size"), "kernel_size")
    s, d = _pair(layer.get("strides", 1)), _pair(layer.get("dilation_rate", 1))
    groups = int(layer.get("groups", 1))
    cout = int(layer.get("filters"))
    pad = _conv_padding(layer, st, k, s, d)
    conv = nn.Conv2d(cin, cout, k, s, pad, d, groups, bias=bool(layer.get("use_bias", True)))
    kernel = layer.weight("kernel", 0, (*k, cin // groups, cout))
    conv.weight.data = kernel.permute(3, 2, 0, 1).contiguous()  # (kh,kw,in,out) → (out,in,kh,kw)
    if conv.bias is not None:
        conv.bias.data = layer.weight("bias", 1, (cout,))
    st.add(layer.name, conv)
    _add_activation(layer, st, layer.get("activation"))


def _depthwise(layer: _Layer, st: _State, name: str, bias: bool, key: str) -> None:
    cin, _, _ = _need_spatial(layer, st)
    k = _pair(layer.get("kernel_size"), "kernel_size")
    s, d = _pair(layer.get("strides", 1)), _pair(layer.get("dilation_rate", 1))
    mult = int(layer.get("depth_multiplier", 1))
    pad = _conv_padding(layer, st, k, s, d)
    conv = nn.Conv2d(cin, cin * mult, k, s, pad, d, groups=cin, bias=bias)
    kernel = layer.weight(key, 0, (*k, cin, mult))
    # (kh, kw, in, mult) → (in·mult, 1, kh, kw): output channel c·mult + j, as in Keras.
    conv.weight.data = kernel.permute(2, 3, 0, 1).reshape(cin * mult, 1, *k).contiguous()
    if bias:
        conv.bias.data = layer.weight("bias", 1, (cin * mult,))  # type: ignore[union-attr]
    st.add(name, conv)


def _depthwise_conv2d(layer: _Layer, st: _State) -> None:
    _check_channels_last(layer)
    _depthwise(layer, st, layer.name, bool(layer.get("use_bias", True)), "depthwise_kernel")
    _add_activation(layer, st, layer.get("activation"))


def _separable_conv2d(layer: _Layer, st: _State) -> None:
    _check_channels_last(layer)
    _depthwise(layer, st, f"{layer.name}_depthwise", False, "depthwise_kernel")
    cmid = st.shape[0]
    cout = int(layer.get("filters"))
    use_bias = bool(layer.get("use_bias", True))
    point = nn.Conv2d(cmid, cout, 1, bias=use_bias)
    kernel = layer.weight("pointwise_kernel", 1, (1, 1, cmid, cout))
    point.weight.data = kernel.permute(3, 2, 0, 1).contiguous()
    if point.bias is not None:
        point.bias.data = layer.weight("bias", 2, (cout,))
    st.add(layer.name, point)
    _add_activation(layer, st, layer.get("activation"))


def _dense(layer: _Layer, st: _State) -> None:
    if len(st.shape) != 1:
        raise layer.fail(
            f"Dense on a tensor of shape {st.shape} is not supported; flatten or pool first"
        )
    n_in, units = st.shape[0], int(layer.get("units"))
    use_bias = bool(layer.get("use_bias", True))
    lin = nn.Linear(n_in, units, bias=use_bias)
    kernel = layer.weight("kernel", 0, (n_in, units))
    if st.flatten_hwc is not None:
        h, w, c = st.flatten_hwc
        # Rows are in Keras's (h, w, c) flatten order; reorder them to torch's (c, h, w).
        kernel = kernel.reshape(h, w, c, units).permute(2, 0, 1, 3).reshape(n_in, units)
        st.flatten_hwc = None
    lin.weight.data = kernel.t().contiguous()
    if lin.bias is not None:
        lin.bias.data = layer.weight("bias", 1, (units,))
    st.add(layer.name, lin)
    _add_activation(layer, st, layer.get("activation"))


def _pool(layer: _Layer, st: _State, kind: str) -> None:
    _check_channels_last(layer)
    _, h, w = _need_spatial(layer, st)
    k = _pair(layer.get("pool_size", 2), "pool_size")
    s = _pair(layer.get("strides") or k, "strides")
    mode = str(layer.get("padding", "valid")).lower()
    pad, ceil = (0, 0), False
    if mode == "same":
        (top, bottom), (left, right) = same_padding(h, k[0], s[0]), same_padding(w, k[1], s[1])
        pad = (top, left)
        if (bottom, right) != (top, left):
            pad, ceil = _asymmetric_pool_padding(layer, st, kind, s, (top, bottom, left, right))
    elif mode != "valid":
        raise layer.fail(f"padding {mode!r} is not supported; accepted: valid, same")
    module: nn.Module
    if kind == "max":
        module = nn.MaxPool2d(k, s, pad, ceil_mode=ceil)
    else:
        module = nn.AvgPool2d(k, s, pad, ceil_mode=ceil, count_include_pad=False)
    st.add(layer.name, module)


def _asymmetric_pool_padding(
    layer: _Layer, st: _State, kind: str, s: tuple[int, int], tblr: tuple[int, int, int, int]
) -> tuple[tuple[int, int], bool]:
    """TensorFlow's odd ``same`` padding for a pool, as torch padding plus ``ceil_mode``.

    With stride > 1, ``ceil_mode`` adds exactly the extra partial window at the end, which
    averages real pixels only, as TensorFlow does. With stride 1 a max pool gets an explicit
    ``-inf`` pad (``<layer>_pad``); an average pool cannot be expressed.
    """
    top, bottom, left, right = tblr
    if s[0] > 1 and s[1] > 1 and bottom - top in (0, 1) and right - left in (0, 1):
        return (top, left), True
    if kind == "max":
        st.add(f"{layer.name}_pad", nn.ConstantPad2d((left, right, top, bottom), float("-inf")))
        return (0, 0), False
    raise layer.fail(
        "average pooling with same padding, stride 1 and an even pool size cannot be expressed "
        "in torch"
    )


def _global_pool(layer: _Layer, st: _State, kind: str) -> None:
    _check_channels_last(layer)
    _need_spatial(layer, st)
    pool = nn.AdaptiveMaxPool2d(1) if kind == "max" else nn.AdaptiveAvgPool2d(1)
    st.add(layer.name, pool)
    if not layer.get("keepdims", False):
        st.add(f"{layer.name}_flatten", nn.Flatten())


def _flatten(layer: _Layer, st: _State) -> None:
    _check_channels_last(layer)
    if len(st.shape) == 3:
        c, h, w = st.shape
        if h * w > 1 and c > 1:
            st.flatten_hwc = (h, w, c)
    st.add(layer.name, nn.Flatten())


def _activation(layer: _Layer, st: _State) -> None:
    _add_activation(layer, st, layer.get("activation"), name=layer.name)


def _relu(layer: _Layer, st: _State) -> None:
    max_value = layer.get("max_value")
    slope = float(layer.get("negative_slope", 0.0) or 0.0)
    if float(layer.get("threshold", 0.0) or 0.0) != 0.0:
        raise layer.fail("ReLU with a threshold is not supported")
    module: nn.Module
    if slope and max_value is not None:
        raise layer.fail("ReLU with both max_value and negative_slope is not supported")
    if slope:
        module = nn.LeakyReLU(slope)
    elif max_value is None:
        module = nn.ReLU()
    elif float(max_value) == 6.0:
        module = nn.ReLU6()
    else:
        module = nn.Hardtanh(0.0, float(max_value))
    st.add(layer.name, module)


def _leaky_relu(layer: _Layer, st: _State) -> None:
    slope = layer.get("negative_slope", layer.get("alpha", 0.3))  # Keras 3 / Keras 2 names
    st.add(layer.name, nn.LeakyReLU(float(slope)))


def _softmax(layer: _Layer, st: _State) -> None:
    axis = layer.get("axis", -1)
    if axis not in (-1, len(st.shape)):
        raise layer.fail(f"softmax over axis {axis} is not supported; only the last axis")
    st.add(layer.name, nn.Softmax(dim=1))


def _dropout(layer: _Layer, st: _State) -> None:
    rate = float(layer.get("rate", 0.5))
    spatial = layer.type.startswith("SpatialDropout")
    st.add(layer.name, nn.Dropout2d(rate) if spatial else nn.Dropout(rate))


def _batch_norm(layer: _Layer, st: _State) -> None:
    axis = layer.get("axis", -1)
    axis = axis[0] if isinstance(axis, list) and len(axis) == 1 else axis
    if axis not in (-1, 3 if len(st.shape) == 3 else 1):
        raise layer.fail(f"batch normalization over axis {axis} is not supported; only channels")
    n = st.shape[0]
    bn: nn.BatchNorm1d | nn.BatchNorm2d
    eps = float(layer.get("epsilon", 1e-3))
    bn = nn.BatchNorm2d(n, eps=eps) if len(st.shape) == 3 else nn.BatchNorm1d(n, eps=eps)
    pos = 0
    for short, param, on in (
        ("gamma", bn.weight, layer.get("scale", True)),
        ("beta", bn.bias, layer.get("center", True)),
    ):
        if on:
            param.data = _unflatten_vector(st, layer.weight(short, pos, (n,)))
            pos += 1
    assert bn.running_mean is not None and bn.running_var is not None
    bn.running_mean.data = _unflatten_vector(st, layer.weight("moving_mean", pos, (n,)))
    bn.running_var.data = _unflatten_vector(st, layer.weight("moving_variance", pos + 1, (n,)))
    st.add(layer.name, bn)


def _unflatten_vector(st: _State, v: torch.Tensor) -> torch.Tensor:
    """Per-feature parameters after a Flatten are in (h, w, c) order: reorder to (c, h, w)."""
    if st.flatten_hwc is None or v.dim() != 1:
        return v
    h, w, c = st.flatten_hwc
    return v.reshape(h, w, c).permute(2, 0, 1).reshape(-1).contiguous()


def _affine(layer: _Layer, st: _State, scale: np.ndarray, offset: np.ndarray) -> None:
    """Fold into the input spec while only preprocessing has been seen, else an Affine."""
    if st.leading:
        base_s = st.pre_scale if st.pre_scale is not None else np.float64(255.0)
        base_o = st.pre_offset if st.pre_offset is not None else np.float64(0.0)
        st.pre_scale, st.pre_offset = base_s * scale, base_o * scale + offset
        return
    shape = (-1, 1, 1) if len(st.shape) == 3 else (-1,)
    st.add(
        layer.name,
        Affine(
            torch.tensor(np.asarray(scale, dtype=np.float32)).reshape(shape),
            torch.tensor(np.asarray(offset, dtype=np.float32)).reshape(shape),
        ),
    )


def _rescaling(layer: _Layer, st: _State) -> None:
    scale = np.asarray(layer.get("scale", 1.0), dtype=np.float64)
    offset = np.asarray(layer.get("offset", 0.0), dtype=np.float64)
    _affine(layer, st, scale, offset)


def _normalization(layer: _Layer, st: _State) -> None:
    mean, var = layer.get("mean"), layer.get("variance")
    if mean is None or var is None:
        n = st.shape[0]
        mean = layer.weight("mean", 0, (n,)).numpy()
        var = layer.weight("variance", 1, (n,)).numpy()
    layer.used = len(layer.weights)  # the sample count beside mean and variance is unused
    mean = np.asarray(mean, dtype=np.float64).reshape(-1)
    std = np.maximum(np.sqrt(np.asarray(var, dtype=np.float64).reshape(-1)), 1e-7)
    if bool(layer.get("invert", False)):
        _affine(layer, st, std, mean)
    else:
        _affine(layer, st, 1.0 / std, -mean / std)


def _zero_padding(layer: _Layer, st: _State) -> None:
    """``padding``: an int, ``(rows, cols)`` or ``((top, bottom), (left, right))``."""
    _check_channels_last(layer)
    pad = layer.get("padding", 1)
    if isinstance(pad, int):
        pad = [[pad, pad], [pad, pad]]
    rows, cols = ([p, p] if isinstance(p, int) else list(p) for p in pad)
    st.add(layer.name, nn.ZeroPad2d((int(cols[0]), int(cols[1]), int(rows[0]), int(rows[1]))))


def _skip(layer: _Layer, st: _State) -> None:
    """Layers with no effect at inference (InputLayer, noise)."""


CONVERTERS: dict[str, Callable[[_Layer, _State], None]] = {
    "InputLayer": _skip,
    "Conv2D": _conv2d,
    "Convolution2D": _conv2d,
    "SeparableConv2D": _separable_conv2d,
    "DepthwiseConv2D": _depthwise_conv2d,
    "Dense": _dense,
    "MaxPooling2D": lambda la, st: _pool(la, st, "max"),
    "MaxPool2D": lambda la, st: _pool(la, st, "max"),
    "AveragePooling2D": lambda la, st: _pool(la, st, "avg"),
    "AvgPool2D": lambda la, st: _pool(la, st, "avg"),
    "GlobalAveragePooling2D": lambda la, st: _global_pool(la, st, "avg"),
    "GlobalAvgPool2D": lambda la, st: _global_pool(la, st, "avg"),
    "GlobalMaxPooling2D": lambda la, st: _global_pool(la, st, "max"),
    "GlobalMaxPool2D": lambda la, st: _global_pool(la, st, "max"),
    "Flatten": _flatten,
    "ZeroPadding2D": _zero_padding,
    "Activation": _activation,
    "ReLU": _relu,
    "LeakyReLU": _leaky_relu,
    "Softmax": _softmax,
    "Dropout": _dropout,
    "SpatialDropout2D": _dropout,
    "GaussianNoise": _skip,
    "GaussianDropout": _skip,
    "BatchNormalization": _batch_norm,
    "Rescaling": _rescaling,
    "Normalization": _normalization,
}


# ------------------------------------------------------------------ the model config


def _unwrap_model_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """Accept ``{"model_config": ...}`` (TF.js), ``{"class_name": ..., "config": ...}``."""
    if "model_config" in cfg:
        cfg = cfg["model_config"]
    if "class_name" not in cfg or "config" not in cfg:
        raise ConvlensError("the Keras model config has no class_name/config")
    return cfg


def _layer_list(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    kind = cfg["class_name"]
    inner = cfg["config"]
    layers = inner["layers"] if isinstance(inner, dict) else inner  # Keras 2.0 wrote a list
    if not isinstance(layers, list):
        raise ConvlensError("the Keras model config has no list of layers")
    if kind == "Sequential":
        return layers
    if kind in ("Functional", "Model"):
        _check_chain(layers)
        return layers
    raise ConvlensError(
        f"Keras model class {kind!r} is not supported; accepted: Sequential and chain-like "
        "Functional models"
    )


def inbound_names(node_data: Any) -> list[str]:
    """Names of the layers feeding a functional layer, in either Keras 2 or Keras 3 syntax."""
    names: list[str] = []
    if isinstance(node_data, dict):
        history = (
            node_data.get("config", {}).get("keras_history") if "config" in node_data else None
        )
        if isinstance(history, list) and history and isinstance(history[0], str):
            return [history[0]]
        for v in node_data.values():
            names += inbound_names(v)
    elif isinstance(node_data, list):
        if len(node_data) >= 3 and isinstance(node_data[0], str) and isinstance(node_data[1], int):
            return [node_data[0]]
        for v in node_data:
            names += inbound_names(v)
    return names


def _check_chain(layers: list[dict[str, Any]]) -> None:
    """A functional model is converted only if each layer feeds from the one before it."""
    prev: str | None = None
    for i, lay in enumerate(layers):
        name = (lay.get("config") or {}).get("name") or lay.get("name")
        inbound = inbound_names(lay.get("inbound_nodes", []))
        if prev is not None and inbound != [prev]:
            raise ConvlensError(
                f"layer {i} ({name!r}, {lay.get('class_name')}) takes inputs {inbound}, not just "
                f"the layer before it ({prev!r}): only chain-like functional Keras models can be "
                "converted; export a branching model to ONNX instead"
            )
        prev = name


def _input_shape(cfg: dict[str, Any], layers: list[dict[str, Any]]) -> list[Any] | None:
    for lay in layers[:1]:
        c = lay.get("config") or {}
        for key in ("batch_input_shape", "batch_shape"):
            if c.get(key):
                return list(c[key])[1:]
    build = cfg.get("build_config") or {}
    shape = build.get("input_shape")
    if shape:
        return list(shape)[1:]
    return None


def convert(
    model_config: dict[str, Any],
    weights: Weights,
    input_size: tuple[int, int] | None = None,
) -> Converted:
    """Build the torch network for a Keras ``model_config`` with ``weights`` (per layer).

    ``input_size`` (height, width) is needed only when the config leaves the input size open.
    Raises :class:`ConvlensError` naming the layer's type and position when a layer cannot be
    converted, and the layer and both shapes when a weight does not fit.
    """
    cfg = _unwrap_model_config(model_config)
    layers = _layer_list(cfg)
    shape = _input_shape(cfg, layers)
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
    st = _State(shape=(int(c), int(h), int(w)))
    for i, lay in enumerate(layers):
        layer = _Layer(lay, i, weights)
        fn = CONVERTERS.get(layer.type)
        if fn is None:
            raise layer.fail(
                f"Keras layer type {layer.type!r} is not supported; accepted: "
                + ", ".join(sorted(set(CONVERTERS)))
            )
        fn(layer, st)
        if layer.used < len(layer.weights):
            unused = [n for n, _ in layer.weights][layer.used :]
            raise layer.fail(f"the weights file has weights this layer does not use: {unused}")
    dropped = _drop_final_softmax(st)
    mean, std = _spec_normalization(st, int(c))
    return Converted(
        nn.Sequential(st.modules),
        channels=int(c),
        height=int(h),
        width=int(w),
        mean=mean,
        std=std,
        dropped_softmax=dropped,
        name=str((cfg.get("config") or {}).get("name", "keras-model")),
    )


def _drop_final_softmax(st: _State) -> bool:
    if st.modules and isinstance(next(reversed(st.modules.values())), nn.Softmax):
        st.modules.popitem()
        return True
    return False


def _spec_normalization(st: _State, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Input mean/std from folded preprocessing: ``net_in = x·a + b = (x − mean) / std``."""
    if st.pre_scale is None or st.pre_offset is None:
        return (0.0,), (1.0,)
    a = np.broadcast_to(np.asarray(st.pre_scale, dtype=np.float64), (channels,))
    b = np.broadcast_to(np.asarray(st.pre_offset, dtype=np.float64), (channels,))
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
