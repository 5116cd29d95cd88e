"""The trace document: everything the explainer draws for one model and one image.

``trace_document(model, x)`` runs the model once through its traced graph
(:func:`convlens.probe.record_all`) and returns a JSON-ready dict: every layer's output, its
value range, the logits and the class probabilities. Wide or large layers are capped so the
document of a big network stays small enough for a browser: at most ``max_channels`` channels
are sent, and a map larger than ``max_size`` on a side is average-pooled down,

    capped[c, i, j] = mean of x[c, rows_i, cols_j]      (torch's adaptive_avg_pool2d bins)

while the ``stats`` are always taken on the full tensor, so colour scales stay true.

>>> from convlens.model.zoo import build
>>> doc = trace_document(build("tiny-vgg"), torch.rand(1, 3, 64, 64))
>>> doc["activations"]["conv_1_1"]["shape"]
[10, 62, 62]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from convlens.errors import ConvlensError, unknown_name
from convlens.io.image import tensor_to_image
from convlens.model.core import Model
from convlens.probe import record_all
from convlens.trace.encode import TensorJSON, encode_quantized, encode_tensor, png_data_url

TRACE_VERSION = 1

# Every layer's output for one image and the model's output, as ``probe.record_all`` returns
# them: what a server keeps per image so a trace and the exact channels a detail view asks
# for afterwards share one forward pass.
Recording = tuple[dict[str, torch.Tensor], torch.Tensor]


def record(model: Model, x: torch.Tensor) -> Recording:
    """One forward pass of one image ``x`` ``(1, C, H, W)`` recording every layer (detached,
    so a cached recording holds no autograd graph)."""
    check_image(x)
    with torch.no_grad():
        outputs, out = record_all(model, x)
    return {k: v.detach() for k, v in outputs.items()}, out.detach()


@dataclass(frozen=True)
class TraceOptions:
    """Caps on what a trace sends per layer; ``None`` means no cap.

    ``layers`` restricts ``activations`` to the named layers (all when ``None``).
    ``encoding`` ``"uint8"`` sends each map ``(C, H, W)`` quantized per channel
    (:func:`~convlens.trace.encode.encode_quantized`: a quarter of the bytes, error at most
    half a step of 1/255 of the channel's range); vectors stay float32. Exact values of one
    channel: :func:`channel_document`.
    """

    max_channels: int | None = 64
    max_size: int | None = 128
    layers: Sequence[str] | None = None
    encoding: Literal["float32", "uint8"] = "float32"
    # Of each map's channels left by ``max_channels``, send only this many: the most active
    # (:func:`top_channels`, the order of the overview's first page); the rest on request.
    top_channels: int | None = None

    def __post_init__(self) -> None:
        for name in ("max_channels", "max_size", "top_channels"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConvlensError(f"{name} must be a positive integer or unset, got {value}")


def _number(v: torch.Tensor | np.floating | float) -> float | None:
    """A float for JSON; ``None`` for NaN and infinities, which JSON cannot carry."""
    f = float(v)
    return f if math.isfinite(f) else None


def layer_stats(t: torch.Tensor) -> dict[str, Any]:
    """Min and max over a per-example tensor, and per channel when it has channels.

    ``t`` is ``(C, H, W)`` (or ``(C, ...)`` of any rank ≥ 2) or a vector ``(N,)``; a vector has
    no channels, so its per-channel lists are empty.
    """
    # numpy, not torch: a reduction this small is dominated by torch's thread hand-off, which
    # costs milliseconds on a busy machine (measured: 5 ms vs 0.07 ms for 10×62×62)
    arr = t.detach().float().cpu().numpy()
    if arr.ndim < 2:
        return {
            "min": _number(arr.min()),
            "max": _number(arr.max()),
            "channel_min": [],
            "channel_max": [],
        }
    per_channel = arr.reshape(arr.shape[0], -1)  # (C, H, W) -> (C, H*W)
    ch_min, ch_max = per_channel.min(axis=1), per_channel.max(axis=1)
    return {
        "min": _number(ch_min.min()),
        "max": _number(ch_max.max()),
        "channel_min": [_number(v) for v in ch_min.tolist()],
        "channel_max": [_number(v) for v in ch_max.tolist()],
    }


def top_channels(channel_max: Sequence[float | None], count: int, k: int) -> list[int]:
    """The ``k`` most active of the first ``count`` channels, in increasing index order: by
    their maximum, largest first, ties to the lower index; a maximum JSON cannot carry (NaN,
    infinite: ``None``) counts as 0. The overview's first page of a layer is exactly these
    (``channelOrder`` in static/js/draw-utils.js, which sorts the same numbers the same way)."""
    values = [0.0 if v is None else v for v in channel_max[:count]]
    order = sorted(range(len(values)), key=lambda i: (-values[i], i))
    return sorted(order[:k])


def cap_activation(
    t: torch.Tensor, max_channels: int | None, max_size: int | None
) -> tuple[torch.Tensor, dict[str, Any] | None]:
    """Cut ``t`` (per example) to ``max_channels`` and pool its map down to ``max_size``.

    Returns the tensor to send and, when anything was cut, ``{"channels", "of_channels",
    "size", "of_size"}``; vectors are never capped.
    """
    if t.dim() != 3:
        return t, None
    c, h, w = t.shape
    out = t[:max_channels] if max_channels is not None and c > max_channels else t
    if max_size is not None and max(h, w) > max_size:
        scale = max_size / max(h, w)
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        out = F.adaptive_avg_pool2d(out.unsqueeze(0), size)[0]  # (1, C, H, W) pooling
    if out.shape == t.shape:
        return t, None
    return out, cap_info(out, t)


def cap_info(sent: torch.Tensor, whole: torch.Tensor) -> dict[str, Any]:
    """A map's cap entry: the channels and size sent (``sent``) of the layer's (``whole``)."""
    c, h, w = whole.shape
    return {
        "channels": int(sent.shape[0]),
        "of_channels": int(c),
        "size": [int(sent.shape[1]), int(sent.shape[2])],
        "of_size": [int(h), int(w)],
    }


# Caps tried in order, from the most detail to the least, until a trace fits the budget.
CAP_LADDER: tuple[tuple[int, int], ...] = (
    (64, 128), (64, 96), (64, 64), (48, 64), (32, 64), (32, 48), (32, 32),
    (24, 32), (16, 32), (16, 24), (16, 16), (8, 16), (8, 8),
)  # fmt: skip
DEFAULT_BUDGET = 2_000_000  # numbers per trace: 8 MB of float32, about 10.7 MB as base64


def _capped_size(shape: Sequence[int], max_channels: int | None, max_size: int | None) -> int:
    if len(shape) != 3:
        return math.prod(shape)
    c, h, w = shape
    if max_channels is not None:
        c = min(c, max_channels)
    if max_size is not None and max(h, w) > max_size:
        scale = max_size / max(h, w)
        h, w = max(1, round(h * scale)), max(1, round(w * scale))
    return c * h * w


def trace_numbers(model: Model, max_channels: int | None, max_size: int | None) -> int:
    """How many numbers a trace of every layer sends under these caps (from the graph)."""
    return sum(_capped_size(lay.output_shape, max_channels, max_size) for lay in model.graph)


def capped_numbers(model: Model, options: TraceOptions) -> int:
    """How many numbers a trace under ``options`` sends (its layers only; from the graph)."""
    graph = model.graph
    names = graph.names() if options.layers is None else dict.fromkeys(options.layers)
    return sum(
        _capped_size(graph[n].output_shape, options.max_channels, options.max_size)
        for n in names
        if n in graph
    )


def default_caps(model: Model, budget: int = DEFAULT_BUDGET) -> tuple[int, int]:
    """The most detailed ``(max_channels, max_size)`` of :data:`CAP_LADDER` whose trace of
    every layer sends at most ``budget`` numbers (the last rung if none does)."""
    for max_channels, max_size in CAP_LADDER:
        if trace_numbers(model, max_channels, max_size) <= budget:
            return max_channels, max_size
    return CAP_LADDER[-1]


def _chosen_layers(model: Model, layers: Sequence[str] | None) -> list[str]:
    names = model.graph.names()
    if layers is None:
        return names
    for name in layers:
        if name not in model.graph:
            raise unknown_name("layer", name, names)
    wanted = set(layers)
    return [n for n in names if n in wanted]  # graph order, whatever order was asked


def check_image(x: torch.Tensor) -> None:
    """Refuse anything but one image ``(1, C, H, W)``."""
    if x.dim() != 4 or x.shape[0] != 1:
        raise ConvlensError(f"a document takes one image (1, C, H, W); got {tuple(x.shape)}")


def check_unit(model: Model, layer: str, channel: int) -> None:
    """Refuse an unknown layer (``NotFoundError``) or a channel out of its range."""
    channels = model.graph[layer].output_shape[0]
    if not 0 <= channel < channels:
        raise ConvlensError(
            f"channel {channel} is out of range for layer {layer!r} (0..{channels - 1})"
        )


def trace_document(
    model: Model,
    x: torch.Tensor,
    *,
    image_id: str | None = None,
    options: TraceOptions | None = None,
    processed_url: str | None = None,
    recorded: Recording | None = None,
) -> dict[str, Any]:
    """The trace document of ``model`` on one image ``x`` ``(1, C, H, W)`` in ``[0, 1]``.

    ``processed_url`` is ``x`` as a PNG data URL when the caller already has one (made from
    ``x`` otherwise); ``recorded`` is :func:`record` of ``x`` when the caller kept one (the
    forward pass is skipped). See ``docs/web-api.md`` (``GET /api/v1/trace``) for the layout.
    """
    options = options or TraceOptions()
    check_image(x)
    names = _chosen_layers(model, options.layers)
    outputs, out = recorded or record(model, x)
    logits = out[0].float()
    probs = logits if model.outputs == "probabilities" else logits.softmax(dim=0)
    activations: dict[str, TensorJSON] = {}
    stats: dict[str, dict[str, Any]] = {}
    caps: dict[str, dict[str, Any]] = {}
    quantize_all = options.encoding == "uint8"
    for name in names:
        if name not in outputs:
            continue  # a layer the fallback hooks could not see (untraceable model)
        act = outputs[name][0]
        stats[name] = layer_stats(act)
        sent, info = cap_activation(act, options.max_channels, options.max_size)
        top = options.top_channels
        rows = None
        if top is not None and sent.dim() == 3 and sent.shape[0] > top:
            rows = top_channels(stats[name]["channel_max"], sent.shape[0], top)
        part = sent if rows is None else sent[rows]
        # per channel: a row's bytes, offset and scale are the same whichever rows are sent
        quantize = quantize_all and part.dim() == 3
        activations[name] = encode_quantized(part) if quantize else encode_tensor(part)
        if rows is not None:
            activations[name]["channels"] = rows
            activations[name]["of_channels"] = int(sent.shape[0])
            info = info or cap_info(act, act)  # left whole by the caps
            info["top_channels"] = len(rows)
        if info:
            caps[name] = info
    predicted = int(probs.argmax())
    # an 8-bit image in [0, 1] is exact at one byte a number (scale 1/255)
    image = encode_quantized(x[0], unit_range=True) if quantize_all else encode_tensor(x[0])
    return {
        "version": TRACE_VERSION,
        "image_id": image_id,
        "input": {
            "processed": processed_url or png_data_url(tensor_to_image(x[0])),
            "tensor": image,
        },
        "activations": activations,
        "stats": stats,
        "caps": caps,
        "logits": [_number(v) for v in logits],
        "probabilities": [_number(v) for v in probs],
        "predicted": predicted,
        "predicted_name": model.classes[predicted],
    }


build_trace = trace_document  # its first name, kept for callers


def channel_document(
    model: Model,
    x: torch.Tensor,
    layer: str,
    channel: int,
    *,
    image_id: str | None = None,
    recorded: Recording | None = None,
) -> dict[str, Any]:
    """The exact float32 map of one channel of ``layer`` ``(H, W)`` at its full size, for an
    image ``x`` ``(1, C, H, W)`` (what a detail view needs when the trace was capped or
    quantized); ``recorded`` as in :func:`trace_document`."""
    check_image(x)
    check_unit(model, layer, channel)
    shape = model.graph[layer].output_shape
    if len(shape) != 3:
        raise ConvlensError(f"layer {layer!r} has no maps (output {shape}); see the trace")
    outputs, _ = recorded or record(model, x)
    if layer not in outputs:
        raise ConvlensError(f"layer {layer!r} could not be recorded in this model")
    return {
        "image_id": image_id,
        "layer": layer,
        "channel": channel,
        "map": encode_tensor(outputs[layer][0, channel]),
    }


def weights_document(model: Model, layer: str) -> dict[str, Any]:
    """``{"layer", "weight", "bias"}`` of a conv or linear layer."""
    lay = model.graph[layer]
    if lay.kind not in ("conv", "linear") or lay.module is None:
        raise ConvlensError(
            f"layer {layer!r} ({lay.kind}, {lay.op}) has no weights; weights are shown for conv "
            "and linear layers"
        )
    module = model.net.get_submodule(lay.module)
    weight = getattr(module, "weight", None)
    bias = getattr(module, "bias", None)
    if not isinstance(weight, torch.Tensor):
        raise ConvlensError(f"layer {layer!r} has no weight tensor")
    return {
        "layer": layer,
        "weight": encode_tensor(weight),
        "bias": encode_tensor(bias) if isinstance(bias, torch.Tensor) else None,
    }


def kernel_of(model: Model, layer: str, channel: int) -> TensorJSON | None:
    """The filter of output ``channel`` of a conv layer ``(in/groups, kH, kW)``, else None."""
    lay = model.graph[layer]
    if lay.kind != "conv" or lay.module is None:
        return None
    weight = getattr(model.net.get_submodule(lay.module), "weight", None)
    if not isinstance(weight, torch.Tensor) or not 0 <= channel < weight.shape[0]:
        return None
    return encode_tensor(weight[channel])
