"""The shape of every JSON document the explainer reads, described once.

The server validates its small documents against these models and shows them in its OpenAPI
description; ``docs/web-api.md``'s field tables are generated from them
(``python -m convlens.trace.schema_docs``), so the contract is written in one place.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class Tensor(BaseModel):
    """A float32 tensor: base64 of its little-endian bytes in C order."""

    shape: list[int] = Field(description="the tensor's shape")
    dtype: Literal["float32"] = Field("float32", description="always float32")
    b64: str = Field(description="base64 of the little-endian float32 bytes, C order")


class Sample(BaseModel):
    """One of the server's sample images."""

    id: str = Field(description="the image id, e.g. sample-3")
    name: str = Field(description="the file's name")
    label: int | None = Field(description="its class index; null when unknown")
    label_name: str | None = Field(description="its class name; null when unknown")
    url: str = Field(description="where the PNG is served")


class MethodParam(BaseModel):
    """One constructor parameter of an explanation method."""

    default: Any = Field(description="the default value")
    type: str = Field(description="int, float, bool, str, or the type as text")
    choices: list[Any] | None = Field(None, description="only for a fixed set of values")
    minimum: float | None = Field(None, description="smallest accepted number (bounded params)")
    maximum: float | None = Field(None, description="largest accepted number (bounded params)")
    max_items: int | None = Field(None, description="a list of at most this many is accepted")
    accepts: str | None = Field(None, description="the accepted values in words")


class MethodInfo(BaseModel):
    """One registered explanation method."""

    name: str = Field(description="registry name, e.g. grad-cam")
    title: str = Field(description="human title")
    paper: str = Field(description="the paper it follows")
    family: str = Field(description="gradient, cam or perturbation")
    needs_layer: bool = Field(description="whether it explains a layer")
    signed: bool = Field(description="whether its maps have a sign")
    resolution: str = Field(description="input or layer")
    params: dict[str, MethodParam] = Field(description="constructor parameters but `layer`")


class Capabilities(BaseModel):
    """What this server can do beyond traces."""

    methods: list[MethodInfo] = Field(description="one entry per registered method")
    scan: bool = Field(description="whether /units has top data-set patches")
    featurevis: bool = Field(description="whether /units renders feature visualizations")


class Limits(BaseModel):
    """The server's limits and this model's default trace caps."""

    max_upload_bytes: int = Field(description="largest upload, bytes")
    max_upload_pixels: int = Field(description="largest upload, pixels")
    max_channels: int = Field(description="default trace cap on channels per layer")
    max_size: int = Field(description="default trace cap on a map's longer side")
    max_aspect: float = Field(description="longest side / shortest side of an upload")
    max_json_bytes: int = Field(description="largest JSON request body")
    trace_max_numbers: int = Field(description="most numbers a trace's caps may ask for")
    explain_seconds: float = Field(description="time budget of one explanation")


class ModelDoc(BaseModel):
    """``GET /api/v1/model``: the model, its layer graph, samples and capabilities."""

    name: str = Field(description="the model's name")
    classes: list[str] = Field(description="class names, by index")
    input_spec: dict[str, Any] = Field(
        description="channels, height, width, mean, std, resize (`InputSpec.to_dict()`)"
    )
    outputs: Literal["logits", "probabilities"] = Field(description="what the model returns")
    graph: dict[str, Any] = Field(description="`model.graph.to_dict()`: layers in order")
    samples: list[Sample] = Field(description="the sample images")
    capabilities: Capabilities = Field(description="explanation methods, scan, featurevis")
    limits: Limits = Field(description="upload limits, trace caps, time budget")


class Upload(BaseModel):
    """``POST /api/v1/images``: an uploaded image, decoded and fitted to the model."""

    image_id: str = Field(description="the id to use in /trace and /explain")
    width: int = Field(description="decoded width after EXIF rotation")
    height: int = Field(description="decoded height after EXIF rotation")
    original: str = Field(description="data URL (PNG), EXIF-rotated, longer side <= 512")
    processed: str = Field(description="data URL (PNG) of exactly what the model sees")


class TraceInput(BaseModel):
    """The traced image."""

    processed: str = Field(description="data URL (PNG) of what the model sees")
    tensor: Tensor = Field(description="(C, H, W) in [0, 1], un-normalized")


class LayerStats(BaseModel):
    """A layer's value range on the full, uncapped tensor (null for NaN or infinite)."""

    min: float | None = Field(description="minimum over everything")
    max: float | None = Field(description="maximum over everything")
    channel_min: list[float | None] = Field(description="per channel; [] for a vector")
    channel_max: list[float | None] = Field(description="per channel; [] for a vector")


class Cap(BaseModel):
    """What a capped layer sent, and what it had."""

    channels: int = Field(description="channels sent (the first ones)")
    of_channels: int = Field(description="the layer's channels")
    size: list[int] = Field(description="[H, W] sent (average-pooled)")
    of_size: list[int] = Field(description="the layer's [H, W]")


class Trace(BaseModel):
    """``GET /api/v1/trace``: every layer's output for one image, and the prediction."""

    version: Literal[1] = Field(description="the document's version")
    image_id: str | None = Field(description="the image traced")
    input: TraceInput = Field(description="the image as the model sees it")
    activations: dict[str, Tensor] = Field(
        description="layer name → output (C, H, W) or (N,), graph order; the input layer "
        "is the normalized input"
    )
    stats: dict[str, LayerStats] = Field(description="layer name → value range (uncapped)")
    caps: dict[str, Cap] = Field(description="only the layers that were cut or pooled")
    logits: list[float | None] = Field(description="the model's raw output")
    probabilities: list[float | None] = Field(description="softmax of the logits")
    predicted: int = Field(description="the most probable class")
    predicted_name: str = Field(description="its name")


class Weights(BaseModel):
    """``GET /api/v1/weights/{layer}``: a conv or linear layer's parameters."""

    layer: str = Field(description="the layer's name")
    weight: Tensor = Field(description="conv (out, in/groups, kH, kW); linear (out, in)")
    bias: Tensor | None = Field(description="(out,), or null")


class Explanation(BaseModel):
    """``POST /api/v1/explain``: one attribution map."""

    method: str = Field(description="the method's name")
    target: int = Field(description="the class explained")
    target_name: str = Field(description="its name")
    layer: str | None = Field(description="the layer explained; null for input methods")
    map: Tensor = Field(description="(H, W) at the input resolution: `Attribution.heat()`")
    signed: bool = Field(description="whether the map has a sign")
    overlay: str = Field(description="data URL (PNG): the map blended over the input")
    seconds: float = Field(description="compute time on the server")


class Hit(BaseModel):
    """One of a unit's top data-set activations."""

    value: float = Field(description="the activation")
    image: int = Field(description="data-set image index")
    row: int = Field(description="grid row in the layer's map")
    col: int = Field(description="grid column in the layer's map")


class Unit(BaseModel):
    """``GET /api/v1/units/{layer}/{channel}``: one channel of one layer."""

    layer: str = Field(description="the layer's name")
    channel: int = Field(description="the channel")
    featurevis: str | None = Field(description="data URL (PNG) of its feature visualization")
    kernel: Tensor | None = Field(description="its filter (in/groups, kH, kW) for a conv")
    top_patches: list[str] | None = Field(description="data URLs of its top data-set crops")
    top_hits: list[Hit] | None = Field(description="the matching hits, best first")


class Error(BaseModel):
    """Every error answer."""

    error: str = Field(description="what was wrong and what is accepted")


DOCUMENTS: tuple[type[BaseModel], ...] = (ModelDoc, Upload, Trace, Weights, Explanation, Unit)
