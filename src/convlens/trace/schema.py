"""The shape of every JSON document the explainer reads, described once.

The server validates its small documents against these models and shows them in its OpenAPI
description; ``docs/web-api.md``'s field tables are generated from them
(``python -m convlens.trace.schema_docs``), so the contract is written in one place.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from convlens.io.image import MAX_ASPECT, MAX_PIXELS

# a server's default limits (``ServerConfig`` takes them too)
UPLOAD_BYTES = 16 * 1024 * 1024
JSON_BYTES = 1024 * 1024
EXPLAIN_SECONDS = 30.0
TRACE_MAX_NUMBERS = 8_000_000  # four default trace budgets (trace.DEFAULT_BUDGET)


class Doc(BaseModel):
    """A document's part; each field's docstring is its description (OpenAPI and docs)."""

    model_config = ConfigDict(use_attribute_docstrings=True)


class Tensor(Doc):
    """A float32 tensor: base64 of its little-endian bytes in C order."""

    shape: list[int]
    """the tensor's shape"""
    dtype: Literal["float32"] = "float32"
    """always float32"""
    b64: str
    """base64 of the little-endian float32 bytes, C order"""


class QuantizedTensor(Doc):
    """A (C, ...) map at one byte a number (`/trace?encoding=uint8`): value = offset[c] +
    scale[c] × q, q in 0..255; the error is at most scale[c] / 2."""

    shape: list[int]
    """the tensor's shape"""
    dtype: Literal["uint8"]
    """always uint8"""
    b64: str
    """base64 of the bytes q, C order"""
    offset: list[float]
    """per channel: the value of q = 0 (the channel's minimum)"""
    scale: list[float]
    """per channel: the step, (max − min) / 255"""


class TensorRows(Tensor):
    """*(v1.5)* A map of which only some channels were sent (`/trace?top_channels=k`): its rows
    are the channels `channels`, of the `of_channels` the capped map has (the rest on request)."""

    channels: list[int]
    """the channel each row is, increasing"""
    of_channels: int
    """the channels of the map after `max_channels`"""


class QuantizedRows(QuantizedTensor):
    """*(v1.5)* A quantized map of which only some channels were sent (`/trace?top_channels=k`):
    `offset` and `scale` are per row, the same numbers as in the whole map's."""

    channels: list[int]
    """the channel each row is, increasing"""
    of_channels: int
    """the channels of the map after `max_channels`"""


class Sample(Doc):
    """One of the server's sample images."""

    id: str
    """the image id, e.g. sample-3"""
    name: str
    """the file's name"""
    label: int | None
    """its class index; null when unknown"""
    label_name: str | None
    """its class name; null when unknown"""
    url: str
    """where the PNG is served"""


class MethodParam(Doc):
    """One constructor parameter of an explanation method."""

    default: Any
    """the default value"""
    type: str
    """int, float, bool, str, or the type as text"""
    choices: list[Any] | None = None
    """only for a fixed set of values"""
    minimum: float | None = None
    """smallest accepted number (bounded params)"""
    maximum: float | None = None
    """largest accepted number (bounded params)"""
    max_items: int | None = None
    """a list of at most this many is accepted"""
    accepts: str | None = None
    """the accepted values in words"""


class MethodInfo(Doc):
    """One registered explanation method."""

    name: str
    """registry name, e.g. grad-cam"""
    title: str
    """human title"""
    paper: str
    """the paper it follows"""
    family: str
    """gradient, cam or perturbation"""
    needs_layer: bool
    """whether it explains a layer"""
    signed: bool
    """whether its maps have a sign"""
    resolution: str
    """input or layer"""
    params: dict[str, MethodParam]
    """constructor parameters but `layer`"""


class Capabilities(Doc):
    """What this server can do beyond traces."""

    methods: list[MethodInfo]
    """one entry per registered method"""
    scan: bool
    """whether /units has top data-set patches"""
    featurevis: bool
    """whether /units renders feature visualizations"""


class Limits(Doc):
    """The server's limits and this model's default trace caps."""

    max_upload_bytes: int = UPLOAD_BYTES
    """largest upload, bytes"""
    max_upload_pixels: int = MAX_PIXELS
    """largest upload, pixels"""
    max_channels: int
    """default trace cap on channels per layer"""
    max_size: int
    """default trace cap on a map's longer side"""
    max_aspect: float = MAX_ASPECT
    """longest side / shortest side of an upload"""
    max_json_bytes: int = JSON_BYTES
    """largest JSON request body"""
    trace_max_numbers: int = TRACE_MAX_NUMBERS
    """most numbers a trace's caps may ask for"""
    explain_seconds: float = EXPLAIN_SECONDS
    """time budget of one explanation"""


class ModelDoc(Doc):
    """``GET /api/v1/model``: the model, its layer graph, samples and capabilities."""

    name: str
    """the model's name"""
    classes: list[str]
    """class names, by index"""
    input_spec: dict[str, Any]
    """channels, height, width, mean, std, resize (`InputSpec.to_dict()`)"""
    outputs: Literal["logits", "probabilities"]
    """what the model returns"""
    graph: dict[str, Any]
    """`model.graph.to_dict()`: layers in order"""
    samples: list[Sample]
    """the sample images"""
    capabilities: Capabilities
    """explanation methods, scan, featurevis"""
    limits: Limits
    """upload limits, trace caps, time budget"""


class Upload(Doc):
    """``POST /api/v1/images``: an uploaded image, decoded and fitted to the model."""

    image_id: str
    """the id to use in /trace and /explain"""
    width: int
    """decoded width after EXIF rotation"""
    height: int
    """decoded height after EXIF rotation"""
    original: str
    """data URL (PNG), EXIF-rotated, longer side <= 512"""
    processed: str
    """data URL (PNG) of exactly what the model sees"""


class TraceInput(Doc):
    """The traced image."""

    processed: str
    """data URL (PNG) of what the model sees"""
    tensor: Tensor | QuantizedTensor
    """(C, H, W) in [0, 1], un-normalized (uint8 with scale 1/255 under encoding=uint8)"""


class LayerStats(Doc):
    """A layer's value range on the full, uncapped tensor (null for NaN or infinite)."""

    min: float | None
    """minimum over everything"""
    max: float | None
    """maximum over everything"""
    channel_min: list[float | None]
    """per channel; [] for a vector"""
    channel_max: list[float | None]
    """per channel; [] for a vector"""


class Cap(Doc):
    """What a capped layer sent, and what it had."""

    channels: int
    """channels sent (the first ones)"""
    of_channels: int
    """the layer's channels"""
    size: list[int]
    """[H, W] sent (average-pooled)"""
    of_size: list[int]
    """the layer's [H, W]"""


class CapRows(Cap):
    """*(v1.5)* A capped layer of which only some channels were sent (`top_channels`)."""

    top_channels: int
    """of the `channels`, only this many were sent (the tensor's `channels` says which)"""


class Trace(Doc):
    """``GET /api/v1/trace``: every layer's output for one image, and the prediction."""

    version: Literal[1]
    """the document's version"""
    image_id: str | None
    """the image traced"""
    input: TraceInput
    """the image as the model sees it"""
    activations: dict[str, TensorRows | QuantizedRows | Tensor | QuantizedTensor]
    """layer name → output (C, H, W) or (N,), in graph order (the input: normalized)"""
    stats: dict[str, LayerStats]
    """layer name → value range (uncapped)"""
    caps: dict[str, CapRows | Cap]
    """only the layers that were cut or pooled"""
    logits: list[float | None]
    """the model's raw output"""
    probabilities: list[float | None]
    """softmax of the logits"""
    predicted: int
    """the most probable class"""
    predicted_name: str
    """its name"""


class Channel(Doc):
    """`GET /api/v1/activations/{layer}/{channel}`: one channel's exact map."""

    image_id: str | None
    """the image traced"""
    layer: str
    """the layer's name"""
    channel: int
    """the channel"""
    map: Tensor
    """(H, W) float32 at the layer's full size, neither capped nor quantized"""


class Weights(Doc):
    """``GET /api/v1/weights/{layer}``: a conv or linear layer's parameters."""

    layer: str
    """the layer's name"""
    weight: Tensor
    """conv (out, in/groups, kH, kW); linear (out, in)"""
    bias: Tensor | None
    """(out,), or null"""


class Explanation(Doc):
    """``POST /api/v1/explain``: one attribution map."""

    method: str
    """the method's name"""
    target: int
    """the class explained"""
    target_name: str
    """its name"""
    layer: str | None
    """the layer explained; null for input methods"""
    map: Tensor
    """(H, W) at the input resolution: `Attribution.heat()`"""
    signed: bool
    """whether the map has a sign"""
    overlay: str
    """data URL (PNG): the map blended over the input"""
    seconds: float
    """compute time on the server"""


class Hit(Doc):
    """One of a unit's top data-set activations."""

    value: float
    """the activation"""
    image: int
    """data-set image index"""
    row: int
    """grid row in the layer's map"""
    col: int
    """grid column in the layer's map"""


class Unit(Doc):
    """``GET /api/v1/units/{layer}/{channel}``: one channel of one layer."""

    layer: str
    """the layer's name"""
    channel: int
    """the channel"""
    featurevis: str | None
    """data URL (PNG) of its feature visualization"""
    kernel: Tensor | None
    """its filter (in/groups, kH, kW) for a conv"""
    top_patches: list[str] | None
    """data URLs of its top data-set crops"""
    top_hits: list[Hit] | None
    """the matching hits, best first"""


class Error(Doc):
    """Every error answer."""

    error: str
    """what was wrong and what is accepted"""


DOCUMENTS: tuple[type[BaseModel], ...] = (
    ModelDoc, Upload, Trace, Channel, Weights, Explanation, Unit
)  # fmt: skip
