"""The explanation methods' catalogue and the explanation document.

>>> from convlens.model.zoo import build
>>> doc = explanation_document(build("tiny-vgg"), torch.rand(1, 3, 64, 64), "grad-cam")
>>> doc["map"]["shape"], doc["layer"]
([64, 64], 'max_pool_2')
"""

from __future__ import annotations

import inspect
import time
import typing
from typing import Any

import torch
from PIL import Image

from convlens import methods
from convlens.errors import ConvlensError, unknown_name
from convlens.io.color import Scale
from convlens.io.figure import overlay
from convlens.io.image import tensor_to_image
from convlens.model.core import Model
from convlens.trace.encode import encode_tensor, png_data_url


class UnusableMapError(ConvlensError):
    """A map that came out NaN or infinite (the web API answers 422, like a bad parameter)."""


def _json_value(v: Any) -> Any:
    if v is None or isinstance(v, bool | int | float | str):
        return v
    if isinstance(v, tuple | list):
        return [_json_value(x) for x in v]
    return repr(v)


def _param_type(annotation: Any) -> dict[str, Any]:
    """``{"type": name}`` plus ``"choices"`` for a ``Literal`` (aliases resolved)."""
    if annotation is inspect.Parameter.empty:
        return {"type": "any"}
    if typing.get_origin(annotation) is typing.Literal:
        choices = list(typing.get_args(annotation))
        kind = type(choices[0]).__name__ if choices else "str"
        return {"type": kind, "choices": [_json_value(c) for c in choices]}
    if isinstance(annotation, type):
        return {"type": annotation.__name__}
    return {"type": str(annotation).replace("typing.", "")}


def method_params(cls: type) -> dict[str, dict[str, Any]]:
    """``{name: {"default", "type"[, "choices"], bounds}}`` of a method's constructor
    (``model`` and ``layer`` left out: ``layer`` is the request's own field)."""
    init = cls.__init__  # type: ignore[misc]
    try:
        hints = typing.get_type_hints(init)
    except Exception:  # an annotation that does not resolve: fall back to its text
        hints = {}
    out = {}
    for name, p in inspect.signature(init).parameters.items():
        if name in ("self", "model", "layer") or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            continue
        default = None if p.default is inspect.Parameter.empty else _json_value(p.default)
        out[name] = {"default": default, **_param_type(hints.get(name, p.annotation))}
        bound = getattr(cls, "bounds", {}).get(name)
        if bound is not None:  # the method class's declared range (methods.base.Bound)
            out[name] |= {"minimum": bound.low, "maximum": bound.high,
                          "accepts": bound.describe()}  # fmt: skip
            if bound.integer:
                out[name] |= {"minimum": int(bound.low), "maximum": int(bound.high)}
            if bound.items:
                out[name]["max_items"] = bound.items
    return out


def params_schema() -> dict[str, Any]:
    """JSON schema of ``/explain``'s ``params``: one object per method, its bounded numbers
    with ``minimum``/``maximum`` (for the OpenAPI document; the server checks them itself)."""
    options = [
        {
            "title": name,
            "type": "object",
            "properties": {k: b.schema() for k, b in getattr(cls, "bounds", {}).items()},
        }
        for name, cls in methods.METHODS.items()
    ]
    return {"anyOf": options} if options else {"type": "object"}


def check_request(method: str, params: dict[str, Any]) -> None:
    """Refuse an unknown method (``NotFoundError``) or a parameter out of its bound
    (``ParamError``) before any work is done."""
    methods.check_params(methods.METHODS.get(method), params)


def method_catalogue() -> list[dict[str, Any]]:
    """The explanation methods with their flags and parameters (``/model``'s ``methods``)."""
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


def class_index(model: Model, target: int | str) -> int:
    """A class by index or name; ``ConvlensError`` naming the range for anything else
    (``"²"``, ``2**70``)."""
    numeral = isinstance(target, str) and target.isascii() and target.lstrip("-").isdigit()
    if isinstance(target, str) and target not in model.classes and not numeral:
        # "²", "٣": digits to str.isdigit (and int("٣") is 3), but not class indices
        raise unknown_name("class", target, model.classes)
    try:
        return model.class_index(target)
    except ConvlensError:  # its own message (out of range, unknown name with suggestions)
        raise
    except (ValueError, OverflowError):  # str.isdigit() is true for "²", int("²") is not
        raise ConvlensError(
            f"unknown class {target!r}; give a class index 0..{len(model.classes) - 1} or a "
            "class name from /model's classes"
        ) from None


def explanation_document(
    model: Model,
    x: torch.Tensor,
    method: str,
    target: int | str | None = None,
    layer: str | None = None,
    params: dict[str, Any] | None = None,
    *,
    processed: Image.Image | None = None,
) -> dict[str, Any]:
    """The explanation document (``POST /explain``) of ``method`` on one image ``x``
    ``(1, C, H, W)`` in ``[0, 1]``.

    ``target`` ``None`` explains the predicted class (a class name is taken too); ``layer``
    ``None`` is the method's default. ``processed`` is ``x`` as an image when the caller has
    it (the overlay is drawn over it). Raises ``ParamError`` for a parameter out of its bound,
    :class:`UnusableMapError` for a NaN or infinite map, ``ConvlensError`` for the rest.
    """
    params = params or {}
    check_request(method, params)
    target = None if target is None else class_index(model, target)
    start = time.perf_counter()
    try:
        attr = methods.explain(model, x, method, target=target, layer=layer, **params)
    except TypeError as e:  # a parameter of the wrong type reached the method
        raise ConvlensError(f"bad parameters for {method!r}: {e}") from None
    seconds = time.perf_counter() - start
    explained = attr.targets[0] if attr.targets else target
    if explained is None:
        raise ConvlensError(f"method {method!r} did not report which class it explained")
    amap = attr.heat()[0].detach().float()
    if not bool(torch.isfinite(amap).all()):
        raise UnusableMapError(
            f"the {method} map has NaN or infinite values (the model's output or the "
            "parameters overflowed); try other parameters"
        )
    signed = bool(attr.signed)
    scale = Scale.fit(amap, "rdbu" if signed else "viridis")
    background = processed if processed is not None else tensor_to_image(x[0])
    return {
        "method": method,
        "target": int(explained),
        "target_name": model.classes[int(explained)],
        "layer": attr.layer,
        "map": encode_tensor(amap),
        "signed": signed,
        "overlay": png_data_url(overlay(background, amap, scale)),
        "seconds": round(seconds, 4),
    }
