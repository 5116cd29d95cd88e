"""Explanations of one prediction: attribution methods behind one registry.

>>> sorted(METHODS.names())[:3]
['cam', 'deconvnet', 'grad-cam']
"""

from convlens.methods import cam, gradient, occlusion
from convlens.methods.api import explain, make_method
from convlens.methods.base import METHODS, Attribution, Method, register
from convlens.methods.targets import Target, TargetSpec, resolve_target

__all__ = [
    "METHODS",
    "Attribution",
    "Method",
    "Target",
    "TargetSpec",
    "cam",
    "explain",
    "gradient",
    "make_method",
    "occlusion",
    "register",
    "resolve_target",
]
