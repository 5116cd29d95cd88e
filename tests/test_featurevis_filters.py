"""Filter views (weights as pictures, roughness) and the featurevis CLI commands."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from convlens.cli import main
from convlens.errors import ConvlensError, NotFoundError
from convlens.featurevis.filters import conv_weights, filter_figure, first_layer_cells, roughness
from convlens.io.figure import save_png
from convlens.model import Model

TINY = "tiny-vgg:in_channels=1,input_size=28"


def _numpy_roughness(w: np.ndarray) -> np.ndarray:
    out = []
    for f in w:
        scores = []
        for k in f:
            pairs = [
                (k[i, j] - k[i, j + 1]) ** 2
                for i in range(k.shape[0])
                for j in range(k.shape[1] - 1)
            ]
            pairs += [
                (k[i, j] - k[i + 1, j]) ** 2
                for i in range(k.shape[0] - 1)
                for j in range(k.shape[1])
            ]
            scores.append(np.mean(pairs) / (2 * k.var()))
        out.append(np.mean(scores))
    return np.array(out)


def test_roughness_matches_numpy_and_separates_noise_from_smooth() -> None:
    torch.manual_seed(0)
    w = torch.randn(5, 3, 4, 6)
    np.testing.assert_allclose(
        roughness(w).numpy(), _numpy_roughness(w.double().numpy()), rtol=1e-4
    )
    noise = roughness(torch.randn(32, 3, 11, 11))
    assert abs(float(noise.mean()) - 1) < 0.05
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 11), torch.linspace(-1, 1, 11), indexing="ij")
    blob = torch.exp(-(xx**2 + yy**2) / 0.3).expand(2, 3, 11, 11)
    assert (roughness(blob) < 0.2).all()
    checker = (
        ((torch.arange(11)[:, None] + torch.arange(11)[None]) % 2).float().expand(1, 1, 11, 11)
    )
    assert float(roughness(checker)[0]) > 1.9
    assert float(roughness(torch.ones(1, 1, 3, 3))[0]) == 0.0


def test_first_layer_cells_share_one_scale_with_gray_zero() -> None:
    w = torch.tensor([[[[0.0, 2.0]]], [[[-1.0, 0.5]]]])
    cells = first_layer_cells(w)
    torch.testing.assert_close(cells[0], torch.tensor([[[0.5, 1.0]]]))
    torch.testing.assert_close(cells[1], torch.tensor([[[0.25, 0.625]]]))


def test_conv_weights_and_errors(tiny_vgg: Model) -> None:
    conv = tiny_vgg.net.get_submodule("conv_2_1")
    assert isinstance(conv, torch.nn.Conv2d)
    assert torch.equal(conv_weights(tiny_vgg, "conv_2_1"), conv.weight.detach())
    with pytest.raises(ConvlensError, match="not a conv module; conv layers: conv_1_1"):
        conv_weights(tiny_vgg, "relu_1_1")
    with pytest.raises(NotFoundError, match="unknown layer"):
        conv_weights(tiny_vgg, "conv_5")


def test_filter_figures_for_first_and_deeper_layers(
    tiny_vgg_rgb: Model, small_resnet: Model
) -> None:
    first = filter_figure(tiny_vgg_rgb, "conv_1_1")
    deeper = filter_figure(tiny_vgg_rgb, "conv_2_2", max_filters=4, max_inputs=5)
    res = filter_figure(small_resnet, "layer1.0.conv1", max_filters=3)
    for fig in (first, deeper, res):
        assert isinstance(fig, Image.Image) and fig.width > 100 and fig.height > 100
    # 4 rows of filters on the deeper view: shorter than all 10
    assert deeper.height < filter_figure(tiny_vgg_rgb, "conv_2_2").height
    with pytest.raises(ConvlensError, match="at least 1"):
        filter_figure(tiny_vgg_rgb, "conv_1_1", max_filters=0)


# ---------------------------------------------------------------- CLI


def test_cli_filters_writes_a_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "f.png"
    assert main(["filters", TINY, "--layer", "conv_1_1", "--out", str(out)]) == 0
    assert Image.open(out).width > 100
    assert "roughness" in capsys.readouterr().out


def test_cli_visualize_writes_images_and_grid(tmp_path: Path) -> None:
    args = ["visualize", TINY, "--layer", "conv_2_2", "--channels", "0-2", "--steps", "2"]
    assert main([*args, "--out", str(tmp_path)]) == 0
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["conv_2_2_0.png", "conv_2_2_1.png", "conv_2_2_2.png", "conv_2_2_grid.png"]
    assert Image.open(tmp_path / "conv_2_2_0.png").size == (28, 28)


def test_cli_bad_channel_and_layer_are_clear_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["visualize", TINY, "--steps", "1", "--out", str(tmp_path)]
    assert main([*base, "--layer", "conv_1_1", "--channels", "12"]) == 2
    assert "channel 12 is out of range" in capsys.readouterr().err
    assert main([*base, "--layer", "conv_x", "--channels", "0"]) == 2
    assert "unknown layer 'conv_x'" in capsys.readouterr().err


def test_cli_fool_and_invert(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    img = tmp_path / "in.png"
    save_png(torch.rand(1, 28, 28), img)
    fig = tmp_path / "fool.png"
    args = ["fool", str(img), "--model", TINY, "--eps", "0.05", "--steps", "3", "--out", str(fig)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "before:" in out and "after:" in out and fig.is_file()
    assert main(["fool", str(img), "--model", TINY, "--eps", "-1"]) == 2
    assert "eps must be >= 0" in capsys.readouterr().err
    assert main(["fool", str(img), "--model", TINY, "--target", "3", "--method", "fgsm"]) == 0
    inv = tmp_path / "inv.png"
    args = ["invert", str(img), "--model", TINY, "--layers", "conv_1_1,conv_2_2", "--steps", "3"]
    assert main([*args, "--out", str(inv)]) == 0
    assert Image.open(inv).width > 3 * 100
