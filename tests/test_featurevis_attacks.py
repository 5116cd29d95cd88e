"""Inversion (Mahendran & Vedaldi) and adversarial examples (FGSM, PGD)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from convlens.errors import ConvlensError, NotFoundError
from convlens.featurevis.adversarial import Norm, amplify, fgsm, pgd
from convlens.featurevis.inversion import correlation, inversion_figure, invert, invert_layers
from convlens.model import Model, load_model


def _shape_image() -> torch.Tensor:
    """A bright ellipse with a darker band on black, like a Fashion-MNIST garment."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 28), torch.linspace(-1, 1, 28), indexing="ij")
    img = ((xx / 0.6) ** 2 + (yy / 0.85) ** 2 < 1).float() * 0.9
    img[(yy > -0.1) & (yy < 0.15)] *= 0.4
    return img[None, None]


@pytest.fixture(scope="module")
def demo() -> Model:
    try:
        return load_model("demo").eval()
    except ConvlensError as e:
        pytest.skip(f"demo weights absent: {e}")


# ---------------------------------------------------------------- inversion


def test_inversion_loss_falls_and_shallow_layers_reconstruct_better(tiny_vgg: Model) -> None:
    x = _shape_image()
    results = invert_layers(tiny_vgg, x, ["conv_1_1", "output"], steps=60, lr=0.1, tv=0.05)
    for r in results:
        assert r.images.shape == x.shape and r.images.min() >= 0 and r.images.max() <= 1
        assert r.losses[-1] < 0.5 * r.losses[0], (r.layer, r.losses[0], r.losses[-1])
    shallow, deep = (float(correlation(r.images, x)[0]) for r in results)
    assert shallow > 0.8 and shallow > deep + 0.2, (shallow, deep)
    fig = inversion_figure(x, results, cell_size=64)
    assert fig.width >= 3 * 64


def test_correlation_matches_numpy() -> None:
    a, b = torch.rand(2, 1, 5, 5), torch.rand(2, 1, 5, 5)
    import numpy as np

    expected = [np.corrcoef(a[i].ravel(), b[i].ravel())[0, 1] for i in range(2)]
    torch.testing.assert_close(correlation(a, b), torch.tensor(expected, dtype=torch.float32))


def test_inversion_bad_input(tiny_vgg: Model) -> None:
    with pytest.raises(NotFoundError, match="unknown layer"):
        invert(tiny_vgg, torch.rand(1, 1, 28, 28), "conv_7")
    with pytest.raises(ConvlensError, match=">= 0"):
        invert(tiny_vgg, torch.rand(1, 1, 28, 28), "conv_1_1", tv=-1)
    with pytest.raises(ConvlensError, match="shape"):
        invert(tiny_vgg, torch.rand(1, 3, 28, 28), "conv_1_1")


# ---------------------------------------------------------------- FGSM


def test_fgsm_matches_hand_step_stays_in_budget_and_lowers_true_class(tiny_vgg: Model) -> None:
    torch.manual_seed(0)
    x = torch.rand(6, 1, 28, 28)
    y = tiny_vgg.probabilities(x).argmax(1)
    eps = 0.03
    r = fgsm(tiny_vgg, x, eps, labels=y)
    xg = x.clone().requires_grad_(True)
    F.cross_entropy(tiny_vgg(xg), y, reduction="sum").backward()
    assert xg.grad is not None
    torch.testing.assert_close(r.adversarial, (x + eps * xg.grad.sign()).clamp(0, 1))
    assert float(r.perturbation.abs().max()) <= eps + 1e-6
    idx = torch.arange(6)
    assert (r.after[idx, y] < r.before[idx, y]).all()
    assert torch.equal(r.original, x)  # the caller's tensor is not modified


def test_fgsm_targeted_raises_the_target(tiny_vgg: Model) -> None:
    x = torch.rand(4, 1, 28, 28)
    r = fgsm(tiny_vgg, x, 0.05, target=3)
    assert (r.after[:, 3] > r.before[:, 3]).all()
    assert r.target is not None and r.target.tolist() == [3, 3, 3, 3]


def test_budget_below_zero_and_bad_options_raise(tiny_vgg: Model) -> None:
    x = torch.rand(1, 1, 28, 28)
    for eps in (-0.1, float("nan")):
        with pytest.raises(ConvlensError, match="eps must be >= 0"):
            fgsm(tiny_vgg, x, eps)
        with pytest.raises(ConvlensError, match="eps must be >= 0"):
            pgd(tiny_vgg, x, eps)
    with pytest.raises(ConvlensError, match="linf, l2"):
        pgd(tiny_vgg, x, 0.1, norm="l1")  # type: ignore[arg-type]  # refused at run time
    with pytest.raises(ConvlensError, match="out of range"):
        fgsm(tiny_vgg, x, 0.1, target=11)
    with pytest.raises(ConvlensError, match=r"\[0, 1\]"):
        fgsm(tiny_vgg, x * 3, 0.1)


# ---------------------------------------------------------------- PGD


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_respects_the_budget_and_beats_fgsm(tiny_vgg: Model, norm: Norm) -> None:
    torch.manual_seed(1)
    x = torch.rand(6, 1, 28, 28)
    eps = 0.02 if norm == "linf" else 0.5
    r = pgd(tiny_vgg, x, eps, norm=norm, steps=10)
    d = r.perturbation.flatten(1)
    size = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
    assert (size <= eps + 1e-5).all()
    assert r.adversarial.min() >= 0 and r.adversarial.max() <= 1
    idx = torch.arange(6)
    assert (r.after[idx, r.labels] < r.before[idx, r.labels]).all()
    if norm == "linf":
        f = fgsm(tiny_vgg, x, eps)
        assert float(r.after[idx, r.labels].mean()) <= float(f.after[idx, r.labels].mean())


def test_pgd_targeted_reaches_the_target(tiny_vgg: Model) -> None:
    x = torch.rand(4, 1, 28, 28)
    r = pgd(tiny_vgg, x, 0.1, steps=10, target=5)
    f = fgsm(tiny_vgg, x, 0.1, target=5)
    assert (r.after[:, 5] > r.before[:, 5]).all()
    assert float(r.after[:, 5].mean()) >= float(f.after[:, 5].mean())


def test_amplify_maps_zero_to_gray_and_peak_to_the_ends() -> None:
    d = torch.tensor([[[[0.0, 0.01], [-0.02, 0.005]]]])
    a = amplify(d)
    torch.testing.assert_close(a, torch.tensor([[[[0.5, 0.75], [0.0, 0.625]]]]))


def test_pgd_flips_most_demo_samples_at_a_small_budget(demo: Model) -> None:
    if not demo.samples:
        pytest.skip("the demo model has no sample images")
    x = torch.cat([demo.load_image(s.path) for s in demo.samples])
    labels = [s.label if s.label is not None else -1 for s in demo.samples]
    keep = [i for i, lab in enumerate(labels) if lab >= 0]
    r = pgd(demo, x[keep], 8 / 255, steps=20, labels=[labels[i] for i in keep])
    right = r.pred_before == r.labels  # count flips only where the model was right to begin with
    assert int(right.sum()) >= 10
    assert float(r.success[right].float().mean()) >= 0.7, r.pred_after
    assert float(r.perturbation.abs().max()) <= 8 / 255 + 1e-6
    fig = r.figure(demo.classes, cell_size=48)
    assert fig.height > 48 * len(keep)


def test_fgsm_on_demo_lowers_the_true_class_within_budget(demo: Model) -> None:
    if not demo.samples:
        pytest.skip("the demo model has no sample images")
    keep = [s for s in demo.samples if s.label is not None]
    x = torch.cat([demo.load_image(s.path) for s in keep])
    y = torch.tensor([s.label for s in keep])
    r = fgsm(demo, x, 4 / 255, labels=y)
    assert float(r.perturbation.abs().max()) <= 4 / 255 + 1e-6
    idx = torch.arange(len(keep))
    assert (r.after[idx, y] <= r.before[idx, y] + 1e-6).all()
    assert float((r.after[idx, y] < r.before[idx, y]).float().mean()) >= 0.9
