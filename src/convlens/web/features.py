"""Adapters to the optional parts the web API shows: explanations, feature visualization, scans.

Each is imported lazily; when a part is missing from this build the API says so (``503`` for
``/explain``, ``null`` fields for ``/units``) instead of failing to start.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from convlens.errors import ConvlensError
from convlens.model.core import Model


class UnavailableError(Exception):
    """An optional part of convlens is not installed or not yet built."""


@dataclass(frozen=True)
class Explanation:
    map: torch.Tensor  # (H, W) at the input resolution
    signed: bool
    layer: str | None
    target: int


def _methods() -> Any:
    try:
        import convlens.methods as methods
    except ImportError as e:  # a build without the methods package
        raise UnavailableError(f"explanations not available: {e}") from None
    return methods


def _json_value(v: Any) -> Any:
    if v is None or isinstance(v, bool | int | float | str):
        return v
    if isinstance(v, tuple | list):
        return [_json_value(x) for x in v]
    return repr(v)


def _type_name(annotation: Any) -> str:
    if annotation is inspect.Parameter.empty:
        return "any"
    return annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "any")


def method_params(cls: type) -> dict[str, dict[str, Any]]:
    """``{name: {"default", "type"}}`` of a method's constructor (``model``/``layer`` left out,
    ``layer`` is chosen separately)."""
    sig = inspect.signature(cls.__init__)  # type: ignore[misc]
    out = {}
    for name, p in sig.parameters.items():
        if name in ("self", "model", "layer") or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            continue
        default = None if p.default is inspect.Parameter.empty else _json_value(p.default)
        out[name] = {"default": default, "type": _type_name(p.annotation)}
    return out


def method_catalogue() -> list[dict[str, Any]]:
    """The explanation methods with their flags and parameters, or ``[]`` when there are none."""
    try:
        methods = _methods()
    except UnavailableError:
        return []
    return [
        {
            "name": name,
            "title": getattr(cls, "title", name),
            "paper": getattr(cls, "paper", ""),
            "family": getattr(cls, "family", ""),
            "needs_layer": bool(getattr(cls, "needs_layer", False)),
            "signed": bool(getattr(cls, "signed", False)),
            "resolution": getattr(cls, "resolution", "input"),
            "params": method_params(cls),
        }
        for name, cls in methods.METHODS.items()
    ]


def explain(
    model: Model,
    x: torch.Tensor,
    method: str,
    target: int,
    layer: str | None,
    params: dict[str, Any],
) -> Explanation:
    """Run ``method`` on one image ``x`` ``(1, C, H, W)``; the map is ``(H, W)``."""
    methods = _methods()
    try:
        attr = methods.explain(model, x, method, target=target, layer=layer, **params)
    except TypeError as e:  # a parameter of the wrong type reached the method
        raise ConvlensError(f"bad parameters for {method!r}: {e}") from None
    return Explanation(
        map=attr.heat()[0], signed=bool(attr.signed), layer=attr.layer, target=target
    )


def featurevis_available() -> bool:
    return False


def render_unit(model: Model, layer: str, channel: int) -> Image.Image | None:
    return None


def scan_available(scan_dir: Path | None) -> bool:
    return False


def top_patches(
    scan_dir: Path | None, model: Model, layer: str, channel: int
) -> list[Image.Image] | None:
    return None
