"""The documents' shapes, for the OpenAPI description: described once in
:mod:`convlens.trace.schema`, re-exported here for the routes."""

from convlens.trace.schema import (
    Cap,
    Capabilities,
    Channel,
    Error,
    Explanation,
    Hit,
    LayerStats,
    Limits,
    MethodInfo,
    MethodParam,
    ModelDoc,
    Sample,
    Tensor,
    Trace,
    TraceInput,
    Unit,
    Upload,
    Weights,
)

__all__ = [
    "Cap",
    "Capabilities",
    "Channel",
    "Error",
    "Explanation",
    "Hit",
    "LayerStats",
    "Limits",
    "MethodInfo",
    "MethodParam",
    "ModelDoc",
    "Sample",
    "Tensor",
    "Trace",
    "TraceInput",
    "Unit",
    "Upload",
    "Weights",
]
