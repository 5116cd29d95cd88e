"""The unit document: one channel of one layer, its filter, feature visualization and the
data-set patches that excite it most.

>>> from convlens.model.zoo import build
>>> doc = unit_document(build("tiny-vgg"), "conv_1_1", 4)
>>> doc["kernel"]["shape"], doc["featurevis"], doc["top_patches"]
([3, 3, 3], None, None)
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from convlens import featurevis
from convlens.analysis import ScanResult, load_scan
from convlens.analysis.patches import unit_patches
from convlens.analysis.scan import model_fingerprint
from convlens.data import ImageDataset, open_dataset
from convlens.errors import ConvlensError
from convlens.io.figure import upscale
from convlens.io.image import tensor_to_image
from convlens.model.core import Model
from convlens.trace.document import check_unit, kernel_of
from convlens.trace.encode import png_data_url

FEATUREVIS_SIDE = 128  # a feature visualization is upscaled (nearest) to at least this
PATCH_SIDE = 64  # a top patch likewise

Patches = tuple[list[Image.Image], list[dict[str, Any]]]


def render_unit(model: Model, layer: str, channel: int, steps: int = 128) -> Image.Image | None:
    """Activation maximization of one channel's mean (Olah et al., Distill 2017), or ``None``
    for a layer that cannot be optimized (the input)."""
    if model.graph[layer].kind == "input":
        return None
    try:
        result = featurevis.render(
            model, featurevis.channel(layer, [channel]), steps=steps, progress=False
        )
    except ConvlensError:
        return None
    return upscale(tensor_to_image(result.images[0]), FEATUREVIS_SIDE)


@dataclass
class ScanSource:
    """A scan folder opened once, with the data set its patches are cut from."""

    result: ScanResult
    dataset: ImageDataset | None  # None when it cannot be opened here (``problem`` says why)
    problem: str | None = None


def open_scan(scan_dir: Path, model: Model, dataset: str | None = None) -> ScanSource:
    """Load ``scan_dir`` (made by a scan of this very model) and reopen its data set.

    ``dataset`` overrides the data set recorded in the scan (a registered name or a folder):
    a folder data set records only its folder's name, so it must be given again.
    """
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
) -> Patches | None:
    """The receptive-field crops of the unit's top ``n`` data-set hits, with the hits; ``None``
    without a scan, its data set, or the layer in it."""
    if scan is None or scan.dataset is None or layer not in scan.result.state:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # whole-image "patches" of non-spatial layers
        crops, hits = unit_patches(scan.result, scan.dataset, model, layer, channel, n=n)
    images = [upscale(tensor_to_image(c), PATCH_SIDE) for c in crops]
    return images, [dataclasses.asdict(h) for h in hits]  # value, image, row, col


def unit_document(
    model: Model,
    layer: str,
    channel: int,
    *,
    featurevis_image: Image.Image | None = None,
    patches: Patches | None = None,
) -> dict[str, Any]:
    """The unit document (``GET /units/{layer}/{channel}``).

    The slow parts are given, so a caller decides what to compute and cache:
    ``featurevis_image`` from :func:`render_unit`, ``patches`` from :func:`top_patches`.
    """
    check_unit(model, layer, channel)
    return {
        "layer": layer,
        "channel": channel,
        "featurevis": png_data_url(featurevis_image) if featurevis_image is not None else None,
        "kernel": kernel_of(model, layer, channel),
        "top_patches": [png_data_url(p) for p in patches[0]] if patches else None,
        "top_hits": patches[1] if patches else None,
    }
