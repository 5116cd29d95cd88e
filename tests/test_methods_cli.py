"""``convlens explain``: files written, figures sized right, clean errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from convlens.cli import main
from convlens.cli.explain import method_params, parse_value
from convlens.errors import ConvlensError
from convlens.io.image import tensor_to_image

MODEL = "tiny-vgg:input_size=32"


@pytest.fixture
def images(tmp_path: Path) -> list[Path]:
    paths = []
    for i in range(2):
        p = tmp_path / f"img{i}.png"
        tensor_to_image(torch.rand(3, 32, 32)).save(p)
        paths.append(p)
    return paths


def test_writes_one_png_per_image_and_method(images: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    methods = "saliency,grad-cam,occlusion"
    argv = ["explain", *map(str, images), "-m", MODEL, "--method", methods, "-p",
            "occlusion.window=8", "-p", "stride=8", "--target", "3", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(
        f"img{i}.{m}.png"
        for i in range(2)
        for m in ("saliency", "grad-cam", "occlusion", "explain")
    )
    single = Image.open(out / "img0.grad-cam.png")
    both = Image.open(out / "img0.explain.png")
    assert single.width > 160 and both.width > 4 * 160  # the input and three methods
    assert not list(out.glob("*.tmp*"))


def test_errors_are_clean(
    images: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["explain", str(images[0]), "-m", MODEL, "--out", str(tmp_path / "o")]
    assert main([*base, "--method", "gradcam"]) == 2
    assert "Did you mean 'grad-cam'" in capsys.readouterr().err
    assert main([*base, "--target", "12"]) == 2
    assert "out of range 0..9" in capsys.readouterr().err
    assert main([*base, "--method", "occlusion", "-p", "window=40"]) == 2
    assert "larger than the image" in capsys.readouterr().err
    assert main([*base, "--layer", "conv9"]) == 2
    assert "unknown layer 'conv9'" in capsys.readouterr().err


def test_parameter_parsing() -> None:
    assert parse_value("8") == 8 and parse_value("0.5") == 0.5 and parse_value("true") is True
    assert parse_value("8,4") == (8, 4) and parse_value("mean") == "mean"
    got = method_params(["occlusion", "score-cam"], ["chunk_size=32", "occlusion.window=5"])
    assert got == {"occlusion": {"chunk_size": 32, "window": 5}, "score-cam": {"chunk_size": 32}}
    with pytest.raises(ConvlensError, match="takes parameter 'n_steps'"):
        method_params(["grad-cam"], ["n_steps=3"])
