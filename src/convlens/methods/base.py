"""The pieces every attribution method shares: the :class:`Attribution` result, the
:class:`Method` base with its capability flags, the method registry and layer capture.

A method is a small subclass registered under a name::

    @register
    class Saliency(GradientMethod):
        name = "saliency"
        ...

and is run through :func:`convlens.explain` (or ``METHODS.get(name)(model, **params)(x)``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypeVar

import torch
import torch.fx
import torch.nn.functional as F

from convlens.errors import ConvlensError
from convlens.io.figure import RichDisplay
from convlens.model.core import Model
from convlens.model.graph import Layer
from convlens.probe import capture, preserved_modes
from convlens.registry import Registry

from .targets import Target, TargetSpec, resolve_target

Family = Literal["gradient", "cam", "perturbation"]
Resolution = Literal["input", "layer"]


@dataclass
class Attribution(RichDisplay):
    """An explanation of a batch: ``values`` plus what produced them.

    ``values`` is ``(B, C, H, W)`` at the input's resolution (``C`` is 1 for maps that are
    not per channel). CAM methods keep their layer-resolution map in ``layer_values``
    ``(B, 1, h, w)``. ``scores`` are the explained scores of the unperturbed images,
    ``targets`` the class of each example (``None`` for a callable target). ``extra`` holds
    method-specific tensors (integrated gradients' ``delta``, occlusion's per-window ``grid``),
    ``notes`` what the method changed or assumed (e.g. which activations guided backprop
    rewrote). ``inputs`` and ``class_names`` (set by :meth:`Method.__call__`) let a notebook
    draw the map over its image with the target class named.
    """

    values: torch.Tensor
    method: str
    scores: torch.Tensor
    targets: list[int] | None
    layer: str | None = None
    signed: bool = False
    layer_values: torch.Tensor | None = None
    params: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, torch.Tensor] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    inputs: torch.Tensor | None = field(default=None, repr=False)
    class_names: list[str] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return self.values.shape[0]

    def heat(self) -> torch.Tensor:
        """One 2-D map per example ``(B, H, W)``: channels summed (signed maps) or their
        maximum (unsigned maps), the usual way of showing a per-channel attribution."""
        v = self.values.detach()
        return v.sum(dim=1) if self.signed else v.max(dim=1).values

    def __repr__(self) -> str:  # a summary, not a tensor dump
        shape = "×".join(map(str, self.values.shape))
        at = f", layer={self.layer!r}" if self.layer else ""
        return f"Attribution({self.method!r}, values {shape}, targets={self.targets}{at})"

    def _display_figure(self) -> tuple[Any, str]:
        from .figures import attribution_figure  # figures imports this module

        return attribution_figure(self)


class ParamError(ConvlensError):
    """A method parameter outside its declared :class:`Bound` (the web API answers 422)."""


@dataclass(frozen=True)
class Bound:
    """The accepted values of a numeric method parameter: ``low ≤ v ≤ high`` (an ``int`` when
    ``integer``; NaN and infinities never), or one of the strings ``choices``, or a list of
    at most ``items`` such numbers (a window ``(h, w)``, a fill per channel).

    Each method class declares its parameters' bounds in ``Method.bounds``; the API, the CLI
    and the web server all check them there (:func:`check_params`) and the server shows them
    in ``/model`` and its OpenAPI document, so a request can never ask for unbounded work.
    """

    low: float
    high: float
    integer: bool = False
    choices: tuple[str, ...] = ()
    items: int = 0

    def describe(self) -> str:
        """The accepted values in words: ``a positive integer (1..1000)``."""
        if self.integer:
            low, high = int(self.low), int(self.high)
            kind = "a positive integer" if low == 1 else "an integer"
            text = f"{kind} (1..{high})" if low == 1 else f"{kind} in {low}..{high}"
        else:
            text = f"a finite number in {self.low:g}..{self.high:g}"
        if self.items:
            text += f" (or a list of up to {self.items})"
        if self.choices:
            text = ", ".join(repr(c) for c in self.choices) + f" or {text}"
        return text

    def number_ok(self, v: object) -> bool:
        if isinstance(v, bool) or not isinstance(v, int | float):
            return False
        if self.integer and not isinstance(v, int):
            return False
        return math.isfinite(v) and self.low <= v <= self.high

    def accepts(self, value: object) -> bool:
        if isinstance(value, str):
            return value in self.choices
        if isinstance(value, torch.Tensor):  # a baseline image from Python: finite, in range
            if not value.is_floating_point() or value.numel() == 0:
                return False
            v = value.detach()
            return bool(torch.isfinite(v).all() and self.low <= v.min() and v.max() <= self.high)
        if isinstance(value, list | tuple):
            return 0 < len(value) <= self.items and all(self.number_ok(v) for v in value)
        return self.number_ok(value)

    def schema(self) -> dict[str, Any]:
        """The JSON-schema keywords of the bound (``/model`` and the OpenAPI document)."""
        number: dict[str, Any] = {
            "type": "integer" if self.integer else "number",
            "minimum": int(self.low) if self.integer else self.low,
            "maximum": int(self.high) if self.integer else self.high,
        }
        options = [number]
        if self.items:
            options.append({"type": "array", "items": number, "minItems": 1,
                            "maxItems": self.items})  # fmt: skip
        if self.choices:
            options.append({"type": "string", "enum": list(self.choices)})
        return number if len(options) == 1 else {"anyOf": options}


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_params(cls: type[Method], params: Mapping[str, Any]) -> None:
    """Refuse (:class:`ParamError`) any parameter outside its class's declared bound."""
    for name, value in params.items():
        bound = cls.bounds.get(name)
        if bound is not None and not bound.accepts(value):
            raise ParamError(f"{cls.name}: {name} must be {bound.describe()}; got {_short(value)}")


class Method:
    """Base of every attribution method; subclasses set the flags and implement ``attribute``.

    Capability flags (read by the CLI, the web UI and the docs):

    - ``family``: ``"gradient"``, ``"cam"`` or ``"perturbation"``;
    - ``needs_layer``: explains a hidden layer (``layer=`` chooses it; default the last
      spatial layer);
    - ``uses_gradients``: needs a backward pass (else it runs under ``torch.inference_mode``);
    - ``batched``: evaluates a whole batch at once;
    - ``resolution``: where the map is computed, ``"input"`` or ``"layer"`` (then upsampled);
    - ``signed``: the map has meaningful negative values.

    ``bounds`` declares the accepted range of each numeric parameter (:class:`Bound`).
    """

    name: ClassVar[str]
    title: ClassVar[str]
    paper: ClassVar[str]
    family: ClassVar[Family]
    needs_layer: ClassVar[bool] = False
    uses_gradients: ClassVar[bool] = True
    batched: ClassVar[bool] = True
    resolution: ClassVar[Resolution] = "input"
    signed: ClassVar[bool] = False
    bounds: ClassVar[dict[str, Bound]] = {}

    def __init__(self, model: Model) -> None:
        if not isinstance(model, Model):
            raise ConvlensError(
                f"explanations need a convlens Model, got {type(model).__name__}; wrap a module "
                "with convlens.load_model(module, input_spec=InputSpec(...))"
            )
        self.model = model

    def params(self) -> dict[str, Any]:
        """The settings this instance runs with (recorded in the :class:`Attribution`)."""
        return {}

    def __call__(self, images: torch.Tensor, target: TargetSpec = None) -> Attribution:
        x = prepare_images(self.model, images)
        with preserved_modes(self.model):
            result = self.attribute(x, target)
        result.inputs, result.class_names = x.detach(), list(self.model.classes)
        return result

    def attribute(self, x: torch.Tensor, target: TargetSpec) -> Attribution:
        raise NotImplementedError

    def result(
        self, values: torch.Tensor, scores: torch.Tensor, target: Target, **kw: Any
    ) -> Attribution:
        return Attribution(
            values=values.detach(),
            method=self.name,
            scores=scores.detach(),
            targets=target.classes,
            signed=kw.pop("signed", self.signed),
            params=self.params(),
            **kw,
        )


METHODS: Registry[type[Method]] = Registry("attribution method")
M = TypeVar("M", bound=type[Method])


def register(cls: M) -> M:
    """Class decorator: add a method to :data:`METHODS` under its ``name``."""
    METHODS.add(cls.name, cls)
    return cls


# --------------------------------------------------------------------------- inputs


def prepare_images(model: Model, images: torch.Tensor) -> torch.Tensor:
    """A detached float copy ``(B, C, H, W)`` of the caller's images (never modified), on the
    model's device, so a method's own tensors derived from it live there too."""
    if not isinstance(images, torch.Tensor):
        raise ConvlensError(
            f"images must be a float tensor (B, C, H, W) in [0, 1]; got {type(images).__name__}"
        )
    x = images.detach()
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if not x.is_floating_point():
        raise ConvlensError(f"images must be floats in [0, 1]; got dtype {x.dtype}")
    model.check_input(x)
    if x.shape[0] == 0:
        raise ConvlensError("no images given (the batch is empty)")
    return x.to(model.device, torch.float32, copy=True)


def parse_pair(value: int | tuple[int, int] | list[int], what: str) -> tuple[int, int]:
    """An int or an ``(h, w)`` pair of positive ints."""
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and v > 0 for v in pair):
        raise ConvlensError(f"{what} must be a positive int or a pair (h, w); got {value!r}")
    return (int(pair[0]), int(pair[1]))


def predicted_target(model: Model, x: torch.Tensor, target: TargetSpec) -> tuple[Target, Any]:
    """Resolve ``target`` against one gradient-free forward pass; returns it and the output."""
    with torch.inference_mode():
        out = model(x)
    return resolve_target(model, target, out), out


# --------------------------------------------------------------------------- layers


def spatial_layer(model: Model, name: str | None) -> Layer:
    """The layer a CAM method explains: ``name``, or the last spatial layer by default."""
    graph = model.graph
    if name is None:
        return graph.last_spatial()
    layer = graph[name]  # unknown names: the error lists close matches
    if not layer.is_spatial or layer.kind == "input":
        spatial = [lay.name for lay in graph.spatial()]
        raise ConvlensError(
            f"layer {name!r} has output {layer.output_shape}, not a spatial (C, H, W) map; "
            f"CAM methods need one of: {', '.join(spatial)}"
        )
    return layer


class _NodeTap(torch.fx.Interpreter):
    """Runs the traced network and keeps one node's output (still attached to autograd)."""

    def __init__(self, gm: torch.fx.GraphModule, node: str) -> None:
        super().__init__(gm)
        self.node = node
        self.value: torch.Tensor | None = None

    def run_node(self, n: torch.fx.Node) -> Any:
        out = super().run_node(n)
        if n.name == self.node and isinstance(out, torch.Tensor):
            self.value = out
            out = out.clone()  # a later in-place op must not change what we keep
        return out


def forward_with_layer(
    model: Model, x: torch.Tensor, layer: Layer
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the model and return ``(output, activation of layer)``.

    Module layers are read with :func:`convlens.probe.capture`; functional ones (``F.relu``,
    an addition) through the traced graph, so every layer of ``model.graph`` works.
    """
    if layer.module is not None:
        with capture(model, [layer.name], eval_mode=False) as cap:
            out = model(x)
        return out, cap.activations[layer.name]
    traced = model.graph.traced
    if traced is None or layer.node is None:
        raise ConvlensError(f"layer {layer.name!r} is a functional call that cannot be reached")
    model.check_input(x)
    tap = _NodeTap(traced, layer.node)
    out = tap.run(model.normalize(x))
    assert tap.value is not None
    return out, tap.value


def upsample(maps: torch.Tensor, size: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """Resize ``(B, C, h, w)`` maps to ``size`` (``bilinear`` or ``nearest``)."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    if mode == "bilinear":
        return F.interpolate(maps, size=size, mode="bilinear", align_corners=False)
    if mode == "nearest":
        return F.interpolate(maps, size=size, mode="nearest")
    raise ConvlensError(f"unknown interpolation {mode!r}; accepted: bilinear, nearest")


def chunks(total: int, size: int) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` pairs covering ``range(total)`` in steps of ``size``."""
    if size < 1:
        raise ConvlensError(f"chunk_size must be at least 1; got {size}")
    for start in range(0, total, size):
        yield start, min(total, start + size)
