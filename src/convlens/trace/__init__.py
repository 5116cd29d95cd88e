"""Every JSON document the web explainer reads, built from a ``Model`` without a server.

One function a document (shapes: :mod:`convlens.trace.schema`; contract: ``docs/web-api.md``):
:func:`model_document`, :func:`image_document`, :func:`trace_document`, :func:`channel_document`,
:func:`explanation_document`, :func:`unit_document`, :func:`weights_document`.
The web server adds only HTTP around them (routes, uploads, locks, caches, status codes).
"""

from convlens.trace.document import (
    CAP_LADDER,
    DEFAULT_BUDGET,
    TRACE_VERSION,
    Recording,
    TraceOptions,
    build_trace,
    cap_activation,
    capped_numbers,
    channel_document,
    default_caps,
    kernel_of,
    layer_stats,
    record,
    trace_document,
    trace_numbers,
    weights_document,
)
from convlens.trace.encode import (
    decode_tensor,
    display_copy,
    encode_quantized,
    encode_tensor,
    png_data_url,
)
from convlens.trace.explain import (
    UnusableMapError,
    check_request,
    class_index,
    explanation_document,
    method_catalogue,
    params_schema,
)
from convlens.trace.model_doc import (
    SampleEntry,
    default_limits,
    image_document,
    model_document,
    sample_entries,
)
from convlens.trace.unit import ScanSource, open_scan, render_unit, top_patches, unit_document

__all__ = [
    "CAP_LADDER",
    "DEFAULT_BUDGET",
    "TRACE_VERSION",
    "Recording",
    "SampleEntry",
    "ScanSource",
    "TraceOptions",
    "UnusableMapError",
    "build_trace",
    "cap_activation",
    "capped_numbers",
    "channel_document",
    "check_request",
    "class_index",
    "decode_tensor",
    "default_caps",
    "default_limits",
    "display_copy",
    "encode_quantized",
    "encode_tensor",
    "explanation_document",
    "image_document",
    "kernel_of",
    "layer_stats",
    "method_catalogue",
    "model_document",
    "open_scan",
    "params_schema",
    "png_data_url",
    "record",
    "render_unit",
    "sample_entries",
    "top_patches",
    "trace_document",
    "trace_numbers",
    "unit_document",
    "weights_document",
]
