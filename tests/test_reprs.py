"""Notebook displays: every result answers ``_repr_png_`` with a PNG and ``_repr_html_`` with
a ``<figure>`` embedding that same PNG, drawn by the one figure path (convlens.io.figure)."""

from __future__ import annotations

import base64
import html
import io
import re
from pathlib import Path

import pytest
import torch
from PIL import Image

import convlens
from convlens.analysis.embed import code_map
from convlens.analysis.scan import ScanResult, scan
from convlens.data import TensorImages
from convlens.featurevis import objectives as obj
from convlens.featurevis.filters import filter_figure
from convlens.featurevis.render import render
from convlens.io.figure import MAX_DISPLAY_SIDE, Figure, RichDisplay
from convlens.model import Model
from convlens.train.curves import read_history
from convlens.train.loop import TrainConfig, train


def decode(png: bytes) -> Image.Image:
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    img = Image.open(io.BytesIO(png))
    img.load()  # raises on a truncated or corrupt stream
    return img


def check_display(obj: RichDisplay, min_side: int = 60) -> tuple[Image.Image, str]:
    """The PNG decodes to a sensible size and the HTML embeds exactly that PNG."""
    png = obj._repr_png_()
    img = decode(png)
    assert min_side <= img.width <= MAX_DISPLAY_SIDE and min_side <= img.height <= MAX_DISPLAY_SIDE
    page = obj._repr_html_()
    found = re.fullmatch(r'<figure [^>]*><img src="data:image/png;base64,([A-Za-z0-9+/=]+)"[^>]*>'
                         r"(<figcaption>(.*)</figcaption>)?</figure>", page, re.S)  # fmt: skip
    assert found, page[:200]
    assert base64.b64decode(found.group(1)) == png
    assert f'width="{img.width}"' in page and f'height="{img.height}"' in page
    return img, found.group(3) or ""


def data(n: int = 12) -> TensorImages:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 1, 28, 28), generator=g, dtype=torch.uint8)
    return TensorImages(images, torch.arange(n) % 3, ["a", "b", "c"], name="noise")


def test_attribution_shows_input_overlay_map_and_named_target(tiny_vgg: Model) -> None:
    tiny_vgg.classes = [f"<b>class{i}</b>" for i in range(len(tiny_vgg.classes))]
    x = torch.rand(1, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    att = convlens.explain(tiny_vgg, x, "grad-cam", target=3)
    img, text = check_display(att)
    assert "class '<b>class3</b>' (#3)" in html.unescape(text)  # the target named...
    assert "<b>" not in att._repr_html_()  # ...and escaped
    # Three panels side by side (input, overlay, map + colour bar): much wider than tall.
    assert img.width > 2 * img.height
    assert "values 1×1×28×28" in repr(att)  # a summary, not a tensor dump


def test_attribution_of_a_batch_draws_at_most_four_rows(tiny_vgg: Model) -> None:
    one = convlens.explain(tiny_vgg, torch.rand(1, 1, 28, 28), "saliency")
    six = convlens.explain(tiny_vgg, torch.rand(6, 1, 28, 28), "saliency")
    h1 = decode(one._repr_png_()).height
    h6, text = check_display(six)
    assert 3.5 * h1 < h6.height < 4.5 * h1
    assert "first 4 of 6 shown" in text


def test_attribution_without_inputs_still_draws_its_map(tiny_vgg: Model) -> None:
    att = convlens.explain(tiny_vgg, torch.rand(1, 1, 28, 28), "saliency")
    att.inputs, att.class_names = None, None
    _, text = check_display(att)
    assert "class #" in text


def test_scan_shows_top_patches_and_a_loaded_scan_its_maxima(
    tiny_vgg: Model, tmp_path: Path
) -> None:
    result = scan(tiny_vgg, data(), ["conv_1_1"], k=4, out=tmp_path / "s", progress=False)
    img, text = check_display(result)
    assert "12 images" in text and "conv_1_1" in text
    loaded = ScanResult.load(tmp_path / "s")
    img2, text2 = check_display(loaded)
    assert "patches need the data set" in text2
    assert img2.size != img.size


def test_map_render_filters_and_curves(tiny_vgg: Model, tmp_path: Path) -> None:
    cmap = code_map(tiny_vgg, data(30), n=30, method="pca")
    _, text = check_display(cmap, min_side=200)
    assert "pca" in text

    res = render(tiny_vgg, obj.channel("conv_1_1", [0, 1]), steps=4, progress=False)
    check_display(res)

    fig = Figure(filter_figure(tiny_vgg, "conv_1_1"), "first-layer filters")
    _, text = check_display(fig)
    assert text == "first-layer filters"

    run = train(tiny_vgg, data(16), data(8), tmp_path / "run", TrainConfig(epochs=2, batch_size=8))
    img, text = check_display(run, min_side=200)
    assert "learning curves" in text
    assert decode(read_history(tmp_path / "run")._repr_png_()).size == img.size


def test_huge_figures_are_shrunk_for_display() -> None:
    fig = Figure(Image.new("RGB", (4000, 100), (200, 0, 0)), "wide")
    img = decode(fig._repr_png_())
    assert img.width == MAX_DISPLAY_SIDE and img.height == 40


@pytest.mark.parametrize("cls", [Figure])
def test_figure_repr_is_short(cls: type[Figure]) -> None:
    assert repr(cls(Image.new("RGB", (3, 2)), "x")) == "Figure(3×2, 'x')"
