"""Gradient attributions against autograd by hand, hand-written rules and Captum."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import convlens
from conftest import FunctionalNet
from convlens.io.spec import InputSpec
from convlens.methods.gradient import path_points
from convlens.model import Model
from tolerance import Tolerance

HAS_CAPTUM = importlib.util.find_spec("captum") is not None
needs_captum = pytest.mark.skipif(not HAS_CAPTUM, reason="captum is not installed (peers extra)")
TOL: Tolerance = {"atol": 1e-5, "rtol": 1e-5}
pytestmark = pytest.mark.filterwarnings("ignore:Setting backward hooks:UserWarning")


def by_hand(model: Model, x: torch.Tensor, target: list[int]) -> torch.Tensor:
    """dS/dx with plain autograd: S_b = logit of target[b]."""
    xr = x.clone().requires_grad_(True)
    out = model(xr)
    out[torch.arange(len(target)), torch.tensor(target)].sum().backward()
    assert xr.grad is not None
    return xr.grad


@pytest.fixture
def x_rgb() -> torch.Tensor:
    return torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def test_saliency_is_the_max_abs_gradient(tiny_vgg_rgb: Model, x_rgb: torch.Tensor) -> None:
    a = convlens.explain(tiny_vgg_rgb, x_rgb, "saliency", target=[1, 4, 7])
    g = by_hand(tiny_vgg_rgb, x_rgb, [1, 4, 7])
    assert a.values.shape == (3, 1, 32, 32)
    torch.testing.assert_close(a.values, g.abs().amax(1, keepdim=True), **TOL)
    signed = convlens.explain(tiny_vgg_rgb, x_rgb, "saliency", target=[1, 4, 7], reduce="signed")
    torch.testing.assert_close(signed.values, g, **TOL)
    assert signed.signed and not a.signed


def test_predicted_class_is_the_default_target(tiny_vgg_rgb: Model, x_rgb: torch.Tensor) -> None:
    a = convlens.explain(tiny_vgg_rgb, x_rgb, "saliency", reduce="signed")
    pred = tiny_vgg_rgb(x_rgb).argmax(1).tolist()
    assert a.targets == pred
    torch.testing.assert_close(a.values, by_hand(tiny_vgg_rgb, x_rgb, pred), **TOL)


def test_gradient_x_input(functional_net: Model) -> None:
    x = torch.rand(2, 3, 16, 16)
    a = convlens.explain(functional_net, x, "gradient-x-input", target=[0, 3])
    torch.testing.assert_close(a.values, x * by_hand(functional_net, x, [0, 3]), **TOL)


def test_integrated_gradients_by_hand_and_completeness(tiny_vgg: Model) -> None:
    x = torch.rand(2, 1, 28, 28)
    a = convlens.explain(
        tiny_vgg, x, "integrated-gradients", target=[2, 5], n_steps=8,
        integration="riemann_trapezoid", baseline="white", chunk_size=5,
    )  # fmt: skip
    ref = torch.ones_like(x)
    total = torch.zeros_like(x)
    for i, alpha in enumerate(torch.linspace(0, 1, 8)):
        w = (0.5 if i in (0, 7) else 1.0) / 7
        total += w * by_hand(tiny_vgg, ref + alpha * (x - ref), [2, 5])
    torch.testing.assert_close(a.values, total * (x - ref), **TOL)
    fine = convlens.explain(tiny_vgg, x, "integrated-gradients", target=[2, 5], n_steps=200)
    out, base = tiny_vgg(x), tiny_vgg(torch.zeros_like(x))
    expected = out[[0, 1], [2, 5]] - base[[0, 1], [2, 5]]
    torch.testing.assert_close(fine.values.flatten(1).sum(1), expected, atol=2e-3, rtol=1e-2)
    torch.testing.assert_close(fine.extra["delta"], fine.values.flatten(1).sum(1) - expected)


def test_path_points_integrate_polynomials_exactly() -> None:
    alphas, w = path_points(6, "gausslegendre")
    assert float((w * alphas**5).sum()) == pytest.approx(1 / 6, abs=1e-12)


def test_smoothgrad_matches_a_loop_over_noise_draws(tiny_vgg: Model) -> None:
    x = torch.rand(2, 1, 28, 28)
    for variant in ("mean", "squared"):
        a = convlens.explain(
            tiny_vgg, x, "smoothgrad", target=[1, 2], n_samples=5, noise=0.2, seed=3,
            variant=variant, chunk_size=4,
        )  # fmt: skip
        gen = torch.Generator().manual_seed(3)
        sigma = 0.2 * (x.flatten(1).amax(1) - x.flatten(1).amin(1)).view(-1, 1, 1, 1)
        total = torch.zeros_like(x)
        for _ in range(5):
            g = by_hand(tiny_vgg, x + torch.randn(x.shape, generator=gen) * sigma, [1, 2])
            total += g.square() if variant == "squared" else g
        torch.testing.assert_close(a.values, total / 5, **TOL)


class ModuleReluNet(nn.Module):
    """FunctionalNet of conftest with nn.ReLU modules instead of F.relu (same parameters)."""

    def __init__(self, f: FunctionalNet) -> None:
        super().__init__()
        self.f = f
        self.r1, self.r2 = nn.ReLU(), nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.f
        h = self.r1(f.conv1(x))
        h = self.r2(f.bn(f.conv2(h)) + h)
        return f.fc(torch.flatten(f.pool(h), 1))


@needs_captum
@pytest.mark.parametrize("method", ["guided-backprop", "deconvnet"])
def test_rules_reach_functional_relus(functional_net: Model, method: str) -> None:
    from captum.attr import Deconvolution, GuidedBackprop

    x = torch.rand(2, 3, 16, 16)
    a = convlens.explain(functional_net, x, method, target=[1, 2])
    net = functional_net.net
    assert isinstance(net, FunctionalNet)
    peer_model = ModuleReluNet(net).eval()
    cls = GuidedBackprop if method == "guided-backprop" else Deconvolution
    xn = functional_net.normalize(x)  # captum sees the network without the normalization
    ref = cls(peer_model).attribute(xn.requires_grad_(), target=[1, 2])
    torch.testing.assert_close(a.values, ref / functional_net.std, **TOL)
    assert "relu (functional) ×2" in a.notes[0]
    plain = by_hand(functional_net, x, [1, 2])
    assert not torch.allclose(a.values, plain, atol=1e-4)  # the rule really changed something


class GeluNet(nn.Module):
    def __init__(self, act: nn.Module) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.act = act
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.act(self.conv(x)).mean((2, 3)))


@pytest.mark.parametrize("act", [nn.GELU(), nn.SiLU(), nn.LeakyReLU(0.1), nn.ReLU6()])
def test_guided_rule_on_relu_like_activations(act: nn.Module) -> None:
    torch.manual_seed(0)
    model = Model(GeluNet(act).eval(), InputSpec(1, 8, 8), name="gelu")
    x = torch.rand(1, 1, 8, 8)
    a = convlens.explain(model, x, "guided-backprop", target=2)
    # By hand: R = max(f'(z) · max(g, 0), 0) at the activation, then the conv's transpose.
    net = model.net
    assert isinstance(net, GeluNet)
    xr = x.clone().requires_grad_(True)
    z = net.conv(model.normalize(xr))
    g = (net.fc.weight[2] / 36).view(1, 4, 1, 1).expand_as(z)
    zz = z.detach().requires_grad_(True)
    (local,) = torch.autograd.grad(act(zz), zz, g.clamp(min=0))
    (expected,) = torch.autograd.grad(z, xr, local.clamp(min=0))
    torch.testing.assert_close(a.values, expected, **TOL)
    assert "act" in a.notes[0]


def test_non_relu_activations_are_reported_unchanged() -> None:
    model = Model(GeluNet(nn.Sigmoid()).eval(), InputSpec(1, 8, 8))
    x = torch.rand(1, 1, 8, 8)
    a = convlens.explain(model, x, "guided-backprop", target=0)
    assert "no ReLU-like" in a.notes[0] and "act" in a.notes[1]
    torch.testing.assert_close(a.values, by_hand(model, x, [0]), **TOL)


def test_in_place_relus_keep_forward_values(small_resnet: Model) -> None:
    x = torch.rand(2, 3, 64, 64)
    expected = small_resnet(x)
    from convlens.methods.rules import backward_rule

    with backward_rule(small_resnet, "guided"):
        out = small_resnet(x.requires_grad_())
    torch.testing.assert_close(out, expected)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in small_resnet.modules())


@needs_captum
def test_peers_agree_on_tiny_vgg(tiny_vgg_rgb: Model, x_rgb: torch.Tensor) -> None:
    from captum.attr import (
        Deconvolution,
        GuidedBackprop,
        InputXGradient,
        IntegratedGradients,
        Saliency,
    )

    t = [0, 3, 9]
    m = tiny_vgg_rgb
    x = x_rgb.clone().requires_grad_()
    pairs = [
        ("saliency", {"reduce": "abs"}, Saliency(m).attribute(x, target=t)),
        ("gradient-x-input", {}, InputXGradient(m).attribute(x, target=t)),
        ("guided-backprop", {}, GuidedBackprop(m.net).attribute(m.normalize(x), target=t) / m.std),
        ("deconvnet", {}, Deconvolution(m.net).attribute(m.normalize(x), target=t) / m.std),
    ]
    for method, params, ref in pairs:
        a = convlens.explain(m, x_rgb, method, target=t, **params)
        torch.testing.assert_close(a.values, ref.detach(), **TOL, msg=method)
    ig, delta = IntegratedGradients(m).attribute(
        x, target=t, n_steps=20, return_convergence_delta=True
    )
    a = convlens.explain(m, x_rgb, "integrated-gradients", target=t, n_steps=20)
    torch.testing.assert_close(a.values, ig.detach(), **TOL)
    torch.testing.assert_close(a.extra["delta"], delta.float(), atol=1e-4, rtol=1e-4)


def test_cnn_explainer_guided_backprop_vs_captum(cnn_explainer_dir: Path) -> None:
    if not HAS_CAPTUM:
        pytest.skip("captum is not installed (peers extra)")
    from captum.attr import GuidedBackprop, IntegratedGradients

    m = convlens.load_model(str(cnn_explainer_dir / "model.json"))
    x = torch.cat([m.load_image(s.path) for s in m.samples[:4]])
    a = convlens.explain(m, x, "guided-backprop")
    ref = GuidedBackprop(m.net).attribute(m.normalize(x).requires_grad_(), target=a.targets)
    torch.testing.assert_close(a.values, ref / m.std, **TOL)
    ig = IntegratedGradients(m).attribute(x.clone().requires_grad_(), target=a.targets)
    b = convlens.explain(m, x, "integrated-gradients")
    torch.testing.assert_close(b.values, ig.detach(), **TOL)
    assert [m.samples[i].label for i in range(4)] == a.targets  # it is a trained model


def test_leaky_relu_functional_call_changes_gradients() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 3, 3)
            self.fc = nn.Linear(3, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(F.leaky_relu(self.conv(x), 0.2).mean((2, 3)))

    torch.manual_seed(0)
    model = Model(Net().eval(), InputSpec(1, 6, 6))
    a = convlens.explain(model, torch.rand(1, 1, 6, 6), "deconvnet", target=0)
    assert "leaky_relu (functional)" in a.notes[0]


class ClippedNet(nn.Module):
    """A ReLU6 module and a functional hardtanh (both in place or both not) whose inputs cross
    both bounds: the guided rule's mask shortcut (``lo < x < hi``) must give what the rule
    computed through each activation's own derivative gives."""

    def __init__(self, inplace: bool) -> None:
        super().__init__()
        self.inplace = inplace
        self.conv1 = nn.Conv2d(1, 4, 3)
        self.act1 = nn.ReLU6(inplace=inplace)
        self.conv2 = nn.Conv2d(4, 4, 1)
        self.fc = nn.Linear(4, 3)
        with torch.no_grad():
            self.conv1.weight.mul_(30.0)  # spreads conv1's outputs well past 0 and 6

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act1(self.conv1(x))
        h = F.hardtanh(self.conv2(h), -0.5, 0.5, inplace=self.inplace)
        return self.fc(h.mean((2, 3)))


@pytest.mark.parametrize("inplace", [True, False])
def test_guided_mask_shortcut_on_clipped_activations(inplace: bool) -> None:
    torch.manual_seed(0)
    model = Model(ClippedNet(inplace).eval(), InputSpec(1, 10, 10), name="clipped")
    x = torch.rand(2, 1, 10, 10)
    a = convlens.explain(model, x, "guided-backprop", target=[0, 2])
    # By hand, layer by layer: R = max(f'(z) · max(g, 0), 0), f' from autograd of f itself.
    net = model.net
    assert isinstance(net, ClippedNet)
    xr = x.clone().requires_grad_(True)
    z1 = net.conv1(model.normalize(xr))
    a1 = F.relu6(z1)
    z2 = net.conv2(a1)
    a2 = F.hardtanh(z2, -0.5, 0.5)
    for z, lo, hi in ((z1, 0.0, 6.0), (z2, -0.5, 0.5)):  # both bounds are really crossed
        assert (z <= lo).any() and (z >= hi).any() and ((z > lo) & (z < hi)).any()
    score = net.fc(a2.mean((2, 3)))[[0, 1], [0, 2]].sum()

    def rule(
        f: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor, g: torch.Tensor
    ) -> torch.Tensor:
        zz = z.detach().requires_grad_(True)
        (local,) = torch.autograd.grad(f(zz), zz, g.clamp(min=0))
        return local.clamp(min=0)

    (g2,) = torch.autograd.grad(score, a2, retain_graph=True)
    (g1,) = torch.autograd.grad(z2, a1, rule(lambda t: F.hardtanh(t, -0.5, 0.5), z2, g2))
    (expected,) = torch.autograd.grad(z1, xr, rule(F.relu6, z1, g1))
    torch.testing.assert_close(a.values, expected, **TOL)
    assert "act1" in a.notes[0] and "hardtanh (functional)" in a.notes[0]
    from convlens.methods.rules import backward_rule

    with backward_rule(model, "guided"):
        out = model(x.clone().requires_grad_())
    torch.testing.assert_close(out, model(x))  # the in-place calls keep their forward values
