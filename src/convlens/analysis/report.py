"""Unit report: dead, nearly-dead and saturated units and each layer's sparsity, from a scan.

A unit's statistics over the data set decide its status:

* **dead**: never above zero on any image (``fired = 0``): with a ReLU after it, it passes
  no signal and gets no gradient ("dying ReLU", Lu et al., 2019);
* **nearly dead**: above zero on fewer than ``rare`` of the images (default 1 %);
* **saturated**: above zero at more than ``always`` of all positions (default 99 %): always
  on, so the ReLU after it is the identity and the unit carries no selectivity;
* otherwise **ok**.

Units of linear and softmax layers (class scores) get ``n/a``: being below zero is normal there.

A layer's sparsity is the fraction of its activations at or below zero,
``1 - Σ_c positive_c / (C · N · H · W)``.

>>> # report = unit_report(scan_result); print(report.rows[0])
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from PIL import Image

from convlens.analysis.scan import ScanResult
from convlens.io.color import category_colors
from convlens.io.figure import bars, caption, hbars, hstack, text_size, vstack

STATUSES = ("dead", "nearly dead", "saturated", "ok", "n/a")
UNCLASSIFIED_KINDS = frozenset({"linear", "softmax"})
STATUS_COLORS = {
    "dead": (200, 40, 40),
    "nearly dead": (240, 150, 40),
    "saturated": (90, 90, 200),
    "ok": (150, 170, 150),
    "n/a": (200, 200, 200),
}


@dataclass(frozen=True)
class UnitRow:
    layer: str
    unit: int
    status: str
    frac_images_firing: float  # images where the unit is above zero somewhere
    frac_positive: float  # positions above zero
    mean: float
    max: float


@dataclass(frozen=True)
class LayerRow:
    layer: str
    units: int
    dead: int
    nearly_dead: int
    saturated: int
    sparsity: float  # fraction of activations at or below zero


@dataclass(frozen=True)
class UnitReport:
    """Units ranked worst first (dead, nearly dead by firing rate, saturated), and layers."""

    units: list[UnitRow]
    layers: list[LayerRow]
    n_images: int

    def flagged(self) -> list[UnitRow]:
        return [u for u in self.units if u.status != "ok"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_images": self.n_images,
            "layers": [asdict(r) for r in self.layers],
            "units": [asdict(r) for r in self.units],
        }


def _status(firing: float, positive: float, rare: float, always: float) -> str:
    if firing <= 0.0:
        return "dead"
    if firing < rare:
        return "nearly dead"
    if positive > always:
        return "saturated"
    return "ok"


def unit_report(result: ScanResult, rare: float = 0.01, always: float = 0.99) -> UnitReport:
    """Classify every scanned unit and summarise every layer (see the module docstring)."""
    units: list[UnitRow] = []
    layers: list[LayerRow] = []
    for name in result.layers:
        st = result.stats(name)
        classify = result.meta.layers.get(name, {}).get("kind") not in UNCLASSIFIED_KINDS
        firing = (1.0 - st["frac_silent"]).tolist()
        positive = st["frac_positive"].tolist()
        rows = [
            UnitRow(name, c, _status(f, p, rare, always) if classify else "n/a", f, p, m, mx)
            for c, (f, p, m, mx) in enumerate(
                zip(firing, positive, st["mean"].tolist(), st["max"].tolist(), strict=True)
            )
        ]
        units.extend(rows)
        count = {s: sum(r.status == s for r in rows) for s in STATUSES}
        layers.append(
            LayerRow(
                name,
                len(rows),
                count["dead"],
                count["nearly dead"],
                count["saturated"],
                1.0 - sum(positive) / max(len(positive), 1),
            )
        )
    rank = {s: i for i, s in enumerate(STATUSES)}
    units.sort(key=lambda r: (rank[r.status], r.frac_images_firing, -r.frac_positive))
    n_images = max((lay.n_images for lay in result.state.values()), default=0)
    return UnitReport(units, layers, n_images)


def report_figure(report: UnitReport, width: int = 480) -> Image.Image:
    """Per layer, each unit's fraction of positions above zero, coloured by its status; then
    each layer's sparsity."""
    panels = []
    for lay in report.layers:
        rows = sorted((u for u in report.units if u.layer == lay.layer), key=lambda u: u.unit)
        counts = ", ".join(
            f"{n} {what}"
            for n, what in (
                (lay.dead, "dead"),
                (lay.nearly_dead, "nearly dead"),
                (lay.saturated, "saturated"),
            )
            if n
        )
        panels.append(
            bars(
                [u.frac_positive for u in rows],
                [STATUS_COLORS[u.status] for u in rows],
                title=f"{lay.layer} ({lay.units} units{': ' + counts if counts else ''})",
                bar_width=max(2, min(24, (width - 40) // max(len(rows), 1) - 1)),
                height=90,
                min_width=width,
                labels=[str(u.unit) for u in rows],
            )
        )
    sparsity = hbars(
        [lay.layer for lay in report.layers],
        [lay.sparsity for lay in report.layers],
        category_colors(len(report.layers)),
        title="sparsity: fraction of activations at or below zero",
    )
    legend = hstack(
        [_swatch(s) for s in STATUSES if any(u.status == s for u in report.units)], gap=14
    )
    title = (
        f"Unit report over {report.n_images:,} images. Bars: fraction of positions where "
        "each unit is above zero, unit by unit"
    )
    body = vstack([legend, *panels, sparsity], gap=16)
    return caption(body, title, size=14)


def _swatch(status: str) -> Image.Image:
    box = Image.new("RGB", (12, 12), STATUS_COLORS[status])
    label = caption(Image.new("RGB", (text_size(status, 12)[0] + 4, 1), (255, 255, 255)), status)
    return hstack([box, label], gap=4)
