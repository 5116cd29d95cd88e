"""Adapters to the optional parts the web API shows: explanations, feature visualization, scans.

Each is imported lazily; when a part is missing from this build the API says so (``503`` for
``/explain``, ``null`` fields for ``/units``) instead of failing to start.
"""

from __future__ import annotations

import inspect
import typing
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from convlens.errors import ConvlensError
from convlens.io.figure import upscale
from convlens.io.image import tensor_to_image
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
    """``{name: {"default", "type"[, "choices"]}}`` of a method's constructor (``model`` and
    ``layer`` left out: ``layer`` is the request's own field)."""
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
    try:
        methods = _methods()
    except UnavailableError:
        return {"type": "object"}
    options = []
    for name, cls in methods.METHODS.items():
        props = {k: b.schema() for k, b in getattr(cls, "bounds", {}).items()}
        options.append({"title": name, "type": "object", "properties": props})
    return {"anyOf": options} if options else {"type": "object"}


def check_request(method: str, params: dict[str, Any]) -> None:
    """Refuse an unknown method (``ConvlensError``) or a parameter out of its bound
    (``ParamError``) before any work is queued."""
    methods = _methods()
    methods.check_params(methods.METHODS.get(method), params)


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
    target: int | None,
    layer: str | None,
    params: dict[str, Any],
) -> Explanation:
    """Run ``method`` on one image ``x`` ``(1, C, H, W)``; the map is ``(H, W)``.

    ``target`` ``None`` explains the predicted class; the class explained comes back in the
    result."""
    methods = _methods()
    try:
        attr = methods.explain(model, x, method, target=target, layer=layer, **params)
    except TypeError as e:  # a parameter of the wrong type reached the method
        raise ConvlensError(f"bad parameters for {method!r}: {e}") from None
    explained = attr.targets[0] if attr.targets else target
    if explained is None:
        raise ConvlensError(f"method {method!r} did not report which class it explained")
    return Explanation(
        map=attr.heat()[0], signed=bool(attr.signed), layer=attr.layer, target=int(explained)
    )


def featurevis_available() -> bool:
    try:
        import convlens.featurevis  # noqa: F401
    except ImportError:
        return False
    return True


def render_unit(model: Model, layer: str, channel: int, steps: int) -> Image.Image | None:
    """Activation maximization of one channel (Olah et al., Distill 2017), or ``None`` when
    feature visualization is missing or the layer cannot be optimized (the input)."""
    if not featurevis_available() or model.graph[layer].kind == "input":
        return None
    import convlens.featurevis as fv

    try:
        result = fv.render(model, fv.channel(layer, [channel]), steps=steps, progress=False)
    except ConvlensError:
        return None
    return upscale(tensor_to_image(result.images[0]), 128)


@dataclass
class ScanSource:
    """A scan folder opened once at start-up, with the data set its patches are cut from."""

    result: Any  # convlens.analysis.ScanResult
    dataset: Any  # convlens.data.ImageDataset, or None when it cannot be opened here
    problem: str | None = None


def open_scan(scan_dir: Path, model: Model, dataset: str | None = None) -> ScanSource:
    """Load ``scan_dir`` (made by a scan of this very model) and reopen its data set.

    ``dataset`` overrides the data set recorded in the scan (a registered name or a folder):
    a folder data set records only its folder's name, so it must be given again.
    """
    try:
        from convlens.analysis import ScanResult, load_scan
        from convlens.analysis.scan import model_fingerprint
        from convlens.data import open_dataset
    except ImportError as e:
        raise ConvlensError(f"--scan needs the analysis package: {e}") from None
    meta, state = load_scan(scan_dir)
    recorded = meta.model.get("sha256")
    if recorded and recorded != model_fingerprint(model):
        raise ConvlensError(
            f"the scan in {str(scan_dir)!r} was made with other weights ({meta.model.get('name')}"
            f"), not with the served model {model.name!r}; scan this model first"
        )
    name = dataset or str(meta.dataset.get("name", ""))
    split = str(meta.dataset.get("split") or "train")
    try:
        ds = open_dataset(name, split)
    except ConvlensError as e:
        return ScanSource(ScanResult(meta, state), None, f"cannot open data set {name!r}: {e}")
    return ScanSource(ScanResult(meta, state), ds)


def top_patches(
    scan: ScanSource | None, model: Model, layer: str, channel: int, n: int = 8
) -> tuple[list[Image.Image], list[dict[str, Any]]] | None:
    """The receptive-field crops of the unit's top ``n`` dataset hits, with their hits."""
    if scan is None or scan.dataset is None or layer not in scan.result.state:
        return None
    from convlens.analysis.patches import unit_patches

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # whole-image "patches" of non-spatial layers
        crops, hits = unit_patches(scan.result, scan.dataset, model, layer, channel, n=n)
    images = [upscale(tensor_to_image(c), 64) for c in crops]
    return images, [{"value": h.value, "image": h.image, "row": h.row, "col": h.col} for h in hits]
