"""Adapters to the optional parts the web API shows: explanations, feature visualization, scans.

Each is imported lazily; when a part is missing from this build the API says so (``503`` for
``/explain``, ``null`` fields for ``/units``) instead of failing to start.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from convlens.model.core import Model


class UnavailableError(Exception):
    """An optional part of convlens is not installed or not yet built."""


@dataclass(frozen=True)
class Explanation:
    map: torch.Tensor  # (H, W) at the input resolution
    signed: bool
    layer: str | None
    target: int


def method_catalogue() -> list[dict[str, Any]]:
    """The explanation methods with their parameters, or ``[]`` when there are none."""
    return []


def explain(
    model: Model,
    x: torch.Tensor,
    method: str,
    target: int,
    layer: str | None,
    params: dict[str, Any],
) -> Explanation:
    raise UnavailableError("explanations not available: the convlens.methods package is not built")


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
