"""The input spec: what a model expects to be fed.

A :class:`convlens.model.Model` takes images as float tensors ``(B, C, H, W)`` with values in
``[0, 1]``; the spec's mean and std are applied inside the model. So attributions, feature
visualizations and adversarial budgets are all in plain pixel units.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from convlens.errors import ConvlensError

ResizePolicy = Literal["shorter-side-crop", "stretch"]
RESIZE_POLICIES: tuple[str, ...] = ("shorter-side-crop", "stretch")
Interpolation = Literal["bicubic", "bilinear"]
INTERPOLATIONS: tuple[str, ...] = ("bicubic", "bilinear")


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
        if self.channels not in (1, 3):
            raise ConvlensError(f"input channels must be 1 or 3, got {self.channels}")
        if self.height < 1 or self.width < 1:
            raise ConvlensError(f"input size must be positive, got {self.height}×{self.width}")
        for name in ("mean", "std"):
            value = tuple(float(v) for v in getattr(self, name))
            if len(value) == 1:
                value = value * self.channels
            if len(value) != self.channels:
                raise ConvlensError(
                    f"input {name} needs 1 or {self.channels} values, got {len(value)}"
                )
            object.__setattr__(self, name, value)
        if any(s <= 0 for s in self.std):
            raise ConvlensError(f"input std must be positive, got {self.std}")
        if self.resize not in RESIZE_POLICIES:
            raise ConvlensError(
                f"unknown resize policy {self.resize!r}; accepted: {', '.join(RESIZE_POLICIES)}"
            )
        if self.resize_size is not None and self.resize_size < 1:
            raise ConvlensError(f"resize_size must be positive or none, got {self.resize_size}")
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
                channels=int(d["channels"]),
                height=int(d["height"]),
                width=int(d["width"]),
                mean=tuple(d.get("mean", (0.0,))),
                std=tuple(d.get("std", (1.0,))),
                resize=d.get("resize", "shorter-side-crop"),
                resize_size=None if d.get("resize_size") is None else int(d["resize_size"]),
                interpolation=d.get("interpolation", "bicubic"),
            )
        except KeyError as e:
            raise ConvlensError(f"input spec is missing {e.args[0]!r}") from None
