"""Blocks of a network, found from its layer graph: the units that fine-tuning unfreezes.

A *block* is a run of layers that works at one resolution: a VGG conv block (convs up to the
pool that closes it), a ResNet stage (its residual blocks, opened by a strided conv), one
resolution of a MobileNet. Two rules place the boundaries, in execution order:

* a window pool (max or average, stride > 1) *closes* the block it ends;
* a strided conv *opens* a new block, which starts at the first layer of the outermost module
  that holds the conv but nothing of the block before (a bottleneck's 1×1 expansion before
  its strided 3×3 belongs with it: ``features.2`` of MobileNetV2, ``layer2`` of a ResNet).

A boundary is kept only where the graph can be cut there: no later layer may read an earlier
layer other than the last one before the boundary (a skip connection across it would split a
residual block). Blocks without parameters join the block before them.

>>> from convlens.model.zoo import build
>>> m = build("vgg16")
>>> [b.name for b in blocks(m, upto=m.graph.last_spatial().name)]
['features.0-4', 'features.5-9', 'features.10-16', 'features.17-23', 'features.24-30']
>>> m = build("resnet18")
>>> [b.name for b in blocks(m, upto="avgpool")]
['conv1-maxpool', 'layer1', 'layer2', 'layer3', 'layer4']
>>> [(b.name, len(b.params)) for b in blocks(build("tiny-vgg"))]
[('conv_1_1-max_pool_1', 4), ('conv_2_1-max_pool_2', 4), ('output', 2)]
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from convlens.errors import ConvlensError
from convlens.model.core import Model
from convlens.model.graph import Layer


@dataclass(frozen=True)
class Block:
    """Consecutive layers of the graph and the parameters their modules own."""

    name: str
    layers: tuple[str, ...]
    params: tuple[str, ...]  # qualified parameter names in ``model.net``

    @property
    def size(self) -> int:
        return len(self.params)


def _stride(layer: Layer) -> int:
    stride = layer.hyper.get("stride", [1, 1])
    return max(int(s) for s in stride)


def _opens(layer: Layer) -> bool:
    return layer.kind == "conv" and _stride(layer) > 1


def _closes(layer: Layer) -> bool:
    return layer.kind in ("maxpool", "avgpool") and _stride(layer) > 1


def _inside(layer: Layer, prefix: str) -> bool:
    m = layer.module
    return m is not None and (m == prefix or m.startswith(prefix + "."))


def _unit_start(layers: list[Layer], at: int, start: int) -> int:
    """Where a block opened by the strided conv ``layers[at]`` begins: the first layer of the
    outermost module holding the conv but not the whole current block (which starts at
    ``start``) nor anything of the blocks before it."""
    path = (layers[at].module or "").split(".")
    for depth in range(1, len(path) + 1):
        prefix = ".".join(path[:depth])
        inside = [i for i in range(start, at) if _inside(layers[i], prefix)]
        owned = [i for i in range(start, at) if layers[i].module is not None]
        if owned and len(inside) == len(owned):
            continue  # holds the whole block so far (``features`` of a Sequential): too wide
        if any(_inside(lay, prefix) for lay in layers[:start]):
            return at
        return inside[0] if inside else at
    return at


def _cuttable(layers: list[Layer], at: int) -> bool:
    """No layer from ``at`` on reads a layer before ``at - 1`` (nothing skips the boundary)."""
    before = {lay.name for lay in layers[: at - 1]}
    return not any(i in before for lay in layers[at:] for i in lay.inputs)


def _params_of(net: nn.Module, layers: list[Layer]) -> tuple[str, ...]:
    names: list[str] = []
    for lay in layers:
        if lay.module is None or lay.call != 1:
            continue
        module = net.get_submodule(lay.module)
        names += [f"{lay.module}.{n}" for n, _ in module.named_parameters(recurse=False)]
        if not any(True for _ in module.children()):
            continue
        # A container called as one layer (a hook-built graph records leaves only, so this is
        # a module that fx did not trace into): all of its parameters.
        names += [f"{lay.module}.{n}" for n, _ in module.named_parameters() if "." in n]
    return tuple(dict.fromkeys(names))


_UNNAMED = ("adaptive_pool", "flatten", "dropout")


def _common_prefix(modules: list[str]) -> str:
    parts = [m.split(".") for m in modules]
    common: list[str] = []
    for segs in zip(*parts, strict=False):
        if len(set(segs)) != 1:
            break
        common.append(segs[0])
    return ".".join(common)


def _name(group: list[Layer], all_layers: list[Layer], index: int) -> str:
    """The module holding exactly the block (``layer1``), else a range of modules
    (``features.0-4``, ``conv1-maxpool``), else ``blockN``."""
    # A global pool or flatten that ends the body does not name it (``layer4``, not
    # ``layer4-avgpool``).
    modules = [lay.module for lay in group if lay.module and lay.kind not in _UNNAMED]
    if not modules:
        return f"block{index + 1}"
    prefix = _common_prefix(modules)
    if prefix:
        outside = [lay for lay in all_layers if lay not in group and _inside(lay, prefix)]
        if not outside:
            return prefix
        depth = prefix.count(".") + 1
        first, last = modules[0].split(".")[depth], modules[-1].split(".")[depth]
        return f"{prefix}.{first}" if first == last else f"{prefix}.{first}-{last}"
    first, last = modules[0].split(".")[0], modules[-1].split(".")[0]
    return first if first == last else f"{first}-{last}"


def blocks(model: Model, upto: str | None = None) -> list[Block]:
    """The blocks of ``model`` up to and including layer ``upto`` (default: every layer),
    first to last. See the module docstring for the rules."""
    graph = model.graph
    layers = [lay for lay in graph.layers if lay.kind != "input"]
    if upto is not None:
        end = graph[upto].index  # raises the usual unknown-layer error
        layers = [lay for lay in layers if lay.index <= end]
    if not layers:
        raise ConvlensError(f"model {model.name!r} has no layers to divide into blocks")
    starts = [0]
    for i, lay in enumerate(layers):
        if i > starts[-1] and _opens(lay):
            at = _unit_start(layers, i, starts[-1])
            while at - 1 > starts[-1] and "pad" in layers[at - 1].hyper:
                at -= 1  # the padding in front of a strided conv (Keras) goes with it
            if at > starts[-1] and _cuttable(layers, at):
                starts.append(at)
        if _closes(lay) and i + 1 < len(layers) and _cuttable(layers, i + 1):
            starts.append(i + 1)
    starts = sorted(set(starts))
    groups = [layers[a:b] for a, b in zip(starts, [*starts[1:], len(layers)], strict=True)]
    found: list[tuple[list[Layer], tuple[str, ...]]] = []
    for group in groups:
        params = _params_of(model.net, group)
        if found and not params:
            found[-1] = (found[-1][0] + group, found[-1][1])
        elif found and not found[-1][1]:
            found[-1] = (found[-1][0] + group, params)
        else:
            found.append((group, params))
    return [
        Block(_name(group, graph.layers, i), tuple(lay.name for lay in group), params)
        for i, (group, params) in enumerate(found)
    ]


__all__ = ["Block", "blocks"]
