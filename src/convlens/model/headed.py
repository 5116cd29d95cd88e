"""A network cut at its last spatial or pooled layer, with a new classifier head.

Transfer learning keeps a trained network's *body* (its convolutional features) and fits a
new *head* to new classes. The body is the network up to the cut layer, found from the layer
graph: the deepest layer with a ``(C, H, W)`` output that everything after it reads (so no
skip connection crosses the cut). The head pools that map (``avg``: global average, as
Keras's ``GlobalAveragePooling2D``; ``max``; or ``flatten``), then applies the layers of its
spec, then one linear layer to the classes: ``"dense:256,dropout:0.5"`` is
pool → linear(256) → ReLU → dropout(0.5) → linear(classes).

A checkpoint of such a model records ``arch = {"name": "transfer", "args": {...}}``: where the
body comes from (a zoo architecture, or a model file copied into the checkpoint folder), the
cut layer and the head spec; ``weights.safetensors`` holds body and head weights, so
:func:`load_transfer` rebuilds exactly the trained model.

>>> parse_head("max,dense:64,dropout:0.25")
HeadSpec(pool='max', layers=(('dense', 64), ('dropout', 0.25)))
>>> from convlens.model.zoo import build
>>> cut_layer(build("resnet18")).name
'avgpool'
"""

from __future__ import annotations

import copy
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.fx
from torch import nn

from convlens.errors import ConvlensError
from convlens.model.core import Model
from convlens.model.graph import Layer

TRANSFER_ARCH = "transfer"
POOLS = ("avg", "max", "flatten")
MAX_WIDTH = 65_536
MAX_HEAD_LAYERS = 16
# Formats whose file a transfer checkpoint may hold as its body (copied into ``body/``).
FILE_FORMATS = ("onnx", "keras", "keras-h5", "tfjs", "tfjs-graph", "torch-export", "torchscript")


# ------------------------------------------------------------------ the head spec


@dataclass(frozen=True)
class HeadSpec:
    """Pooling of the body's map, then ``("dense", width)`` / ``("dropout", p)`` layers."""

    pool: str = "avg"
    layers: tuple[tuple[str, float], ...] = ()

    def __str__(self) -> str:
        parts = [self.pool] + [
            f"dense:{int(v)}" if kind == "dense" else f"dropout:{v:g}" for kind, v in self.layers
        ]
        return ",".join(parts)


HEAD_HELP = (
    "comma-separated: optional pooling first (avg, max or flatten; default avg), then "
    f"dense:WIDTH (1..{MAX_WIDTH}, with ReLU) and dropout:P (0 <= P < 1), e.g. "
    "'dense:256,dropout:0.5'; a linear layer to the classes always ends it"
)


def parse_head(text: str | None) -> HeadSpec:
    """``"avg,dense:256,dropout:0.5"`` → :class:`HeadSpec`; a one-line error otherwise."""
    items = [s.strip() for s in (text or "").split(",") if s.strip()]
    pool = "avg"
    if items and items[0].lower() in POOLS:
        pool = items.pop(0).lower()
    layers: list[tuple[str, float]] = []
    for pos, item in enumerate(items, 1):
        kind, _, value = item.partition(":")
        kind = kind.strip().lower()
        try:
            if kind == "dense":
                width = int(value)
                if not 1 <= width <= MAX_WIDTH:
                    raise ValueError
                layers.append(("dense", width))
                continue
            if kind == "dropout":
                p = float(value)
                if not 0 <= p < 1:
                    raise ValueError
                layers.append(("dropout", p))
                continue
        except ValueError:
            pass
        where = "pooling must come first" if kind in POOLS else "bad item"
        raise ConvlensError(f"--head {text!r}: {where}: item {pos} {item!r}; accepted: {HEAD_HELP}")
    if len(layers) > MAX_HEAD_LAYERS:
        raise ConvlensError(f"--head {text!r} has {len(layers)} layers; at most {MAX_HEAD_LAYERS}")
    return HeadSpec(pool, tuple(layers))


def _check_head_size(spec: HeadSpec, width: int, num_classes: int) -> None:
    """Charge the head's weights to the model budget before any is allocated (a checkpoint's
    head spec may come from anyone; ``flatten`` then ``dense:65536`` can be gigabytes)."""
    from convlens.model.formats.safety import Budget

    budget = Budget()
    for kind, value in [*spec.layers, ("dense", num_classes)]:
        if kind == "dense":
            budget.take((width + 1) * int(value) * 4, f"head layer dense:{int(value)}")
            width = int(value)


class Head(nn.Module):
    """``pool`` (no parameters: what a feature cache stores) then ``layers`` (trained)."""

    def __init__(self, spec: HeadSpec, channels: int, flat: int, num_classes: int) -> None:
        super().__init__()
        self.pool: nn.Module = {
            "avg": nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()),
            "max": nn.Sequential(nn.AdaptiveMaxPool2d(1), nn.Flatten()),
            "flatten": nn.Flatten(),
        }[spec.pool]
        width = flat if spec.pool == "flatten" else channels
        _check_head_size(spec, width, num_classes)
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        for i, (kind, value) in enumerate(spec.layers, 1):
            if kind == "dense":
                layers[f"fc{i}"] = nn.Linear(width, int(value))
                layers[f"relu{i}"] = nn.ReLU()
                width = int(value)
            else:
                layers[f"dropout{i}"] = nn.Dropout(value)
        layers["output"] = nn.Linear(width, num_classes)
        self.layers = nn.Sequential(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(self.pool(x))


# ------------------------------------------------------------------ the body


def cut_layer(model: Model) -> Layer:
    """The deepest layer with a ``(C, H, W)`` output that every later layer reads through."""
    layers = model.graph.layers
    for pos in range(len(layers) - 1, 0, -1):
        lay = layers[pos]
        if len(lay.output_shape) != 3 or lay.kind == "input":
            continue
        before = {x.name for x in layers[:pos]}
        if not any(i in before for x in layers[pos + 1 :] for i in x.inputs):
            return lay
    raise ConvlensError(
        f"model {model.name!r} has no layer with a spatial (C, H, W) output to cut at (its "
        "layers end in vectors from the start); transfer learning needs a convolutional body"
    )


def _truncated(gm: torch.fx.GraphModule, node: str) -> torch.fx.GraphModule:
    """A copy of the traced network whose output is ``node`` (later nodes removed); the
    modules are the original's, so body and model share their parameters."""
    body = torch.fx.GraphModule(gm, copy.deepcopy(gm.graph))
    graph = body.graph
    target = next(n for n in graph.nodes if n.name == node)
    for n in list(graph.nodes):
        if n.op == "output":
            graph.erase_node(n)
    graph.output(target)
    graph.eliminate_dead_code()
    graph.lint()
    body.delete_all_unused_submodules()
    body.recompile()
    return body


class _StopError(Exception):
    def __init__(self, value: torch.Tensor) -> None:
        self.value = value


class HookedBody(nn.Module):
    """The body of a network that fx cannot trace: runs it and stops at module ``module``."""

    def __init__(self, net: nn.Module, module: str) -> None:
        super().__init__()
        self.net, self.module = net, module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        def hook(mod: nn.Module, args: Any, out: torch.Tensor) -> None:
            raise _StopError(out)

        handle = self.net.get_submodule(self.module).register_forward_hook(hook)
        try:
            self.net(x)
        except _StopError as stop:
            return stop.value
        finally:
            handle.remove()
        raise ConvlensError(f"layer {self.module!r} did not run")


def body_of(model: Model, layer: Layer) -> nn.Module:
    graph = model.graph
    if graph.traced is not None and layer.node is not None:
        return _truncated(graph.traced, layer.node)
    if layer.module is None or layer.call != 1:
        raise ConvlensError(
            f"cannot cut {model.name!r} at {layer.name!r}: the network cannot be traced and the "
            "layer is not a module's only call"
        )
    return HookedBody(model.net, layer.module)


class TransferNet(nn.Module):
    """``head(body(x))``. ``blocks`` lists the body's blocks (parameter names, first to last)
    for fine-tuning, in this module's own names (``body.layer4.0.conv1.weight``)."""

    def __init__(
        self,
        body: nn.Module,
        head: Head,
        blocks: list[tuple[str, list[str]]],
        input_shape: tuple[int, int, int],
    ) -> None:
        super().__init__()
        self.body, self.head = body, head
        self.blocks = blocks
        self.input_shape = input_shape  # what the body takes, (C, H, W)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The head's input: the body's map, pooled (no parameters of the head involved)."""
        return self.head.pool(self.body(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def attach_head(
    model: Model, classes: list[str], head: HeadSpec, source: dict[str, Any], cut: str | None = None
) -> Model:
    """``model`` cut at :func:`cut_layer` (or ``cut``) with a fresh ``head`` for ``classes``.

    ``source`` says where the body comes from, for the checkpoint: ``{"body": zoo arch text,
    "body_format": "zoo"}`` or ``{"body": file name in the checkpoint, "body_format": format}``.
    """
    from convlens.model.blocks import blocks

    if isinstance(model.net, TransferNet):  # a transfer checkpoint: keep its body, new head
        inner = model.net
        old = model.arch["args"] if model.arch else {}
        net = TransferNet(inner.body, _head(inner, head, classes), inner.blocks, inner.input_shape)
        args = dict(old) | {"head": str(head), "num_classes": len(classes)}
        return _wrap(net, model, classes, args)
    layer = model.graph[cut] if cut else cut_layer(model)
    if len(layer.output_shape) != 3:
        raise ConvlensError(f"layer {layer.name!r} of {model.name!r} has no (C, H, W) output")
    body = body_of(model, layer)
    prefix = "body.net." if isinstance(body, HookedBody) else "body."
    own = {n for n, _ in body.named_parameters()}
    found = [
        (b.name, [prefix + p for p in b.params if (p if prefix == "body." else "net." + p) in own])
        for b in blocks(model, upto=layer.name)
    ]
    channels, h, w = layer.output_shape
    hd = Head(head, channels, channels * h * w, len(classes))
    args = dict(source) | {"cut": layer.name, "head": str(head), "num_classes": len(classes)}
    net = TransferNet(body, hd, [(n, ps) for n, ps in found if ps], model.spec.shape)
    return _wrap(net, model, classes, args)


def _head(inner: TransferNet, head: HeadSpec, classes: list[str]) -> Head:
    with torch.no_grad():
        sample = inner.body(torch.zeros(1, *inner.input_shape))
    channels, h, w = sample.shape[1:]
    return Head(head, channels, channels * h * w, len(classes))


def _wrap(net: TransferNet, model: Model, classes: list[str], args: dict[str, Any]) -> Model:
    out = Model(
        net, model.spec, classes, name=model.name, arch={"name": TRANSFER_ARCH, "args": args}
    )
    return out.train(model.training)


# ------------------------------------------------------------------ checkpoints


def _str_arg(args: dict[str, Any], key: str, where: str) -> str:
    value = args.get(key)
    if not isinstance(value, str) or not value:
        raise ConvlensError(f"{where}: transfer arch needs a string {key!r}")
    return value


def load_transfer(folder: Path, meta: dict[str, Any], trust_pickle: bool = False) -> Model:
    """Rebuild a model saved by a transfer run: body, cut, head, then the saved weights."""
    from convlens.model.checkpoint import (
        META_FILE,
        WEIGHTS_FILE,
        _check_arch_size,
        load_state_dict_into,
        read_input_spec,
        read_safetensors,
    )
    from convlens.model.load import load_model
    from convlens.model.zoo import build

    where = str(folder / META_FILE)
    args = meta["arch"].get("args", {})
    fmt = _str_arg(args, "body_format", where)
    body, cut = _str_arg(args, "body", where), _str_arg(args, "cut", where)
    head = parse_head(args.get("head") if isinstance(args.get("head"), str) else "")
    classes = meta.get("classes")
    if not classes or args.get("num_classes") != len(classes):
        raise ConvlensError(f"{where}: a transfer checkpoint needs its class names")
    spec = read_input_spec(meta, where)
    if fmt != "zoo" and fmt not in FILE_FORMATS:
        raise ConvlensError(
            f"{where}: body format {fmt!r}; accepted: zoo, {', '.join(FILE_FORMATS)}"
        )
    if fmt == "zoo":
        from convlens.model.zoo import parse_arch

        name, zoo_args = parse_arch(body)
        _check_arch_size(name, zoo_args, where)
        base = build(body)
        base = Model(base.net, spec, base.classes, name=base.name, arch=base.arch)
    else:
        path = (folder / body).resolve()
        if folder.resolve() not in path.parents:
            raise ConvlensError(f"{where}: body {body!r} lies outside the checkpoint folder")
        base = load_model(str(path), format=fmt, input_spec=spec, trust_pickle=trust_pickle)
    model = attach_head(base, list(classes), head, {"body": body, "body_format": fmt}, cut)
    model = Model(
        model.net, spec, classes, name=meta.get("name", base.name), arch=meta["arch"],
        outputs=meta.get("outputs", "logits"),
    )  # fmt: skip
    load_state_dict_into(model, read_safetensors(folder / WEIGHTS_FILE), str(folder))
    return model.eval()


def copy_body_files(source: str, fmt: str, folder: str | os.PathLike[str]) -> str:
    """Copy a model file (a TF.js model.json with its shards) into ``folder/body/``; returns
    its path relative to ``folder``, as the checkpoint records it."""
    import shutil

    src = Path(source)
    dest = Path(folder) / "body"
    dest.mkdir(parents=True, exist_ok=True)
    if fmt in ("tfjs", "tfjs-graph", "cnn-explainer"):
        from convlens.model.formats.tfjs import model_file, read_model_json

        if fmt == "cnn-explainer":
            from convlens.model.formats.download import ensure_cnn_explainer

            src = ensure_cnn_explainer(False)
        mj = model_file(src)
        doc = read_model_json(mj)
        files = [mj.name] + [
            str(p) for g in doc.get("weightsManifest", []) for p in g.get("paths", [])
        ]
        for rel in files:
            target = (dest / rel).resolve()
            if dest.resolve() not in target.parents:
                raise ConvlensError(f"weight shard {rel!r} lies outside the model's folder")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(mj.parent / rel, target)
        return f"body/{mj.name}"
    if not src.is_file():
        raise ConvlensError(f"cannot copy the body of {source!r} into the checkpoint: not a file")
    shutil.copyfile(src, dest / src.name)
    return f"body/{src.name}"


__all__ = [
    "HEAD_HELP",
    "TRANSFER_ARCH",
    "Head",
    "HeadSpec",
    "HookedBody",
    "TransferNet",
    "attach_head",
    "copy_body_files",
    "cut_layer",
    "load_transfer",
    "parse_head",
]
