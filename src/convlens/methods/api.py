"""``convlens.explain``: the one call behind the CLI, the web explainer and notebooks."""

from __future__ import annotations

import inspect
from typing import Any

import torch

from convlens.errors import ConvlensError
from convlens.model.core import Model

from .base import METHODS, Attribution, Method, check_params
from .targets import TargetSpec


def make_method(model: Model, method: str, layer: str | None = None, **params: Any) -> Method:
    """Instantiate a registered method, checking its parameters by name."""
    cls = METHODS.get(method)  # unknown names: the error lists the registry
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "model")]
    if layer is not None:
        if "layer" not in accepted:
            raise ConvlensError(
                f"method {method!r} explains the input and takes no layer; methods that take "
                f"one: {', '.join(n for n, c in METHODS.items() if c.needs_layer)}"
            )
        params["layer"] = layer
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ConvlensError(
            f"unknown parameter(s) {', '.join(unknown)} for {method!r}; accepted: "
            f"{', '.join(accepted) or 'none'}"
        )
    check_params(cls, params)  # every numeric parameter within its declared bound
    return cls(model, **params)


def explain(
    model: Model,
    images: torch.Tensor,
    method: str = "grad-cam",
    target: TargetSpec = None,
    layer: str | None = None,
    **params: Any,
) -> Attribution:
    """Explain the model's score for each image with one attribution method.

    ``images`` is ``(B, C, H, W)`` (or one ``(C, H, W)`` image) in ``[0, 1]``; ``target`` is
    ``None`` (the predicted classes), a class index or name, one per image, or a callable on
    the output; ``layer`` chooses the layer of CAM methods (default: the last spatial one);
    ``params`` go to the method (see ``convlens.methods.METHODS``).

    >>> import convlens
    >>> m = convlens.load_model("tiny-vgg:input_size=32")
    >>> a = convlens.explain(m, torch.rand(4, 3, 32, 32), "saliency", target=2)
    >>> tuple(a.values.shape), a.targets
    ((4, 1, 32, 32), [2, 2, 2, 2])
    """
    return make_method(model, method, layer, **params)(images, target)
