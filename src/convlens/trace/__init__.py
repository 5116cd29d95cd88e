"""The versioned JSON document the web explainer draws (see ``docs/web-api.md``)."""

from convlens.trace.document import (
    CAP_LADDER,
    DEFAULT_BUDGET,
    TRACE_VERSION,
    TraceOptions,
    build_trace,
    cap_activation,
    default_caps,
    kernel_of,
    layer_stats,
    trace_numbers,
    weights_document,
)
from convlens.trace.encode import decode_tensor, display_copy, encode_tensor, png_data_url

__all__ = [
    "CAP_LADDER",
    "DEFAULT_BUDGET",
    "TRACE_VERSION",
    "TraceOptions",
    "build_trace",
    "cap_activation",
    "decode_tensor",
    "default_caps",
    "display_copy",
    "encode_tensor",
    "kernel_of",
    "layer_stats",
    "png_data_url",
    "trace_numbers",
    "weights_document",
]
