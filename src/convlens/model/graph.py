"""The layer graph: every layer of a network with its shapes, hyperparameters, parameter
count, multiply-accumulates and receptive field.

Built by ``torch.fx`` symbolic tracing where the network allows it (which also finds
functional calls such as ``F.relu`` and the additions of residual blocks), and from forward
hooks on leaf modules otherwise (data-dependent control flow defeats tracing). Either way one
example is run through the network to read the shapes.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from convlens.errors import ConvlensError, unknown_name
from convlens.model.receptive import Pair, ReceptiveField, tiling_problem

Shape = tuple[int, ...]

# Kinds, as the front end and the methods see them.
KINDS = (
    "input", "conv", "activation", "maxpool", "avgpool", "adaptive_pool", "batchnorm", "norm",
    "flatten", "linear", "softmax", "dropout", "add", "concat", "other",
)  # fmt: skip
SPATIAL_WINDOW_KINDS = frozenset({"conv", "maxpool", "avgpool"})

_ACTIVATIONS: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU,
    nn.Mish, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Softplus,
)  # fmt: skip
_MODULE_KINDS: tuple[tuple[tuple[type[nn.Module], ...], str], ...] = (
    ((nn.Conv1d, nn.Conv2d, nn.Conv3d), "conv"),
    (_ACTIVATIONS, "activation"),
    ((nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d), "maxpool"),
    ((nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d), "avgpool"),
    ((nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.AdaptiveAvgPool1d), "adaptive_pool"),
    ((nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d), "batchnorm"),
    ((nn.LocalResponseNorm, nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm2d), "norm"),
    ((nn.Flatten,), "flatten"),
    ((nn.Linear,), "linear"),
    ((nn.Softmax, nn.LogSoftmax), "softmax"),
    ((nn.Dropout, nn.Dropout2d, nn.AlphaDropout), "dropout"),
)
_FUNCTION_KINDS: dict[Any, str] = {
    F.relu: "activation", torch.relu: "activation", F.relu6: "activation",
    F.leaky_relu: "activation", F.gelu: "activation", F.silu: "activation",
    F.elu: "activation", torch.sigmoid: "activation", torch.tanh: "activation",
    F.hardswish: "activation", torch.sigmoid_: "activation",
    F.max_pool2d: "maxpool", F.avg_pool2d: "avgpool",
    F.adaptive_avg_pool2d: "adaptive_pool", F.adaptive_max_pool2d: "adaptive_pool",
    torch.flatten: "flatten", F.softmax: "softmax", torch.softmax: "softmax",
    F.log_softmax: "softmax", F.dropout: "dropout",
    operator.add: "add", torch.add: "add", operator.iadd: "add",
    torch.cat: "concat", torch.concat: "concat",
    F.conv2d: "conv", F.linear: "linear", F.batch_norm: "batchnorm",
}  # fmt: skip
_METHOD_KINDS: dict[str, str] = {
    "relu": "activation", "relu_": "activation", "sigmoid": "activation",
    "flatten": "flatten", "view": "flatten", "reshape": "flatten",
    "add": "add", "add_": "add", "softmax": "softmax",
}  # fmt: skip


def module_kind(module: nn.Module) -> str:
    for types, kind in _MODULE_KINDS:
        if isinstance(module, types):
            return kind
    return "other"


@dataclass
class Layer:
    """One node of the layer graph.

    ``name`` is unique: the module's qualified name, with ``#2``, ``#3`` for a module called
    more than once, or the fx node name for a functional call. ``module`` names the
    ``nn.Module`` that computes it (``None`` for functional calls and the input).
    """

    index: int
    name: str
    kind: str
    op: str
    inputs: list[str]
    input_shapes: list[Shape]
    output_shape: Shape
    module: str | None = None
    call: int = 1
    params: int = 0
    trainable_params: int = 0
    macs: int = 0
    hyper: dict[str, Any] = field(default_factory=dict)
    rf: ReceptiveField | None = None
    tiling: str | None = None
    node: str | None = None  # the fx node computing it, when the graph came from tracing

    @property
    def is_spatial(self) -> bool:
        """The output has a spatial grid ``(C, H, W)`` that maps to boxes of the input."""
        return len(self.output_shape) == 3 and self.rf is not None and not self.rf.is_global

    @property
    def channels(self) -> int:
        return self.output_shape[0] if self.output_shape else 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "name": self.name,
            "kind": self.kind,
            "op": self.op,
            "inputs": self.inputs,
            "input_shapes": [list(s) for s in self.input_shapes],
            "output_shape": list(self.output_shape),
            "module": self.module,
            "params": self.params,
            "trainable_params": self.trainable_params,
            "macs": self.macs,
            "hyper": self.hyper,
            "receptive_field": self.rf.to_dict() if self.rf else None,
            "tiling": self.tiling,
        }


class LayerGraph:
    """The layers of a network in execution order, with lookup by name."""

    def __init__(self, layers: list[Layer], traced: torch.fx.GraphModule | None) -> None:
        self.layers = layers
        self.traced = traced  # the fx module when tracing worked; used to record every layer
        self._by_name = {layer.name: layer for layer in layers}

    def __iter__(self) -> Iterator[Layer]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __getitem__(self, name: str) -> Layer:
        try:
            return self._by_name[name]
        except KeyError:
            raise unknown_name("layer", name, self._by_name) from None

    def names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    @property
    def input(self) -> Layer:
        return self.layers[0]

    @property
    def output(self) -> Layer:
        return self.layers[-1]

    def spatial(self) -> list[Layer]:
        return [layer for layer in self.layers if layer.is_spatial and layer.kind != "input"]

    def last_spatial(self, kinds: frozenset[str] | None = None) -> Layer:
        """The deepest layer with a spatial output (of ``kinds`` if given): CAM's default.

        A map that is already 1×1 (InceptionV3 at its smallest input, 75×75) has nowhere left
        to point, so the deepest map larger than that is preferred when there is one.
        """
        found = [lay for lay in self.spatial() if kinds is None or lay.kind in kinds]
        if not found:
            raise ConvlensError("the model has no layer with a spatial (C, H, W) output")
        wide = [lay for lay in found if lay.output_shape[1] * lay.output_shape[2] > 1]
        return (wide or found)[-1]

    def consumers(self, name: str) -> list[Layer]:
        return [layer for layer in self.layers if name in layer.inputs]

    @property
    def is_chain(self) -> bool:
        """Every layer reads one layer and is read by at most one."""
        return all(len(lay.inputs) <= 1 for lay in self.layers) and all(
            len(self.consumers(lay.name)) <= 1 for lay in self.layers
        )

    @property
    def total_params(self) -> int:
        return sum(layer.params for layer in self.layers)

    @property
    def trainable_params(self) -> int:
        return sum(layer.trainable_params for layer in self.layers)

    @property
    def total_macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    def to_dict(self) -> dict[str, Any]:
        return {
            "layers": [layer.to_dict() for layer in self.layers],
            "total_params": self.total_params,
            "trainable_params": self.trainable_params,
            "total_macs": self.total_macs,
            "is_chain": self.is_chain,
        }


# --------------------------------------------------------------------------- hyperparameters


def _pair(v: Any) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    if isinstance(v, str):  # "same"/"valid" padding strings are resolved by the caller
        raise TypeError(v)
    t = tuple(int(x) for x in v)
    return (t[0], t[0]) if len(t) == 1 else (t[0], t[1])


def _window_hyper(module: nn.Module, in_shape: Shape) -> dict[str, Any]:
    """Kernel, stride, padding and dilation of a conv or pool module, as (h, w) pairs."""
    kernel = _pair(getattr(module, "kernel_size", 1))
    stride = _pair(getattr(module, "stride", None) or kernel)
    dilation = _pair(getattr(module, "dilation", 1))
    pad = getattr(module, "padding", 0)
    if isinstance(pad, str):  # "valid" or "same" (stride 1 only in torch)
        pad = (
            (0, 0)
            if pad == "valid"
            else tuple(d * (k - 1) // 2 for k, d in zip(kernel, dilation, strict=True))
        )
    hyper: dict[str, Any] = {
        "kernel": list(kernel), "stride": list(stride),
        "padding": list(_pair(pad)), "dilation": list(dilation),
    }  # fmt: skip
    if isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d):
        hyper |= {
            "in_channels": module.in_channels, "out_channels": module.out_channels,
            "groups": module.groups, "bias": module.bias is not None,
        }  # fmt: skip
    if getattr(module, "ceil_mode", False):
        hyper["ceil_mode"] = True
    return hyper


def _window(hyper: dict[str, Any]) -> tuple[Pair, Pair, Pair, Pair]:
    """Kernel, stride, padding, dilation of a window layer's ``hyper`` as (h, w) pairs."""
    k, s, p, d = (hyper[key] for key in ("kernel", "stride", "padding", "dilation"))
    return (k[0], k[1]), (s[0], s[1]), (p[0], p[1]), (d[0], d[1])


def _count_params(module: nn.Module | None) -> tuple[int, int]:
    if module is None:
        return 0, 0
    ps = list(module.parameters())
    return sum(p.numel() for p in ps), sum(p.numel() for p in ps if p.requires_grad)


def _macs(kind: str, module: nn.Module | None, in_shape: Shape, out_shape: Shape) -> int:
    """Multiply-accumulates for one example."""
    if kind == "conv" and isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d):
        per_out = (module.in_channels // module.groups) * int(
            torch.tensor(module.kernel_size).prod()
        )
        return per_out * int(torch.tensor(out_shape).prod())
    if kind == "linear" and isinstance(module, nn.Linear):
        lead = int(torch.tensor(out_shape[:-1]).prod()) if len(out_shape) > 1 else 1
        return lead * module.in_features * module.out_features
    return 0


def _grid_input(in_shapes: list[Shape], out_shape: Shape) -> Shape:
    """The input whose grid the output keeps (``x`` in ``x · gate``), else the first one."""
    for shape in in_shapes:
        if len(shape) == 3 and len(out_shape) == 3 and shape[1:] == out_shape[1:]:
            return shape
    return in_shapes[0] if in_shapes else out_shape


def _local_inputs(
    inputs: list[ReceptiveField | None], in_shapes: list[Shape], out_shape: Shape
) -> list[ReceptiveField | None]:
    """The inputs that decide where an output unit looks.

    A squeeze-and-excitation gate (Hu et al., 2018) multiplies a map by a per-channel vector
    computed from the whole image: shape ``(C, 1, 1)`` broadcast over the grid. It rescales
    each unit but does not move it, so the unit's field is its spatial branch's; counting the
    gate would make every layer after the first SE block global and leave CAM methods and
    top-patch views without a spatial layer on MobileNetV3 or EfficientNet.
    """
    if len(out_shape) != 3 or len(inputs) < 2 or len(in_shapes) != len(inputs):
        return inputs
    grid = out_shape[1:]
    spatial = [r for r, s in zip(inputs, in_shapes, strict=True) if len(s) == 3 and s[1:] == grid]
    broadcast = all(
        (len(s) == 3 and s[1:] == grid) or (len(s) == 3 and s[1:] == (1, 1)) or len(s) <= 1
        for s in in_shapes
    )
    return spatial if spatial and broadcast else inputs


def _rf_for(
    kind: str,
    hyper: dict[str, Any],
    inputs: list[ReceptiveField | None],
    in_shapes: list[Shape],
    out_shape: Shape,
    input_hw: tuple[int, int],
) -> ReceptiveField | None:
    in_shape = _grid_input(in_shapes, out_shape)
    known = [r for r in _local_inputs(inputs, in_shapes, out_shape) if r is not None]
    if not known:
        return None
    rf = known[0]
    for other in known[1:]:
        rf = rf.union(other)
    if len(out_shape) != 3:
        return ReceptiveField.whole(*input_hw)
    if kind in SPATIAL_WINDOW_KINDS and "kernel" in hyper:
        return rf.through(*_window(hyper))
    if "pad" in hyper and len(in_shape) == 3:  # padding/cropping shifts the grid by top/left
        left, _, top, _ = hyper["pad"]
        return rf.through((1, 1), (1, 1), (top, left), (1, 1))
    if len(in_shape) == 3 and tuple(in_shape[1:]) == tuple(out_shape[1:]):
        return rf  # element-wise, batch norm, activation, add, concat: the grid is unchanged
    if kind == "adaptive_pool":
        if out_shape[1:] == (1, 1):
            return ReceptiveField.whole(*input_hw)
        h_in, w_in = in_shape[1:]
        h_out, w_out = out_shape[1:]
        if h_in % h_out == 0 and w_in % w_out == 0:  # then it is an ordinary pool
            k = (h_in // h_out, w_in // w_out)
            return rf.through(k, k, (0, 0), (1, 1))
    return ReceptiveField.whole(*input_hw)  # a grid change we cannot model exactly: be safe


# --------------------------------------------------------------------------- building


def _tensor_shape(value: Any) -> Shape | None:
    return tuple(value.shape[1:]) if isinstance(value, torch.Tensor) else None


def _op_name(node: torch.fx.Node, module: nn.Module | None) -> str:
    if module is not None:
        return type(module).__name__
    target = node.target
    return target if isinstance(target, str) else getattr(target, "__name__", str(target))


class _Recorder(torch.fx.Interpreter):
    """Runs a traced module and keeps every node's output."""

    def __init__(self, gm: torch.fx.GraphModule) -> None:
        super().__init__(gm)
        self.values: dict[str, Any] = {}

    def run_node(self, n: torch.fx.Node) -> Any:
        out = super().run_node(n)
        self.values[n.name] = out
        return out


def _node_kind(node: torch.fx.Node, module: nn.Module | None, out_shape: Shape) -> str | None:
    """The kind of a traced node, or ``None`` for structural nodes that are not layers."""
    if node.op == "placeholder":
        return "input"
    if node.op == "call_module":
        return module_kind(module) if module is not None else "other"
    if node.op == "call_function":
        kind = _FUNCTION_KINDS.get(node.target)
        if kind is None and node.target in (operator.getitem, getattr):
            return None
        return kind or "other"
    if node.op == "call_method":
        kind = _METHOD_KINDS.get(str(node.target))
        if kind == "flatten" and len(out_shape) != 1:
            return "other"
        if node.target in ("size", "dim", "contiguous"):
            return None if node.target != "contiguous" else "other"
        if node.target == "mean" and len(out_shape) <= 1:
            return "adaptive_pool"  # x.mean((2, 3)): global average pooling
        return kind or "other"
    return None


def _trace(net: nn.Module) -> torch.fx.GraphModule | None:
    try:
        return torch.fx.symbolic_trace(net)
    except Exception:  # tracing fails on data-dependent control flow; hooks take over
        return None


def _build_from_fx(gm: torch.fx.GraphModule, net: nn.Module, example: torch.Tensor) -> list[Layer]:
    rec = _Recorder(gm)
    rec.run(example)
    layers: list[Layer] = []
    alias: dict[str, str] = {}  # fx node name -> layer name
    rfs: dict[str, ReceptiveField | None] = {}
    calls: dict[str, int] = {}
    input_hw = (example.shape[-2], example.shape[-1]) if example.dim() == 4 else (1, 1)
    for node in gm.graph.nodes:
        out = rec.values.get(node.name)
        out_shape = _tensor_shape(out)
        if out_shape is None or node.op == "output":
            continue
        module = net.get_submodule(str(node.target)) if node.op == "call_module" else None
        kind = _node_kind(node, module, out_shape)
        parents = [p for p in node.all_input_nodes if p.name in alias]
        if kind is None:  # structural: forward the name of its tensor parent
            if parents:
                alias[node.name] = alias[parents[0].name]
            continue
        name = node.name
        if module is not None:
            qual = str(node.target)
            calls[qual] = calls.get(qual, 0) + 1
            name = qual if calls[qual] == 1 else f"{qual}#{calls[qual]}"
        if node.op == "placeholder":
            name = "input"
        inputs = [alias[p.name] for p in parents]
        in_shapes = [_tensor_shape(rec.values[p.name]) or () for p in parents]
        layers.append(
            _make_layer(
                len(layers),
                name,
                kind,
                _op_name(node, module),
                inputs,
                in_shapes,
                out_shape,
                module,
                str(node.target) if module is not None else None,
                calls.get(str(node.target), 1),
                [rfs.get(i) for i in inputs],
                input_hw,
            )
        )
        layers[-1].node = node.name
        alias[node.name] = name
        rfs[name] = layers[-1].rf
    return layers


def _make_layer(
    index: int,
    name: str,
    kind: str,
    op: str,
    inputs: list[str],
    in_shapes: list[Shape],
    out_shape: Shape,
    module: nn.Module | None,
    module_name: str | None,
    call: int,
    input_rfs: list[ReceptiveField | None],
    input_hw: tuple[int, int],
) -> Layer:
    in_shape = in_shapes[0] if in_shapes else out_shape
    hyper: dict[str, Any] = {}
    tiling = None
    if module is not None and kind in SPATIAL_WINDOW_KINDS and len(in_shape) == 3:
        hyper = _window_hyper(module, in_shape)
        tiling = tiling_problem((in_shape[1], in_shape[2]), *_window(hyper))
    elif isinstance(module, nn.Linear):
        hyper = {"in_features": module.in_features, "out_features": module.out_features}
    elif isinstance(module, nn.BatchNorm2d):
        hyper = {"num_features": module.num_features, "eps": module.eps}
    elif isinstance(module, nn.LeakyReLU):
        hyper = {"negative_slope": module.negative_slope}
    elif isinstance(module, nn.AdaptiveAvgPool2d | nn.AdaptiveMaxPool2d):
        hyper = {"output_size": list(out_shape[1:])}
    elif isinstance(module, nn.ZeroPad2d | nn.ConstantPad2d) and len(module.padding) == 4:
        hyper = {"pad": list(module.padding)}  # (left, right, top, bottom); negative crops
    params, trainable = _count_params(module) if call == 1 else (0, 0)
    rf = (
        ReceptiveField.identity()
        if kind == "input" and len(out_shape) == 3
        else (_rf_for(kind, hyper, input_rfs, in_shapes or [out_shape], out_shape, input_hw))
    )
    return Layer(
        index=index,
        name=name,
        kind=kind,
        op=op,
        inputs=inputs,
        input_shapes=in_shapes,
        output_shape=out_shape,
        module=module_name,
        call=call,
        params=params,
        trainable_params=trainable,
        macs=_macs(kind, module, in_shape, out_shape),
        hyper=hyper,
        rf=rf,
        tiling=tiling,
    )


def _is_leaf(module: nn.Module) -> bool:
    return next(iter(module.children()), None) is None


def _build_from_hooks(net: nn.Module, example: torch.Tensor) -> list[Layer]:
    """Leaf-module calls in execution order; a call's inputs are found by tensor identity
    (falling back to the previous call when a functional op sits in between)."""
    records: list[tuple[str, nn.Module, list[torch.Tensor], torch.Tensor]] = []

    def hook_for(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            if isinstance(output, torch.Tensor):
                tensors = [a for a in args if isinstance(a, torch.Tensor)]
                records.append((name, module, tensors, output))

        return hook

    handles = [
        m.register_forward_hook(hook_for(n)) for n, m in net.named_modules() if n and _is_leaf(m)
    ]
    try:
        net(example)
    finally:
        for h in handles:
            h.remove()
    input_hw = (example.shape[-2], example.shape[-1]) if example.dim() == 4 else (1, 1)
    layers = [
        _make_layer(
            0,
            "input",
            "input",
            "input",
            [],
            [],
            tuple(example.shape[1:]),
            None,
            None,
            1,
            [],
            input_hw,
        )
    ]
    produced: dict[int, str] = {id(example): "input"}
    rfs: dict[str, ReceptiveField | None] = {"input": layers[0].rf}
    calls: dict[str, int] = {}
    for qual, module, args, output in records:
        calls[qual] = calls.get(qual, 0) + 1
        name = qual if calls[qual] == 1 else f"{qual}#{calls[qual]}"
        inputs = [produced[id(a)] for a in args if id(a) in produced] or [layers[-1].name]
        in_shapes = [tuple(a.shape[1:]) for a in args] or [layers[-1].output_shape]
        layers.append(
            _make_layer(
                len(layers),
                name,
                module_kind(module),
                type(module).__name__,
                inputs,
                in_shapes,
                tuple(output.shape[1:]),
                module,
                qual,
                calls[qual],
                [rfs.get(i) for i in inputs],
                input_hw,
            )
        )
        produced[id(output)] = name
        rfs[name] = layers[-1].rf
    return layers


def build_graph(net: nn.Module, input_shape: Shape) -> LayerGraph:
    """Trace ``net`` on one example of ``input_shape`` ``(C, H, W)`` and describe its layers."""
    example = torch.rand(1, *input_shape)
    modes = {m: m.training for m in net.modules()}
    net.eval()
    try:
        with torch.no_grad():
            gm = _trace(net)
            layers = None
            if gm is not None:
                try:
                    layers = _build_from_fx(gm, net, example)
                except Exception:  # a traced graph that does not run: use hooks instead
                    gm, layers = None, None
            if layers is None:
                layers = _build_from_hooks(net, example)
    except ConvlensError:
        raise
    except Exception as e:
        raise ConvlensError(
            f"the network does not run on an input of shape (1, {', '.join(map(str, input_shape))})"
            f": {type(e).__name__}: {e}"
        ) from None
    finally:
        for m, mode in modes.items():
            m.training = mode
    return LayerGraph(layers, gm)
