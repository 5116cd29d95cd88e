"""``convlens export-figures``: one PNG grid per layer for one image, and an index."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from convlens.analysis.activations import activations, layer_figure, sparsity
from convlens.cli import main
from convlens.cli.export_figures import export_layer_figures
from convlens.model import Model


def write_image(path: Path) -> Path:
    g = torch.Generator().manual_seed(0)
    arr = torch.randint(0, 256, (28, 28), generator=g, dtype=torch.uint8).numpy()
    Image.fromarray(arr, "L").save(path)
    return path


def test_every_layer_gets_a_figure_and_the_index_lists_them(tmp_path: Path) -> None:
    img = write_image(tmp_path / "x.png")
    out = tmp_path / "figs"
    code = main(["export-figures", "--model", "tiny-vgg:in_channels=1,input_size=28",
                 "--image", str(img), "--out", str(out), "--max-channels", "4"])  # fmt: skip
    assert code == 0
    index = json.loads((out / "index.json").read_text())
    layers = index["layers"]
    assert [e["layer"] for e in layers][:4] == ["input", "conv_1_1", "relu_1_1", "conv_1_2"]
    assert len(layers) == 13  # input, 4 conv, 4 relu, 2 pools, flatten, output
    files = sorted(p.name for p in out.iterdir())
    assert files == sorted([e["file"] for e in layers] + ["index.html", "index.json"])  # no temps
    for e in layers:
        with Image.open(out / e["file"]) as im:
            im.load()
            assert im.width >= 100 and im.height >= 60
        assert f'src="{e["file"]}"' in (out / "index.html").read_text()
    conv = next(e for e in layers if e["layer"] == "conv_1_1")
    assert conv["channels"] == 10 and conv["channels_shown"] == 4  # the cap, recorded


def test_activations_and_sparsity_match_a_hand_forward(tiny_vgg: Model) -> None:
    x = torch.rand(1, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    acts = activations(tiny_vgg, x[0])
    conv = tiny_vgg.net.get_submodule("conv_1_1")
    assert isinstance(conv, torch.nn.Conv2d)
    h = F.relu(F.conv2d(tiny_vgg.normalize(x), conv.weight, conv.bias))
    torch.testing.assert_close(acts["relu_1_1"], h[0])
    zeros = sparsity(acts)
    assert zeros["relu_1_1"] == pytest.approx(float((h == 0).float().mean()))
    assert zeros["conv_1_1"] < 0.01  # before the ReLU, exact zeros are rare


def test_a_capped_layer_says_so_in_a_narrower_figure(tiny_vgg: Model) -> None:
    acts = activations(tiny_vgg, torch.rand(1, 28, 28))
    lay = tiny_vgg.graph["conv_1_1"]
    full = layer_figure(lay, acts["conv_1_1"], max_channels=64)
    capped = layer_figure(lay, acts["conv_1_1"], max_channels=2)
    assert capped.width < full.width and capped.height < full.height


def test_export_into_a_folder_writes_pngs(tiny_vgg: Model, tmp_path: Path) -> None:
    entries = export_layer_figures(tiny_vgg, torch.rand(1, 1, 28, 28), tmp_path, 64)
    assert len(entries) == len(tiny_vgg.graph)
    assert all((tmp_path / e["file"]).stat().st_size > 500 for e in entries)


def test_unreadable_image_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    code = main(["export-figures", "--model", "tiny-vgg:in_channels=1,input_size=28",
                 "--image", str(bad), "--out", str(tmp_path / "o")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "broken.png" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()  # nothing written before the image was read
