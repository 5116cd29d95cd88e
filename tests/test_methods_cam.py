"""CAM family against the published formulas written out, and Captum's Grad-CAM."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import convlens
from convlens.errors import ConvlensError, NotFoundError
from convlens.model import Model
from convlens.model.zoo import ResNet
from convlens.probe import capture
from tolerance import Tolerance

HAS_CAPTUM = importlib.util.find_spec("captum") is not None
needs_captum = pytest.mark.skipif(not HAS_CAPTUM, reason="captum is not installed (peers extra)")
HAS_GRADCAM = importlib.util.find_spec("pytorch_grad_cam") is not None
TOL: Tolerance = {"atol": 1e-5, "rtol": 1e-5}


def act_and_grad(
    model: Model, x: torch.Tensor, layer: str, target: list[int]
) -> tuple[np.ndarray, np.ndarray]:
    """A and dS/dA with the probe and plain autograd."""
    with capture(model, [layer]) as cap:
        out = model(x.clone().requires_grad_(True))
        a = cap[layer]
        (g,) = torch.autograd.grad(out[torch.arange(len(target)), target].sum(), a)
    return a.detach().numpy(), g.numpy()


def test_grad_cam_formula(small_resnet: Model) -> None:
    x = torch.rand(2, 3, 64, 64)
    a = convlens.explain(small_resnet, x, "grad-cam", target=[1, 6])
    assert a.layer == "layer4.1.relu2"
    A, G = act_and_grad(small_resnet, x, "layer4.1.relu2", [1, 6])
    alpha = G.mean(axis=(2, 3))  # (B, K)
    cam = np.maximum((alpha[:, :, None, None] * A).sum(1, keepdims=True), 0)
    torch.testing.assert_close(a.layer_values, torch.from_numpy(cam), **TOL)
    up = F.interpolate(torch.from_numpy(cam), size=(64, 64), mode="bilinear")
    torch.testing.assert_close(a.values, up, **TOL)


def test_grad_cam_plus_plus_and_layer_cam_formulas(tiny_vgg_rgb: Model) -> None:
    x = torch.rand(3, 3, 32, 32)
    t = [0, 5, 9]
    A, G = act_and_grad(tiny_vgg_rgb, x, "conv_2_2", t)
    pp = convlens.explain(tiny_vgg_rgb, x, "grad-cam++", target=t, layer="conv_2_2")
    g2, g3 = G**2, G**3
    aij = g2 / (2 * g2 + A.sum(axis=(2, 3), keepdims=True) * g3 + 1e-6)
    aij = np.where(G != 0, aij, 0)
    w = (np.maximum(G, 0) * aij).sum(axis=(2, 3))
    cam = np.maximum((w[:, :, None, None] * A).sum(1, keepdims=True), 0)
    torch.testing.assert_close(pp.layer_values, torch.from_numpy(cam), **TOL)
    lc = convlens.explain(tiny_vgg_rgb, x, "layer-cam", target=t, layer="conv_2_2")
    cam = np.maximum((np.maximum(G, 0) * A).sum(1, keepdims=True), 0)
    torch.testing.assert_close(lc.layer_values, torch.from_numpy(cam), **TOL)


def test_cam_is_classifier_weights_and_grad_cam_its_scaled_relu(small_resnet: Model) -> None:
    x = torch.rand(2, 3, 64, 64)
    cam = convlens.explain(small_resnet, x, "cam", target=[3, 4])
    A, _ = act_and_grad(small_resnet, x, "layer4.1.relu2", [3, 4])
    net = small_resnet.net
    assert isinstance(net, ResNet)
    W = net.fc.weight.detach().numpy()[[3, 4]]  # (B, K)
    expected = (W[:, :, None, None] * A).sum(1, keepdims=True)
    torch.testing.assert_close(cam.layer_values, torch.from_numpy(expected), **TOL)
    assert cam.signed
    # On a GAP head, dS/dA_k = W_ck / (hw): Grad-CAM = ReLU(CAM) / (hw).
    gc = convlens.explain(small_resnet, x, "grad-cam", target=[3, 4])
    hw = A.shape[2] * A.shape[3]
    assert cam.layer_values is not None
    torch.testing.assert_close(gc.layer_values, cam.layer_values.relu() / hw, **TOL)


def test_cam_needs_a_gap_head(tiny_vgg_rgb: Model) -> None:
    with pytest.raises(ConvlensError, match="global average pooling"):
        convlens.explain(tiny_vgg_rgb, torch.rand(1, 3, 32, 32), "cam")


def test_score_cam_loop(tiny_vgg_rgb: Model) -> None:
    x = torch.rand(2, 3, 32, 32)
    a = convlens.explain(tiny_vgg_rgb, x, "score-cam", target=[2, 7], chunk_size=7)
    A, _ = act_and_grad(tiny_vgg_rgb, x, "max_pool_2", [2, 7])
    cams = []
    for b, t in enumerate([2, 7]):
        weights = []
        for k in range(A.shape[1]):
            up = F.interpolate(torch.from_numpy(A[b : b + 1, k : k + 1]), size=(32, 32),
                               mode="bilinear")  # fmt: skip
            h = (up - up.min()) / (up.max() - up.min()) if up.max() > up.min() else up * 0
            with torch.no_grad():
                weights.append(float(tiny_vgg_rgb(x[b : b + 1] * h).softmax(1)[0, t]))
        cams.append(np.maximum((np.array(weights)[:, None, None] * A[b]).sum(0), 0))
    assert a.layer_values is not None
    torch.testing.assert_close(a.layer_values[:, 0], torch.from_numpy(np.stack(cams)).float(),
                               **TOL)  # fmt: skip


def test_functional_layer_via_the_traced_graph(functional_net: Model) -> None:
    x = torch.rand(2, 3, 16, 16)
    a = convlens.explain(functional_net, x, "grad-cam", target=[0, 1])
    assert a.layer == "relu_1"  # an F.relu without a module
    net = functional_net.net
    xr = functional_net.normalize(x)
    conv1, conv2, bn, pool, fc = (
        net.get_submodule(n) for n in ("conv1", "conv2", "bn", "pool", "fc")
    )
    h = torch.relu(conv1(xr))
    A = F.relu(bn(conv2(h)) + h)
    out = fc(torch.flatten(pool(A), 1))
    (G,) = torch.autograd.grad(out[[0, 1], [0, 1]].sum(), A)
    cam = (G.mean((2, 3))[:, :, None, None] * A).sum(1, keepdim=True).relu()
    torch.testing.assert_close(a.layer_values, cam.detach(), **TOL)


@needs_captum
def test_captum_grad_cam_at_a_residual_block(small_resnet: Model) -> None:
    from captum.attr import LayerGradCam

    m = small_resnet
    x = torch.rand(2, 3, 64, 64)
    a = convlens.explain(m, x, "grad-cam", target=[1, 2], layer="layer3.1.relu2")
    ref = LayerGradCam(m, m.net.get_submodule("layer3.1.relu2")).attribute(
        x.clone().requires_grad_(), target=[1, 2], relu_attributions=True
    )
    torch.testing.assert_close(a.layer_values, ref.detach(), **TOL)


def test_guided_grad_cam_is_guided_backprop_times_grad_cam(small_resnet: Model) -> None:
    x = torch.rand(2, 3, 64, 64)
    kw: dict[str, Any] = dict(target=[1, 2], layer="layer3.1.relu2")
    g = convlens.explain(small_resnet, x, "guided-grad-cam", **kw)
    gb = convlens.explain(small_resnet, x, "guided-backprop", target=[1, 2])
    gc = convlens.explain(small_resnet, x, "grad-cam", **kw)
    torch.testing.assert_close(g.values, gb.values * gc.values, **TOL)
    assert g.notes == gb.notes and "layer4.1.relu2" in g.notes[0]


@needs_captum
def test_captum_guided_grad_cam_on_tiny_vgg(tiny_vgg_rgb: Model) -> None:
    from captum.attr import GuidedGradCam

    m = tiny_vgg_rgb
    x = torch.rand(2, 3, 32, 32)
    g = convlens.explain(m, x, "guided-grad-cam", target=[1, 2], layer="conv_2_2",
                         interpolate="nearest")  # fmt: skip
    ggc = GuidedGradCam(m.net, m.net.conv_2_2)
    ref = ggc.attribute(m.normalize(x).requires_grad_(), target=[1, 2]) / m.std
    torch.testing.assert_close(g.values, ref.detach(), **TOL)


def test_cnn_explainer_grad_cam(cnn_explainer_dir: Path) -> None:
    m = convlens.load_model(str(cnn_explainer_dir / "model.json"))
    x = torch.cat([m.load_image(s.path) for s in m.samples[::5]])
    a = convlens.explain(m, x, "grad-cam")
    assert a.layer == "max_pool_2" and a.layer_values is not None
    A, G = act_and_grad(m, x, "max_pool_2", a.targets or [])
    cam = np.maximum((G.mean(axis=(2, 3))[:, :, None, None] * A).sum(1, keepdims=True), 0)
    torch.testing.assert_close(a.layer_values, torch.from_numpy(cam), **TOL)
    if HAS_CAPTUM:
        from captum.attr import LayerGradCam

        ref = LayerGradCam(m, m.net.get_submodule("conv_2_2")).attribute(
            x.clone().requires_grad_(), target=a.targets, relu_attributions=True
        )
        b = convlens.explain(m, x, "grad-cam", layer="conv_2_2")
        torch.testing.assert_close(b.layer_values, ref.detach(), **TOL)


@pytest.mark.skipif(
    not HAS_GRADCAM,
    reason="pytorch-grad-cam needs torchvision, which does not import beside this torch; "
    "run this file with .venv-peers/bin/python -m pytest to compare",
)
@pytest.mark.parametrize("name", ["grad-cam", "grad-cam++", "layer-cam"])
def test_pytorch_grad_cam_agrees(tiny_vgg_rgb: Model, name: str) -> None:  # pragma: no cover
    from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, LayerCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cls = {"grad-cam": GradCAM, "grad-cam++": GradCAMPlusPlus, "layer-cam": LayerCAM}[name]
    x = torch.rand(2, 3, 32, 32)
    a = convlens.explain(tiny_vgg_rgb, x, name, target=[1, 2], layer="conv_2_2")
    layer = tiny_vgg_rgb.net.conv_2_2
    targets = [ClassifierOutputTarget(1), ClassifierOutputTarget(2)]
    with cls(tiny_vgg_rgb, [layer]) as cam:
        cam(x, targets)  # keeps the activations and gradients it used
        acts = cam.activations_and_grads.activations[0].cpu().numpy()
        grads = cam.activations_and_grads.gradients[0].cpu().numpy()
        ref = np.maximum(cam.get_cam_image(x, layer, targets, acts, grads, False), 0)
    assert a.layer_values is not None
    np.testing.assert_allclose(a.layer_values[:, 0].numpy(), ref, atol=1e-5, rtol=1e-5)


def test_bad_layers(tiny_vgg_rgb: Model) -> None:
    x = torch.rand(1, 3, 32, 32)
    with pytest.raises(NotFoundError, match="conv_2_2"):
        convlens.explain(tiny_vgg_rgb, x, "grad-cam", layer="conv_2_3")
    with pytest.raises(ConvlensError, match="not a spatial"):
        convlens.explain(tiny_vgg_rgb, x, "grad-cam", layer="output")
    with pytest.raises(ConvlensError, match="takes no layer"):
        convlens.explain(tiny_vgg_rgb, x, "saliency", layer="conv_1_1")
