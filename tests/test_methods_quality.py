"""Quality checks: the randomization sanity check and deletion/insertion curves, by hand."""

from __future__ import annotations

import copy
import importlib.util

import numpy as np
import pytest
import torch
from torch import nn

import convlens
from convlens.methods.curves import deletion_insertion, gaussian_blur
from convlens.methods.sanity import randomization_check, spearman
from convlens.model import Model


@pytest.mark.skipif(importlib.util.find_spec("scipy") is None, reason="scipy is not installed")
def test_spearman_matches_scipy() -> None:
    from scipy.stats import spearmanr

    a = torch.rand(3, 50)
    b = a + 0.3 * torch.rand(3, 50)
    b[:, :10] = 0  # ties, as in ReLU'd CAM maps
    ours = spearman(a, b)
    for i in range(3):
        assert float(ours[i]) == pytest.approx(spearmanr(a[i], b[i]).statistic, abs=1e-6)


def test_cascading_randomization(tiny_vgg_rgb: Model) -> None:
    x = torch.rand(2, 3, 32, 32)
    before = {k: v.clone() for k, v in tiny_vgg_rgb.state_dict().items()}
    r = randomization_check(tiny_vgg_rgb, x, "saliency", seed=5)
    assert r.layers == ["output", "conv_2_2", "conv_2_1", "conv_1_2", "conv_1_1"]
    assert all(torch.equal(v, tiny_vgg_rgb.state_dict()[k]) for k, v in before.items())
    # Step 1 by hand: re-initialize the classifier with seed 5 and explain the same classes.
    original = convlens.explain(tiny_vgg_rgb, x, "saliency")
    victim = copy.deepcopy(tiny_vgg_rgb)
    torch.manual_seed(5)
    head = victim.net.get_submodule("output")
    assert isinstance(head, nn.Linear)
    head.reset_parameters()
    step1 = convlens.explain(victim, x, "saliency", target=original.targets)
    torch.testing.assert_close(r.maps[1], step1.heat())
    torch.testing.assert_close(r.spearman_abs[0], spearman(original.heat(), step1.heat()))
    assert r.spearman_abs.shape == (5, 2) and (r.spearman_abs[-1].abs() < 0.9).all()


def test_deletion_and_insertion_by_hand(tiny_vgg: Model) -> None:
    x = torch.rand(2, 1, 28, 28)
    attr = convlens.explain(tiny_vgg, x, "saliency")
    assert attr.targets is not None
    c = deletion_insertion(tiny_vgg, x, attr, steps=4, chunk_size=3)
    heat = attr.heat().reshape(2, -1)
    blurred = gaussian_blur(x, 28 / 16)
    for b in range(2):
        order = torch.argsort(heat[b], descending=True, stable=True)
        for s, k in enumerate([0, 196, 392, 588, 784]):
            mask = torch.zeros(784, dtype=torch.bool)
            mask[order[:k]] = True
            mask = mask.view(1, 1, 28, 28)
            deleted = torch.where(mask, torch.zeros_like(x[b]), x[b])
            inserted = torch.where(mask, x[b], blurred[b])
            with torch.no_grad():
                t = attr.targets[b]
                p_del = tiny_vgg(deleted).softmax(1)[0, t]
                p_ins = tiny_vgg(inserted).softmax(1)[0, t]
            assert float(c.deletion[b, s]) == pytest.approx(float(p_del), abs=1e-5)
            assert float(c.insertion[b, s]) == pytest.approx(float(p_ins), abs=1e-5)
        auc = np.trapezoid(c.deletion[b].numpy(), np.linspace(0, 1, 5))
        assert float(c.deletion_auc[b]) == pytest.approx(float(auc), abs=1e-5)


def test_gaussian_blur_keeps_constants_and_sums() -> None:
    x = torch.full((1, 3, 12, 12), 0.3)
    torch.testing.assert_close(gaussian_blur(x, 2.0), x)
    impulse = torch.zeros(1, 1, 21, 21)
    impulse[0, 0, 10, 10] = 1
    assert float(gaussian_blur(impulse, 1.5).sum()) == pytest.approx(1.0, abs=1e-5)
