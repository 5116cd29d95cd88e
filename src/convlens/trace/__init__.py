"""The versioned JSON document the web explainer draws (see ``docs/web-api.md``)."""

from convlens.trace.document import (
    TRACE_VERSION,
    TraceOptions,
    build_trace,
    cap_activation,
    kernel_of,
    layer_stats,
    weights_document,
)
from convlens.trace.encode import decode_tensor, display_copy, encode_tensor, png_data_url

__all__ = [
    "TRACE_VERSION",
    "TraceOptions",
    "build_trace",
    "cap_activation",
    "decode_tensor",
    "display_copy",
    "encode_tensor",
    "kernel_of",
    "layer_stats",
    "png_data_url",
    "weights_document",
]
