"""Feature visualization: parameterizations, transforms, objectives and the render loop."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import convlens.featurevis as fv
from convlens.errors import ConvlensError, NotFoundError
from convlens.featurevis import objectives as O
from convlens.featurevis.param import COLOR_DECORRELATION, FOURIER_MAGIC, rfft_freqs
from convlens.featurevis.render import RedirectedReLU
from convlens.model import Model, build
from convlens.probe import capture

# ---------------------------------------------------------------- parameterizations


@pytest.mark.parametrize("kind", ["pixel", "fourier"])
@pytest.mark.parametrize("shape", [(2, 1, 28, 28), (3, 3, 15, 17), (1, 3, 64, 64), (1, 4, 9, 8)])
def test_param_images_always_in_range(kind: str, shape: tuple[int, int, int, int]) -> None:
    p = fv.image_param(shape, kind, seed=0)
    assert tuple(p().shape) == shape
    for raw in p.parameters():  # even wildly pushed parameters give a valid image
        with torch.no_grad():
            raw.copy_(torch.randn(raw.shape) * 1e4)
    x = p()
    assert torch.isfinite(x).all() and x.min() >= 0 and x.max() <= 1


def test_fourier_param_matches_numpy_reimplementation() -> None:
    p = fv.image_param((2, 3, 12, 15), "fourier", decorrelate=True, seed=3)
    spec = p.parameters()[0].detach().numpy().astype(np.float64)  # (B, C, h, w//2+1, 2)
    fy = np.fft.fftfreq(12)[:, None]
    fx = np.fft.rfftfreq(15)[None, :]
    scale = 1 / np.maximum(np.sqrt(fx**2 + fy**2), 1 / 15)
    z = (spec[..., 0] + 1j * spec[..., 1]) * scale
    img = np.fft.irfft2(z, s=(12, 15), norm="ortho") / FOURIER_MAGIC
    mixed = np.einsum("bchw,dc->bdhw", img, COLOR_DECORRELATION.double().numpy())
    expected = 1 / (1 + np.exp(-mixed))
    np.testing.assert_allclose(p().detach().numpy(), expected, atol=1e-5)


def test_fourier_freqs_and_param_errors() -> None:
    assert rfft_freqs(4, 4).shape == (4, 3)
    with pytest.raises(ConvlensError, match="accepted: pixel, fourier"):
        fv.image_param((1, 3, 8, 8), "wavelet")
    with pytest.raises(ConvlensError, match="batch, channels, height, width"):
        fv.image_param((1, 3, 8), "pixel")


def test_pixel_param_starts_from_given_images() -> None:
    init = torch.rand(2, 3, 8, 8) * 0.9 + 0.05
    p = fv.image_param((2, 3, 8, 8), "pixel", decorrelate=False, init=init)
    torch.testing.assert_close(p(), init, atol=1e-5, rtol=0)


# ---------------------------------------------------------------- transforms


def test_jitter_is_an_exact_pixel_shift() -> None:
    x = torch.rand(1, 2, 10, 10)
    gen = torch.Generator().manual_seed(0)
    m = fv.Jitter(2).matrix(1, 10, 10, torch.Generator().manual_seed(0))
    sx, sy = round(float(m[0, 0, 2]) * 10 / 2), round(float(m[0, 1, 2]) * 10 / 2)
    out = fv.Compose([fv.Jitter(2)])(x, gen)
    # output pixel (i, j) reads input (i + sy, j + sx): compare on the part inside the image.
    ref = torch.roll(x, shifts=(-sy, -sx), dims=(2, 3))
    inner = (slice(2, 8), slice(2, 8))
    torch.testing.assert_close(out[..., inner[0], inner[1]], ref[..., inner[0], inner[1]])


def test_rotate_90_degrees_matches_rot90() -> None:
    x = torch.rand(1, 3, 9, 9)
    out = fv.Rotate((90.0,))(x, torch.Generator().manual_seed(0))
    candidates = [torch.rot90(x, k, dims=(2, 3)) for k in (1, 3)]
    assert min(float((out - c).abs().max()) for c in candidates) < 1e-5


def test_pad_fills_the_border_with_gray_and_draws_differ_per_image() -> None:
    ones = torch.ones(1, 1, 20, 20)
    out = fv.Pad(4)(ones)
    assert abs(float(out[0, 0, 0, 0]) - 0.5) < 1e-6 and abs(float(out[0, 0, 10, 10]) - 1) < 1e-6
    batch = torch.rand(1, 3, 32, 32).repeat(6, 1, 1, 1)
    moved = fv.standard_transforms(32)(batch, torch.Generator().manual_seed(1))
    assert moved.shape == batch.shape
    assert len({round(float(v), 4) for v in moved.flatten(1).sum(1)}) > 1


def test_compose_rejects_unknown_pad_mode() -> None:
    with pytest.raises(ConvlensError, match="constant, reflect, border"):
        fv.Compose([fv.Pad(1)], pad_mode="wrap")  # type: ignore[arg-type]  # refused at run time


# ---------------------------------------------------------------- objectives


def test_objective_values_match_hand_computation(tiny_vgg: Model) -> None:
    x = torch.rand(3, 1, 28, 28)
    with capture(tiny_vgg, ["conv_2_1"]) as cap:
        logits = tiny_vgg(x)
    a = cap["conv_2_1"].detach()
    v = torch.arange(10.0) - 4
    cases = {
        "channel": (O.channel("conv_2_1", [1, 2, 3]), a[[0, 1, 2], [1, 2, 3]].mean((1, 2))),
        "neuron": (O.neuron("conv_2_1", 4, 2, 5), a[:, 4, 2, 5]),
        "centre": (O.neuron("conv_2_1", 4), a[:, 4, a.shape[2] // 2, a.shape[3] // 2]),
        "layer": (O.layer("conv_2_1"), a.pow(2).mean((1, 2, 3))),
        "logit": (O.class_logit(7), logits[:, 7]),
        "prob": (O.class_prob(7), logits.softmax(1)[:, 7]),
        "direction": (
            O.direction("conv_2_1", v),
            (a * (v / v.norm()).view(1, -1, 1, 1)).sum(1).mean((1, 2)),
        ),
        "combined": (
            O.channel("conv_2_1", 1) - 0.5 * O.channel("conv_2_1", 2),
            a[:, 1].mean((1, 2)) - 0.5 * a[:, 2].mean((1, 2)),
        ),
        "product": (
            2 * O.channel("conv_2_1", 0) * O.channel("conv_2_1", 0),
            2 * a[:, 0].mean((1, 2)) ** 2,
        ),
        "tv": (O.total_variation(2.0), _tv2(x)),
        "l1": (O.l1(), (x - 0.5).abs().mean((1, 2, 3))),
        "l2": (O.l2(), (x - 0.5).pow(2).mean((1, 2, 3))),
    }
    for name, (objective, expected) in cases.items():
        got = fv.evaluate(tiny_vgg, objective, x)
        torch.testing.assert_close(got, expected.detach(), atol=1e-5, rtol=1e-4, msg=name)


def _tv2(x: torch.Tensor) -> torch.Tensor:
    dx = x[..., :-1, 1:] - x[..., :-1, :-1]
    dy = x[..., 1:, :-1] - x[..., :-1, :-1]
    return (dx**2 + dy**2 + 1e-8).mean((1, 2, 3))


def test_diversity_is_minus_one_for_identical_images(tiny_vgg: Model) -> None:
    x = torch.rand(1, 1, 28, 28).repeat(3, 1, 1, 1)
    same = fv.evaluate(tiny_vgg, O.diversity("conv_1_2"), x)
    torch.testing.assert_close(same, torch.full((3,), -1.0))
    x = torch.rand(3, 1, 28, 28) * torch.tensor([1.0, 0.2, 0.6]).view(3, 1, 1, 1)
    mixed = fv.evaluate(tiny_vgg, O.diversity("conv_1_2"), x)
    with capture(tiny_vgg, ["conv_1_2"]) as cap:
        tiny_vgg(x)
    a = cap["conv_1_2"].detach().double().numpy().reshape(3, 10, -1)
    grams = [(g @ g.T).ravel() / np.linalg.norm(g @ g.T) for g in a]
    expected = [-np.mean([grams[i] @ grams[j] for j in range(3) if j != i]) for i in range(3)]
    np.testing.assert_allclose(mixed.numpy(), expected, rtol=1e-4)


def test_bad_objectives_raise_clear_errors(tiny_vgg: Model) -> None:
    with pytest.raises(
        ConvlensError, match=r"channel 10 is out of range .* 10 channels \(0\.\.9\)"
    ):
        fv.render(tiny_vgg, O.channel("conv_1_1", [3, 10]), steps=1)
    with pytest.raises(NotFoundError, match="unknown layer 'conv_9'"):
        fv.render(tiny_vgg, O.channel("conv_9", 0), steps=1)
    with pytest.raises(ConvlensError, match="out of range"):
        fv.render(tiny_vgg, O.class_logit(12), steps=1)
    with pytest.raises(ConvlensError, match="10 channels"):
        O.direction("conv_1_1", torch.ones(4)).validate(tiny_vgg)
    with pytest.raises(ConvlensError, match="3 and 2 images"):
        _ = O.channel("conv_1_1", [0, 1, 2]) + O.channel("conv_1_1", [0, 1])
    with pytest.raises(ConvlensError, match=">= 0"):
        fv.render(tiny_vgg, O.channel("conv_1_1", 0), steps=1, tv=-1)
    with pytest.raises(ConvlensError, match="steps"):
        fv.render(tiny_vgg, O.channel("conv_1_1", 0), steps=0)
    with pytest.raises(ConvlensError, match="outside"):
        O.neuron("conv_1_1", 0, 99, 0).validate(tiny_vgg)


# ---------------------------------------------------------------- the render loop

OBJECTIVES = {
    "channel": lambda: O.channel("conv_2_1", [0, 1, 2]),
    "neuron": lambda: O.neuron("conv_2_2", [4, 5, 6]),
    "layer": lambda: O.layer("conv_1_2"),
    "logit": lambda: O.class_logit([0, 3, 9]),
    "prob": lambda: O.class_prob([1, 2, 5]),
    "direction": lambda: O.direction("conv_2_2", torch.linspace(-1, 1, 10)),
    "combined": lambda: O.channel("conv_2_1", 3) - 0.5 * O.channel("conv_2_1", 4),
    "diverse": lambda: O.channel("conv_2_1", 0) + 0.5 * O.diversity("conv_1_2"),
}


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_every_objective_improves_during_a_render(tiny_vgg: Model, name: str) -> None:
    objective = OBJECTIVES[name]()
    r = fv.render(tiny_vgg, objective, batch=3, steps=15, lr=0.1, seed=0)
    before = fv.evaluate(tiny_vgg, objective, r.start)
    after = fv.evaluate(tiny_vgg, objective, r.images)
    assert (after > before).all(), (name, before, after)
    assert r.history.shape == (15, 3)


def test_a_seeded_render_repeats_exactly_and_seeds_differ(tiny_vgg_rgb: Model) -> None:
    objective = O.channel("conv_1_2", [0, 1])
    a = fv.render(tiny_vgg_rgb, objective, steps=5, seed=7).images
    b = fv.render(tiny_vgg_rgb, objective, steps=5, seed=7).images
    c = fv.render(tiny_vgg_rgb, objective, steps=5, seed=8).images
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize(
    "spec", ["tiny-vgg:in_channels=1,input_size=28", "tiny-vgg", "resnet18:width=4,num_classes=5"]
)
@pytest.mark.parametrize("param", ["pixel", "fourier"])
def test_renders_any_input_size_and_channel_count(spec: str, param: str) -> None:
    m = build(spec, seed=0).eval()
    conv = [lay.name for lay in m.graph if lay.kind == "conv"][-1]
    r = fv.render(m, O.channel(conv, [0, 1]), steps=2, param=param, tv=0.01, l1=0.01, l2=0.01,
                  blur=0.01, transforms="strong")  # fmt: skip
    assert tuple(r.images.shape) == (2, *m.spec.shape)
    assert r.images.min() >= 0 and r.images.max() <= 1


def test_render_never_touches_model_parameters(tiny_vgg: Model) -> None:
    before = {k: v.clone() for k, v in tiny_vgg.state_dict().items()}
    tiny_vgg.train()
    fv.render(tiny_vgg, O.channel("conv_1_1", 0), steps=3)
    assert tiny_vgg.training  # mode restored
    assert all(p.grad is None for p in tiny_vgg.parameters())
    assert all(torch.equal(v, tiny_vgg.state_dict()[k]) for k, v in before.items())


def test_redirected_relu_gradient_matches_definition() -> None:
    x = torch.tensor([[-1.0, -2.0, 3.0], [-1.0, -2.0, -3.0]], requires_grad=True)
    g = torch.tensor([[0.5, -0.5, 0.0], [0.5, -0.5, 2.0]])
    (got,) = torch.autograd.grad(RedirectedReLU.apply(x), x, g)
    # Row 0: its ReLU gradient is zero too (g = 0 where x > 0), so it is redirected as well.
    expected = torch.tensor([[0.0, -0.5, 0.0], [0.0, -0.5, 0.0]])
    torch.testing.assert_close(got, expected)
    x2 = torch.tensor([[-1.0, 2.0]], requires_grad=True)
    (alive,) = torch.autograd.grad(RedirectedReLU.apply(x2), x2, torch.tensor([[-1.0, 1.0]]))
    torch.testing.assert_close(alive, torch.tensor([[0.0, 1.0]]))  # plain ReLU gradient
    torch.testing.assert_close(RedirectedReLU.apply(x2), F.relu(x2))


def test_relu_override_revives_a_unit_dead_at_the_start(tiny_vgg: Model) -> None:
    conv = tiny_vgg.net.get_submodule("conv_1_1")
    assert isinstance(conv, nn.Conv2d) and conv.bias is not None
    with torch.no_grad():  # channel 0 just below zero on gray images, the start of a render
        gray = tiny_vgg.normalize(torch.full((1, 1, 28, 28), 0.5))
        conv.bias[0] -= float(conv(gray)[0, 0].max()) + 0.05
    objective = O.channel("relu_1_1", 0)
    plain = fv.render(tiny_vgg, objective, steps=20, param="pixel", transforms=None, lr=0.5)
    assert float(plain.history.abs().max()) == 0.0
    revived = fv.render(tiny_vgg, objective, steps=20, param="pixel", transforms=None, lr=0.5,
                        relu_override=True)  # fmt: skip
    assert float(revived.history[-1].max()) > 0
    assert all(m.inplace is False for m in tiny_vgg.modules() if isinstance(m, torch.nn.ReLU))


def test_render_channels_labels_and_chunks(tiny_vgg: Model) -> None:
    r = fv.render_channels(tiny_vgg, "conv_1_1", [0, 2, 4, 6, 8], chunk=2, steps=2)
    assert r.images.shape == (5, 1, 28, 28) and r.history.shape == (2, 5)
    assert r.labels == ["conv_1_1:0", "conv_1_1:2", "conv_1_1:4", "conv_1_1:6", "conv_1_1:8"]
    out = fv.render_channels(tiny_vgg, "output", [1], steps=1)
    assert out.labels == ["class 1"]
    fig = r.figure(title="t", ncols=5, cell_size=40)
    assert fig.width > 5 * 40


def test_parse_channels() -> None:
    assert fv.parse_channels("0-3,8") == [0, 1, 2, 3, 8]
    assert fv.parse_channels("all", 3) == [0, 1, 2]
    for bad in ("x", "5-2", ""):
        with pytest.raises(ConvlensError):
            fv.parse_channels(bad)


def test_stopping_after_the_deepest_layer_changes_nothing(small_resnet: Model) -> None:
    from convlens.featurevis.render import run_model, stop_after

    objective = O.channel("layer2.0.conv1", [0, 1])
    seen: list[str] = []
    hook = small_resnet.net.get_submodule("fc").register_forward_hook(lambda *a: seen.append("fc"))
    try:
        with capture(small_resnet, ["layer2.0.conv1"]) as cap, stop_after(small_resnet, objective):
            assert run_model(small_resnet, torch.rand(2, 3, 64, 64)) is None
        assert seen == [] and cap["layer2.0.conv1"].shape[:2] == (2, 16)
        with stop_after(small_resnet, O.class_logit(0) + objective) as active:
            assert not active  # an objective on the output needs the whole pass
    finally:
        hook.remove()
    a = fv.render(small_resnet, objective, steps=3, seed=1)
    b = fv.render(small_resnet, objective + 0 * O.class_logit(0), steps=3, seed=1)
    torch.testing.assert_close(a.images, b.images)


def test_l1_and_l2_pull_toward_the_background(tiny_vgg: Model) -> None:
    objective = O.channel("conv_1_1", 0)
    kw: dict[str, Any] = {
        "steps": 15,
        "param": "pixel",
        "transforms": None,
        "lr": 0.2,
        "l1": 50.0,
        "l2": 50.0,
    }
    dark = fv.render(tiny_vgg, objective, background=0.0, **kw).images
    light = fv.render(tiny_vgg, objective, background=1.0, **kw).images
    assert float(dark.mean()) < 0.3 < 0.7 < float(light.mean())


def test_copies_with_diversity_differ_more(tiny_vgg: Model) -> None:
    kw: dict[str, Any] = {"steps": 15, "lr": 0.1, "copies": 3, "seed": 0}
    plain = fv.render_channels(tiny_vgg, "conv_2_1", [4], **kw)
    diverse = fv.render_channels(tiny_vgg, "conv_2_1", [4], diversity=5.0, **kw)
    assert diverse.labels == ["conv_2_1:4 #0", "conv_2_1:4 #1", "conv_2_1:4 #2"]
    term = O.diversity("conv_2_1")
    spread = float(fv.evaluate(tiny_vgg, term, diverse.images).mean())
    assert spread > float(fv.evaluate(tiny_vgg, term, plain.images).mean())
    with pytest.raises(ConvlensError, match="diversity weight"):
        fv.render_channels(tiny_vgg, "conv_2_1", [4], diversity=-1.0, steps=1)


def test_render_result_displays_as_png_in_notebooks(tiny_vgg: Model) -> None:
    import io as _io

    from PIL import Image

    from convlens.featurevis import objectives, render

    result = render(tiny_vgg, objectives.channel("conv_1_1", [0, 1]), steps=2, seed=0)
    png = result._repr_png_()
    assert Image.open(_io.BytesIO(png)).size == result.figure(result.objective).size
