"""Networks written as a layer list, for the arithmetic of a lecture without any Python.

The grammar (items separated by commas; spaces ignored; case-insensitive)::

    conv:FxFxK[/S][+P]   K filters of F×F (two sizes may differ), stride S (1), zero padding P (0)
    pool:F[/S]           max pooling over F×F windows, stride S (default F); also maxpool:
    avgpool:F[/S]        average pooling
    fc:N                 a fully connected layer with N outputs (flattens a spatial input first)
    relu | bn | flatten | softmax

so the lecture's ``32×32×3`` input with five ``5×5`` filters is ``conv:5x5x5`` on
``--input 32x32x3``. The same list may be given as JSON, each item either such a string or an
object: ``[{"type": "conv", "size": 5, "filters": 5, "stride": 1, "pad": 0}, "relu",
{"type": "pool", "size": 2}, {"type": "fc", "units": 10}]``.

Every conv and pool must tile its input: ``(N − F + 2P)/S + 1`` must be a whole number (a
stride-3, 3×3 filter on a 7×7 input gives 2.33 and is refused with that arithmetic).

>>> [s.text for s in parse_layers("conv:5x5x5/1+2, relu, pool:2, fc:10")]
['conv:5x5x5/1+2', 'relu', 'pool:2/2', 'fc:10']
>>> output_size(7, 3, 2, 0)
3
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from convlens.errors import ConvlensError

GRAMMAR = (
    "conv:FxFxK[/S][+P], pool:F[/S], avgpool:F[/S], fc:N, relu, bn, flatten, softmax "
    "(e.g. 'conv:5x5x5/1+2,relu,pool:2,fc:10')"
)
MAX_ITEMS = 256
MAX_SIDE = 4096  # input pixels per side, as for a model's input spec
MAX_CHANNELS = 65536  # filters, units or input channels of one layer
MAX_PARAMS = 400_000_000  # allocated (not initialized) to be traced: 1.6 GB; VGG-16 has 138 M
MAX_ACTIVATION = 50_000_000  # elements of one layer's output for one image (VGG-16: 3.2 M)

_CONV = re.compile(r"(\d+)x(\d+)x(\d+)(?:/(\d+))?(?:\+(\d+))?")
_POOL = re.compile(r"(\d+)(?:x(\d+))?(?:/(\d+))?")
_SIMPLE = ("relu", "bn", "flatten", "softmax")


@dataclass(frozen=True)
class LayerSpec:
    """One item of a layer list: ``kind`` is conv, maxpool, avgpool, fc, relu, bn, flatten or
    softmax; the window is ``(kh, kw)``, ``stride`` and ``pad`` (conv and pools); ``out`` the
    filters of a conv or the units of an fc layer."""

    kind: str
    kernel: tuple[int, int] = (1, 1)
    stride: int = 1
    pad: int = 0
    out: int = 0

    @property
    def text(self) -> str:
        """The item in the text grammar (stride and padding always written)."""
        kh, kw = self.kernel
        if self.kind == "conv":
            return f"conv:{kh}x{kw}x{self.out}/{self.stride}" + (f"+{self.pad}" if self.pad else "")
        if self.kind in ("maxpool", "avgpool"):
            size = f"{kh}" if kh == kw else f"{kh}x{kw}"
            return f"{'pool' if self.kind == 'maxpool' else 'avgpool'}:{size}/{self.stride}"
        return f"fc:{self.out}" if self.kind == "fc" else self.kind


def _int(text: str | None, default: int, what: str, item: str, lo: int = 1) -> int:
    if text is None:
        return default
    value = int(text)
    if not lo <= value <= MAX_CHANNELS:
        raise ConvlensError(f"layer {item!r}: {what} must be {lo}..{MAX_CHANNELS}, got {value}")
    return value


def parse_item(item: str) -> LayerSpec:
    """One item of the text grammar (see the module docstring)."""
    text = re.sub(r"\s+", "", item).lower().replace("×", "x")
    kind, _, args = text.partition(":")
    if kind in _SIMPLE and not args:
        return LayerSpec(kind)
    if kind == "conv" and (m := _CONV.fullmatch(args)):
        kh, kw, k = (_int(m.group(i), 1, w, item) for i, w in ((1, "F"), (2, "F"), (3, "K")))
        return LayerSpec(
            "conv", (kh, kw), _int(m.group(4), 1, "S", item), _int(m.group(5), 0, "P", item, 0), k
        )
    if kind in ("pool", "maxpool", "avgpool") and (m := _POOL.fullmatch(args)):
        kh = _int(m.group(1), 1, "F", item)
        kw = _int(m.group(2), kh, "F", item)
        stride = _int(m.group(3), kh, "S", item)
        return LayerSpec("avgpool" if kind == "avgpool" else "maxpool", (kh, kw), stride)
    if kind == "fc" and args.isascii() and args.isdigit():
        return LayerSpec("fc", out=_int(args, 0, "N", item))
    raise ConvlensError(f"cannot read layer {item!r}; accepted: {GRAMMAR}")


_JSON_KEYS = {
    "conv": {"size", "filters", "stride", "pad"},
    "pool": {"size", "stride"}, "maxpool": {"size", "stride"}, "avgpool": {"size", "stride"},
    "fc": {"units"}, **{k: set() for k in _SIMPLE},
}  # fmt: skip


def _json_item(obj: Any, position: int) -> LayerSpec:
    """A JSON layer: a string in the text grammar, or an object with ``type`` and its keys."""
    if isinstance(obj, str):
        return parse_item(obj)
    where = f"layer {position + 1} of the JSON list"
    if not isinstance(obj, dict) or obj.get("type") not in _JSON_KEYS:
        raise ConvlensError(
            f"{where}: expected a string or an object whose 'type' is one of "
            f"{', '.join(_JSON_KEYS)}; got {json.dumps(obj)[:80]}"
        )
    kind = obj["type"]
    extra = set(obj) - {"type"} - _JSON_KEYS[kind]
    if extra:
        raise ConvlensError(
            f"{where} ({kind}): unknown key(s) {', '.join(sorted(extra))}; accepted: "
            f"{', '.join(sorted(_JSON_KEYS[kind])) or 'none'}"
        )
    for key, value in obj.items():
        ok = isinstance(value, int) and not isinstance(value, bool)
        if key == "size" and isinstance(value, list) and len(value) == 2:
            ok = all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        if key != "type" and not ok:
            raise ConvlensError(f"{where} ({kind}): {key} must be a whole number, got {value!r}")
    size = obj.get("size", 1)
    kh, kw = (size, size) if isinstance(size, int) else size
    if kind == "conv":
        return parse_item(
            f"conv:{kh}x{kw}x{obj.get('filters', 1)}/{obj.get('stride', 1)}+{obj.get('pad', 0)}"
        )
    if kind in ("pool", "maxpool", "avgpool"):
        return parse_item(f"{kind}:{kh}x{kw}/{obj.get('stride', kh)}")
    if kind == "fc":
        return parse_item(f"fc:{obj.get('units', 0)}")
    return LayerSpec(kind)


def parse_layers(text: str) -> list[LayerSpec]:
    """A layer list in the text grammar or as a JSON list (see the module docstring)."""
    stripped = text.strip()
    if stripped.startswith("["):
        try:
            items = json.loads(stripped)
        except (json.JSONDecodeError, RecursionError) as e:
            raise ConvlensError(f"the layer list is not valid JSON: {e}") from None
        if not isinstance(items, list):
            raise ConvlensError("a JSON layer list must be a list")
        layers = [_json_item(obj, i) for i, obj in enumerate(items[: MAX_ITEMS + 1])]
    else:
        layers = [parse_item(p) for p in stripped.split(",")[: MAX_ITEMS + 1] if p.strip()]
    if not layers:
        raise ConvlensError(f"the layer list is empty; accepted: {GRAMMAR}")
    if len(layers) > MAX_ITEMS:
        raise ConvlensError(f"the layer list has more than {MAX_ITEMS} layers")
    return layers


def parse_input(text: str) -> tuple[int, int, int]:
    """``32x32x3`` (height × width × channels, as the lectures write it) or ``7x7`` (one
    channel); returns ``(C, H, W)``.

    >>> parse_input("32x32x3")
    (3, 32, 32)
    """
    parts = [p for p in re.split(r"[x×,\s]+", text.strip().lower()) if p]
    if len(parts) in (2, 3) and all(p.isascii() and p.isdigit() for p in parts):
        h, w, c = int(parts[0]), int(parts[1]), int(parts[2]) if len(parts) == 3 else 1
        if 1 <= h <= MAX_SIDE and 1 <= w <= MAX_SIDE and 1 <= c <= MAX_CHANNELS:
            return c, h, w
    raise ConvlensError(
        f"--input takes HxWxC (e.g. 32x32x3) or HxW (one channel), sides 1..{MAX_SIDE} and "
        f"1..{MAX_CHANNELS} channels; got {text!r}"
    )


def output_size(n: int, f: int, s: int, p: int) -> int:
    """``(N − F + 2P)/S + 1`` when it is a whole number at least 1; raises otherwise."""
    span = n - f + 2 * p
    if span < 0:
        raise ConvlensError(
            f"a {f}-wide window is larger than the {n}-wide input plus {2 * p} of padding"
        )
    if span % s:
        strides = [t for t in range(1, f + 1) if span % t == 0]
        pads = [q for q in range(0, f) if (n - f + 2 * q) % s == 0 and n - f + 2 * q >= 0]
        hint = f"strides that fit: {', '.join(map(str, strides))}"
        if pads:
            hint += f"; or stride {s} with padding {pads[0]}"
        raise ConvlensError(
            f"(N − F + 2P)/S + 1 = ({n} − {f} + 2·{p})/{s} + 1 = {span / s + 1:.2f} is not a "
            f"whole number: a {f}×{f} window with stride {s} does not fit a {n}-wide input; "
            f"{hint}"
        )
    return span // s + 1


def _window_shape(spec: LayerSpec, shape: tuple[int, ...], name: str) -> tuple[int, int, int]:
    if len(shape) != 3:
        raise ConvlensError(
            f"{name} ({spec.text}) needs a spatial input but follows a flattened one "
            f"({shape[0]} values); put convolutions and pools before fc/flatten"
        )
    c, h, w = shape
    try:
        oh = output_size(h, spec.kernel[0], spec.stride, spec.pad)
        ow = output_size(w, spec.kernel[1], spec.stride, spec.pad)
    except ConvlensError as e:
        raise ConvlensError(f"{name} ({spec.text}) on a {h}×{w}×{c} input: {e}") from None
    return (spec.out if spec.kind == "conv" else c), oh, ow


def _module(spec: LayerSpec, shape: tuple[int, ...]) -> nn.Module:
    """The layer on the meta device (shapes and counts only; nothing allocated yet)."""
    with torch.device("meta"):
        if spec.kind == "conv":
            return nn.Conv2d(shape[0], spec.out, spec.kernel, spec.stride, spec.pad)
        if spec.kind == "maxpool":
            return nn.MaxPool2d(spec.kernel, spec.stride)
        if spec.kind == "avgpool":
            return nn.AvgPool2d(spec.kernel, spec.stride)
        if spec.kind == "fc":
            return nn.Linear(shape[0], spec.out)
        if spec.kind == "bn":
            return nn.BatchNorm2d(shape[0]) if len(shape) == 3 else nn.BatchNorm1d(shape[0])
        return {"relu": nn.ReLU, "flatten": nn.Flatten, "softmax": nn.Softmax}[spec.kind]()


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def build_net(layers: list[LayerSpec], input_shape: tuple[int, int, int]) -> nn.Sequential:
    """The layers as a network on ``input_shape`` ``(C, H, W)``, every size checked first.

    Names are ``conv1``, ``relu1``, ``pool1``, ``fc1``... (numbered per kind); an fc layer on a
    spatial input gets a ``flatten`` before it. The weights are uninitialized: the network is
    for counting and tracing, not for predictions.
    """
    named: OrderedDict[str, nn.Module] = OrderedDict()
    counts: dict[str, int] = {}
    shape: tuple[int, ...] = input_shape
    total = 0

    def add(prefix: str, module: nn.Module, out: tuple[int, ...]) -> None:
        nonlocal shape, total
        counts[prefix] = counts.get(prefix, 0) + 1
        name = (
            prefix if prefix == "flatten" and counts[prefix] == 1 else f"{prefix}{counts[prefix]}"
        )
        total += _params(module)
        if total > MAX_PARAMS:
            raise ConvlensError(f"{name}: the network exceeds {MAX_PARAMS:,} parameters")
        if torch.Size(out).numel() > MAX_ACTIVATION:
            raise ConvlensError(f"{name}: its output {out} exceeds {MAX_ACTIVATION:,} values")
        named[name] = module
        shape = out

    for spec in layers:
        prefix = {"maxpool": "pool", "avgpool": "avgpool"}.get(spec.kind, spec.kind)
        if spec.kind in ("conv", "maxpool", "avgpool"):
            name = f"{prefix}{counts.get(prefix, 0) + 1}"
            out = _window_shape(spec, shape, name)
            add(prefix, _module(spec, shape), out)
        elif spec.kind == "fc":
            if len(shape) == 3:
                add("flatten", nn.Flatten(), (shape[0] * shape[1] * shape[2],))
            add(prefix, _module(spec, shape), (spec.out,))
        elif spec.kind == "flatten":
            add("flatten", nn.Flatten(), (int(torch.Size(shape).numel()),))
        else:
            add(prefix, _module(spec, shape), shape)
    net = nn.Sequential(named)
    return net.to_empty(device="cpu")  # memory, not initialization: ~0.3 s for AlexNet's 62 M
