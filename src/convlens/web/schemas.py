"""Response shapes of the API, for the OpenAPI description (``/api/v1/openapi.json``).

They mirror ``docs/web-api.md``; routes that return small documents are validated against
them, the trace (megabytes of base64) is only described.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class Tensor(BaseModel):
    """A float32 tensor: base64 of its little-endian bytes in C order."""

    shape: list[int]
    dtype: Literal["float32"] = "float32"
    b64: str


class Sample(BaseModel):
    id: str = Field(description="the image id, e.g. sample-3")
    name: str
    label: int | None
    label_name: str | None
    url: str


class MethodParam(BaseModel):
    default: Any
    type: str
    choices: list[Any] | None = None
    minimum: float | None = Field(None, description="smallest accepted number (bounded params)")
    maximum: float | None = Field(None, description="largest accepted number (bounded params)")
    max_items: int | None = Field(None, description="a list of at most this many is accepted")
    accepts: str | None = Field(None, description="the accepted values in words")


class MethodInfo(BaseModel):
    name: str
    title: str
    paper: str
    family: str
    needs_layer: bool
    signed: bool
    resolution: str
    params: dict[str, MethodParam]


class Capabilities(BaseModel):
    methods: list[MethodInfo]
    scan: bool
    featurevis: bool


class Limits(BaseModel):
    max_upload_bytes: int
    max_upload_pixels: int
    max_channels: int = Field(description="default trace cap on channels per layer")
    max_size: int = Field(description="default trace cap on a map's longer side")
    max_aspect: float = Field(description="longest side / shortest side of an upload")
    max_json_bytes: int = Field(description="largest JSON request body")
    trace_max_numbers: int = Field(description="most numbers a trace's caps may ask for")
    explain_seconds: float = Field(description="time budget of one explanation")


class ModelDoc(BaseModel):
    name: str
    classes: list[str]
    input_spec: dict[str, Any]
    outputs: Literal["logits", "probabilities"]
    graph: dict[str, Any] = Field(description="model.graph.to_dict(): layers in order")
    samples: list[Sample]
    capabilities: Capabilities
    limits: Limits


class Upload(BaseModel):
    image_id: str
    width: int
    height: int
    original: str = Field(description="data URL (PNG), EXIF-rotated, longer side <= 512")
    processed: str = Field(description="data URL (PNG) of exactly what the model sees")


class TraceInput(BaseModel):
    processed: str
    tensor: Tensor


class LayerStats(BaseModel):
    min: float | None
    max: float | None
    channel_min: list[float | None]
    channel_max: list[float | None]


class Cap(BaseModel):
    channels: int
    of_channels: int
    size: list[int]
    of_size: list[int]


class Trace(BaseModel):
    version: Literal[1]
    image_id: str | None
    input: TraceInput
    activations: dict[str, Tensor]
    stats: dict[str, LayerStats]
    caps: dict[str, Cap]
    logits: list[float | None]
    probabilities: list[float | None]
    predicted: int
    predicted_name: str


class Weights(BaseModel):
    layer: str
    weight: Tensor
    bias: Tensor | None


class Explanation(BaseModel):
    method: str
    target: int
    target_name: str
    layer: str | None
    map: Tensor
    signed: bool
    overlay: str
    seconds: float


class Hit(BaseModel):
    value: float
    image: int
    row: int
    col: int


class Unit(BaseModel):
    layer: str
    channel: int
    featurevis: str | None
    kernel: Tensor | None
    top_patches: list[str] | None
    top_hits: list[Hit] | None


class Error(BaseModel):
    error: str
