"""Unit report: planted dead and saturated units are found; statuses match the raw activations."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from convlens.analysis import scan
from convlens.analysis.report import report_figure, unit_report
from convlens.data import TensorImages
from convlens.model import Model
from convlens.probe import capture


@pytest.fixture
def planted(tiny_vgg: Model) -> Model:
    """Tiny VGG with unit 3 of conv_2_1 dead (weights 0, bias -1) and unit 5 always on."""
    model = copy.deepcopy(tiny_vgg)
    conv = model.layer("conv_2_1")
    assert isinstance(conv, nn.Conv2d) and conv.bias is not None
    with torch.no_grad():
        conv.weight[3].zero_()
        conv.bias[3] = -1.0
        conv.weight[5].zero_()
        conv.bias[5] = 1.0
    return model


@pytest.fixture
def data() -> TensorImages:
    g = torch.Generator().manual_seed(2)
    x = (torch.rand(24, 1, 28, 28, generator=g) * 255).to(torch.uint8)
    return TensorImages(x, torch.arange(24) % 2, ["a", "b"])


def test_planted_dead_unit_is_reported(planted: Model, data: TensorImages) -> None:
    res = scan(planted, data, ["relu_2_1", "output"], k=3, batch_size=10, progress=False)
    report = unit_report(res)
    by_unit = {(u.layer, u.unit): u for u in report.units}
    assert by_unit["relu_2_1", 3].status == "dead"
    assert by_unit["relu_2_1", 3].frac_images_firing == 0.0
    assert by_unit["relu_2_1", 5].status == "saturated"
    assert report.flagged()[0].status == "dead"  # ranked worst first
    assert {u.status for u in report.units if u.layer == "output"} == {"n/a"}
    relu = next(lay for lay in report.layers if lay.layer == "relu_2_1")
    assert relu.dead >= 1 and relu.saturated >= 1


def test_statuses_and_sparsity_match_raw_activations(planted: Model, data: TensorImages) -> None:
    res = scan(planted, data, ["relu_1_2"], k=2, progress=False)
    rare, always = 0.3, 0.9  # thresholds that put units in every class
    report = unit_report(res, rare=rare, always=always)
    x, _ = data.get(range(len(data)))
    with torch.inference_mode(), capture(planted, ["relu_1_2"]) as cap:
        planted(x)
    a = cap["relu_1_2"].numpy()  # (B, C, H, W)
    firing = (a.reshape(*a.shape[:2], -1).max(2) > 0).mean(0)
    positive = (a > 0).mean((0, 2, 3))
    for u in report.units:
        f, p = firing[u.unit], positive[u.unit]
        want = (
            "dead" if f == 0 else "nearly dead" if f < rare else "saturated" if p > always else "ok"
        )
        assert u.status == want
        assert u.frac_positive == pytest.approx(p)
    assert report.layers[0].sparsity == pytest.approx(float((a <= 0).mean()))


def test_report_figure(planted: Model, data: TensorImages, tmp_path: object) -> None:
    res = scan(planted, data, ["relu_1_1", "relu_2_1"], k=2, progress=False)
    fig = report_figure(unit_report(res))
    assert isinstance(fig, Image.Image) and fig.width >= 480 and fig.height > 300
    pixels = np.asarray(fig)
    assert (np.abs(pixels.astype(int) - (200, 40, 40)).sum(-1) == 0).any()  # a red (dead) bar
