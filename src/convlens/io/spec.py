"""The input spec: what a model expects to be fed.

A :class:`convlens.model.Model` takes images as float tensors ``(B, C, H, W)`` with values in
``[0, 1]``; the spec's mean and std are applied inside the model. So attributions, feature
visualizations and adversarial budgets are all in plain pixel units.
"""

from __future__ import annotations

import math
import numbers
import operator
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from convlens.errors import ConvlensError

ResizePolicy = Literal["shorter-side-crop", "stretch"]
RESIZE_POLICIES: tuple[str, ...] = ("shorter-side-crop", "stretch")
Interpolation = Literal["bicubic", "bilinear"]
INTERPOLATIONS: tuple[str, ...] = ("bicubic", "bilinear")

# Bounds on what a spec may ask for. A side of 4096 pixels covers every published CNN input
# (224..1024 typically) with room to spare, while keeping one input image under 200 MiB of
# float32; anything larger is a typo or an attack (100000² would ask for 40 GB).
MAX_SIDE = 4096
# mean and std are in [0, 1] pixel units: a model fed raw 0..255 values has std 1/255, one
# fed [-1, 1] has std 0.5. Outside these bounds x / std overflows or means nothing.
MEAN_RANGE = (-1000.0, 1000.0)
STD_RANGE = (1e-6, 1000.0)


@dataclass(frozen=True)
class InputSpec:
    """Channels, size and normalization of a model's input.

    ``resize`` says how an arbitrary image becomes ``height × width``: ``shorter-side-crop``
    scales it until it covers the target and crops the centre (aspect ratio kept),
    ``stretch`` resizes to the target directly. ``resize_size`` (with ``shorter-side-crop``)
    first scales the shorter side to that many pixels (or more, when that would not cover the
    target) and then crops the centre, as torchvision's ``Resize(256)`` + ``CenterCrop(224)``
    evaluation transform does;
    ``interpolation`` is the (antialiased) resampling filter.

    >>> InputSpec(channels=1, height=28, width=28).color_mode
    'L'
    """

    channels: int
    height: int
    width: int
    mean: tuple[float, ...] = field(default=(0.0,))
    std: tuple[float, ...] = field(default=(1.0,))
    resize: ResizePolicy = "shorter-side-crop"
    resize_size: int | None = None
    interpolation: Interpolation = "bicubic"

    def __post_init__(self) -> None:
        channels, height, width = (
            _index(getattr(self, n)) for n in ("channels", "height", "width")
        )
        if channels not in (1, 3):
            raise ConvlensError(f"input channels must be 1 or 3, got {self.channels!r}")
        if (
            height is None
            or width is None
            or not (1 <= height <= MAX_SIDE and 1 <= width <= MAX_SIDE)
        ):
            raise ConvlensError(
                f"input size must be 1..{MAX_SIDE} pixels per side, got "
                f"{self.height!r}×{self.width!r}"
            )
        for key, whole in (("channels", channels), ("height", height), ("width", width)):
            object.__setattr__(self, key, whole)
        for name, kind, (lo, hi) in (("mean", "", MEAN_RANGE), ("std", "positive ", STD_RANGE)):
            value = _numbers(getattr(self, name), name)
            if len(value) == 1:
                value = value * self.channels
            if len(value) != self.channels:
                raise ConvlensError(
                    f"input {name} needs 1 or {self.channels} values, got {len(value)}"
                )
            if not all(math.isfinite(v) and lo <= v <= hi for v in value):
                shown = ", ".join(f"{v:g}" for v in value)
                raise ConvlensError(
                    f"input {name} must be {kind}finite numbers in [{lo:g}, {hi:g}] "
                    f"(pixel values in [0, 1] units), got {shown}"
                )
            object.__setattr__(self, name, value)
        if self.resize not in RESIZE_POLICIES:
            raise ConvlensError(
                f"unknown resize policy {self.resize!r}; accepted: {', '.join(RESIZE_POLICIES)}"
            )
        if self.resize_size is not None and not (
            _index(self.resize_size) is not None and 1 <= self.resize_size <= MAX_SIDE
        ):
            raise ConvlensError(
                f"resize_size must be 1..{MAX_SIDE} pixels or none, got {self.resize_size!r}"
            )
        if self.interpolation not in INTERPOLATIONS:
            raise ConvlensError(
                f"unknown interpolation {self.interpolation!r}; accepted: "
                + ", ".join(INTERPOLATIONS)
            )

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.channels, self.height, self.width)

    @property
    def color_mode(self) -> str:
        """The Pillow mode an image is converted to: ``L`` for gray, ``RGB`` for colour."""
        return "L" if self.channels == 1 else "RGB"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> InputSpec:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConvlensError(
                f"unknown input spec keys {sorted(unknown)}; accepted: {sorted(known)}"
            )
        try:
            return cls(
                channels=_integer(d["channels"], "channels"),
                height=_integer(d["height"], "height"),
                width=_integer(d["width"], "width"),
                mean=d.get("mean", (0.0,)),
                std=d.get("std", (1.0,)),
                resize=d.get("resize", "shorter-side-crop"),
                resize_size=(
                    None
                    if d.get("resize_size") is None
                    else _integer(d["resize_size"], "resize_size")
                ),
                interpolation=d.get("interpolation", "bicubic"),
            )
        except KeyError as e:
            raise ConvlensError(f"input spec is missing {e.args[0]!r}") from None


def _index(value: Any) -> int | None:
    """``value`` as an int if it is an integer type (numpy's too), else None (bool is not)."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def _integer(value: Any, name: str) -> int:
    """A whole number from a spec file (``28`` or ``28.0``; not ``true``, ``"28"`` or NaN)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConvlensError(f"input spec {name} must be a whole number, got {value!r}")
    if isinstance(value, float) and not value.is_integer():
        raise ConvlensError(f"input spec {name} must be a whole number, got {value!r}")
    return int(value)


def _numbers(values: Any, name: str) -> tuple[float, ...]:
    """Numbers (not strings or booleans) as floats; a lone number counts as one value."""
    if isinstance(values, str):
        raise ConvlensError(f"input {name} must be a list of numbers, got {values!r}")
    if isinstance(values, numbers.Real) and not isinstance(values, bool):
        values = (values,)
    try:
        items = tuple(values)
    except TypeError:
        raise ConvlensError(f"input {name} must be a list of numbers, got {values!r}") from None
    if not items or not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in items):
        raise ConvlensError(f"input {name} must be a list of numbers, got {list(items)!r}")
    return tuple(float(v) for v in items)
