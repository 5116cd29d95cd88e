"""Occlusion against a hand-written loop over windows, and Captum's Occlusion."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
import torch

import convlens
from convlens.errors import ConvlensError
from convlens.model import Model
from tolerance import Tolerance

HAS_CAPTUM = importlib.util.find_spec("captum") is not None
TOL: Tolerance = {"atol": 1e-5, "rtol": 1e-5}


def loop(
    model: Model, x: torch.Tensor, t: list[int], k: int, s: int, fill: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward pass per window, the naive way: drops in logit and probability."""
    B, _, H, W = x.shape
    rows = list(range(0, H - k + 1, s))
    cols = list(range(0, W - k + 1, s))
    idx = torch.arange(B), torch.tensor(t)
    with torch.no_grad():
        base = model(x)
        logit = torch.zeros(B, len(rows), len(cols))
        prob = torch.zeros_like(logit)
        for i, r in enumerate(rows):
            for j, c in enumerate(cols):
                xo = x.clone()
                xo[:, :, r : r + k, c : c + k] = fill
                o = model(xo)
                logit[:, i, j] = base[idx] - o[idx]
                prob[:, i, j] = base.softmax(1)[idx] - o.softmax(1)[idx]
    return logit, prob


def test_matches_a_loop_over_windows(tiny_vgg: Model) -> None:
    x = torch.rand(3, 1, 28, 28)
    t = [1, 2, 3]
    a = convlens.explain(tiny_vgg, x, "occlusion", target=t, window=6, stride=3, fill=0.25,
                         chunk_size=17)  # fmt: skip
    logit, prob = loop(tiny_vgg, x, t, 6, 3, 0.25)
    torch.testing.assert_close(a.extra["grid_logit"], logit, **TOL)
    torch.testing.assert_close(a.extra["grid_probability"], prob, **TOL)
    # Pixel map: the mean drop of the windows covering each pixel (here the top-left corner is
    # covered by window (0, 0) only, pixel (3, 3) by windows (0, 0) and (1, 1) among others).
    assert float(a.values[0, 0, 0, 0]) == pytest.approx(float(prob[0, 0, 0]), abs=1e-6)
    assert float(a.values[1, 0, 3, 3]) == pytest.approx(float(prob[1, :2, :2].mean()), abs=1e-6)


def test_chunk_size_and_channels_last_do_not_change_the_result(small_resnet: Model) -> None:
    x = torch.rand(2, 3, 64, 64)
    kw: dict[str, Any] = dict(target=[0, 1], window=32, stride=32)
    a = convlens.explain(small_resnet, x, "occlusion", chunk_size=1000, **kw)
    b = convlens.explain(small_resnet, x, "occlusion", chunk_size=5, channels_last=True, **kw)
    torch.testing.assert_close(a.values, b.values, **TOL)
    assert a.extra["grid_logit"].shape == (2, 2, 2)


@pytest.mark.skipif(not HAS_CAPTUM, reason="captum is not installed (peers extra)")
def test_captum_occlusion(tiny_vgg_rgb: Model) -> None:
    from captum.attr import Occlusion

    torch.manual_seed(0)  # a fixed input: a tie between logits must not decide the tolerance
    x = torch.rand(2, 3, 32, 32)
    a = convlens.explain(tiny_vgg_rgb, x, "occlusion", target=[4, 5], window=8, stride=6,
                         fill=0.5, measure="logit")  # fmt: skip
    ref = Occlusion(tiny_vgg_rgb).attribute(
        x,
        sliding_window_shapes=(3, 8, 8),
        strides=(3, 6, 6),
        baselines=0.5,
        target=[4, 5],
        perturbations_per_eval=16,
    )
    torch.testing.assert_close(a.values.expand_as(ref), ref, **TOL)


def test_cnn_explainer_occlusion(cnn_explainer_dir: Path) -> None:
    m = convlens.load_model(str(cnn_explainer_dir / "model.json"))
    x = torch.cat([m.load_image(s.path) for s in m.samples[:2]])
    a = convlens.explain(m, x, "occlusion", window=16, stride=16, fill=0.0)
    _, prob = loop(m, x, a.targets or [], 16, 16, 0.0)
    torch.testing.assert_close(a.extra["grid_probability"], prob, **TOL)
    torch.testing.assert_close(a.values[:, 0, ::16, ::16], prob, **TOL)  # windows tile exactly


def test_bad_windows(tiny_vgg: Model) -> None:
    x = torch.rand(1, 1, 28, 28)
    with pytest.raises(ConvlensError, match="larger than the image 28×28"):
        convlens.explain(tiny_vgg, x, "occlusion", window=30)
    with pytest.raises(ConvlensError, match="window must be a positive int"):
        convlens.explain(tiny_vgg, x, "occlusion", window=0)
    with pytest.raises(ConvlensError, match="fill needs 1 or 1 values"):
        convlens.explain(tiny_vgg, x, "occlusion", fill=[0.1, 0.2])


def _strided_chain() -> Model:
    from torch import nn

    from convlens.io.spec import InputSpec

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 6, 5, stride=2, padding=2), nn.BatchNorm2d(6), nn.ReLU(inplace=True),
        nn.MaxPool2d(3, stride=2, padding=1), nn.Conv2d(6, 8, 3, dilation=2, padding=1),
        nn.GELU(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(8 * 3 * 3, 4),
    )  # fmt: skip
    bn = net[1]
    assert isinstance(bn, nn.BatchNorm2d) and bn.running_mean is not None
    bn.running_mean.uniform_(-0.5, 0.5)
    return Model(net.eval(), InputSpec(3, 30, 30), name="strided")


@pytest.mark.parametrize("which", ["tiny", "padded", "strided"])
def test_incremental_inference_equals_full_passes(which: str) -> None:
    from convlens.model import build

    model = {
        "tiny": lambda: build("tiny-vgg:input_size=32", seed=0).eval(),
        "padded": lambda: build("tiny-vgg:input_size=32,padding=1", seed=0).eval(),
        "strided": _strided_chain,
    }[which]()
    size = model.spec.height
    x = torch.rand(2, 3, size, size)
    for window, stride in ((8, 6), (5, 3), (size, 1), (1, 9)):
        kw: dict[str, Any] = dict(window=window, stride=stride, target=[0, 2], chunk_size=40)
        full = convlens.explain(model, x, "occlusion", incremental=False, **kw)
        assert not full.params["incremental"]
        inc = convlens.explain(model, x, "occlusion", incremental=True, **kw)
        assert inc.params["incremental"] and not inc.notes
        for key in ("grid_logit", "grid_probability"):
            torch.testing.assert_close(inc.extra[key], full.extra[key], **TOL)


def test_incremental_on_branching_models(functional_net: Model) -> None:
    """Functional ReLU, an in-place residual addition, global pooling: incremental now (the
    ResNet, MobileNet and Inception cases are in test_methods_incremental.py)."""
    x = torch.rand(2, 3, 16, 16)
    kw: dict[str, Any] = dict(window=5, stride=3, target=[1, 2])
    a = convlens.explain(functional_net, x, "occlusion", incremental=True, **kw)
    assert a.params["incremental"] and not a.notes
    b = convlens.explain(functional_net, x, "occlusion", incremental=False, **kw)
    torch.testing.assert_close(a.extra["grid_logit"], b.extra["grid_logit"], **TOL)


def test_cnn_explainer_incremental(cnn_explainer_dir: Path) -> None:
    m = convlens.load_model(str(cnn_explainer_dir / "model.json"))
    x = torch.cat([m.load_image(s.path) for s in m.samples[:2]])
    kw: dict[str, Any] = dict(window=8, stride=6)
    full = convlens.explain(m, x, "occlusion", incremental=False, **kw)
    inc = convlens.explain(m, x, "occlusion", **kw)  # incremental by default on chains
    assert inc.params["incremental"]
    torch.testing.assert_close(inc.values, full.values, **TOL)
