"""The model document (what the explainer shows before any image) and the image document.

>>> from convlens.model.zoo import build
>>> doc = model_document(build("tiny-vgg"))
>>> doc["graph"]["layers"][1]["name"], doc["limits"]["max_channels"], doc["samples"]
('conv_1_1', 64, [])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from convlens.model.core import Model
from convlens.trace.document import DEFAULT_BUDGET, default_caps
from convlens.trace.encode import png_data_url
from convlens.trace.explain import method_catalogue
from convlens.trace.schema import Limits

SAMPLE_PREFIX = "sample-"


@dataclass(frozen=True)
class SampleEntry:
    """A sample image known in advance, addressed by id only (never by path)."""

    id: str
    name: str
    path: Path
    label: int | None


def sample_entries(model: Model, extra: Sequence[Path] = ()) -> list[SampleEntry]:
    """The model's own samples, then the files ``extra``, numbered ``sample-0``, ..."""
    entries = [(s.path, s.label) for s in model.samples] + [(p, None) for p in extra]
    return [
        SampleEntry(f"{SAMPLE_PREFIX}{i}", path.name, path, label)
        for i, (path, label) in enumerate(entries)
    ]


def default_limits(model: Model, budget: int = DEFAULT_BUDGET) -> Limits:
    """The limits a default server reports for ``model`` (its trace caps fit ``budget``)."""
    channels, size = default_caps(model, budget)
    return Limits(max_channels=channels, max_size=size)


def model_document(
    model: Model,
    *,
    samples: Sequence[SampleEntry] | None = None,
    limits: Limits | None = None,
    scan: bool = False,
    sample_url: str = "/api/v1/samples/{id}.png",
) -> dict[str, Any]:
    """The model document (``GET /model``): classes, input spec, layer graph, samples,
    explanation methods and limits.

    ``samples`` default to the model's own; ``sample_url`` is where each is served (``{id}``
    filled in); ``limits`` to :func:`default_limits`; ``scan`` says whether unit documents
    carry data-set patches.
    """
    samples = sample_entries(model) if samples is None else samples
    limits = limits or default_limits(model)
    return {
        "name": model.name,
        "classes": model.classes,
        "input_spec": model.spec.to_dict(),
        "outputs": model.outputs,
        "graph": model.graph.to_dict(),
        "samples": [
            {
                "id": s.id,
                "name": s.name,
                "label": s.label,
                "label_name": model.classes[s.label] if s.label is not None else None,
                "url": sample_url.format(id=s.id),
            }
            for s in samples
        ],
        "capabilities": {"methods": method_catalogue(), "scan": scan, "featurevis": True},
        "limits": limits.model_dump(),
    }


def image_document(
    image_id: str, width: int, height: int, original: Image.Image, processed_url: str
) -> dict[str, Any]:
    """The document of an uploaded image (``POST /images``): its id, decoded size, a display
    copy and exactly what the model sees (``processed_url``, a PNG data URL)."""
    return {
        "image_id": image_id,
        "width": width,
        "height": height,
        "original": png_data_url(original),
        "processed": processed_url,
    }
