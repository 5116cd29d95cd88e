"""Explanations of one prediction: attribution methods behind one registry.

>>> sorted(METHODS.names())[:3]
['cam', 'deconvnet', 'grad-cam']
"""

from convlens.methods import cam, gradient, occlusion
from convlens.methods.api import explain, make_method
from convlens.methods.base import (
    METHODS,
    Attribution,
    Bound,
    Method,
    ParamError,
    check_params,
    register,
)
from convlens.methods.curves import Curves, deletion_insertion
from convlens.methods.sanity import SanityResult, randomization_check
from convlens.methods.targets import Target, TargetSpec, resolve_target

__all__ = [
    "METHODS",
    "Attribution",
    "Bound",
    "Curves",
    "Method",
    "ParamError",
    "SanityResult",
    "Target",
    "TargetSpec",
    "cam",
    "check_params",
    "deletion_insertion",
    "explain",
    "gradient",
    "make_method",
    "occlusion",
    "randomization_check",
    "register",
    "resolve_target",
]
