"""Image decoding, the input spec, colormaps, figures and atomic writes."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from convlens.errors import ConvlensError
from convlens.io import (
    DecodeLimits,
    InputSpec,
    Scale,
    atomic_write,
    colorbar,
    colorize,
    decode_image,
    fit_to_spec,
    grid,
    image_to_tensor,
    load_image,
    overlay,
    save_png,
    tensor_to_image,
)
from convlens.io.color import lut


def encode(img: Image.Image, fmt: str = "PNG", **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_exif_orientation_is_applied() -> None:
    # A 40x20 image whose left half is white; EXIF orientation 6 means "rotate 90° clockwise".
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(Image.fromarray(arr), "JPEG", exif=exif.tobytes(), quality=95)
    img = decode_image(data)
    assert img.size == (20, 40)  # portrait after rotation
    top = np.asarray(img)[:10].mean()
    bottom = np.asarray(img)[-10:].mean()
    assert top > 200 and bottom < 50  # the white half is now on top


@pytest.mark.parametrize(
    ("mode", "expected"),
    [("CMYK", "RGB"), ("P", "RGB"), ("RGBA", "RGB"), ("LA", "RGB"), ("L", "L"), ("I;16", "L")],
)
def test_any_mode_becomes_8bit(mode: str, expected: str) -> None:
    fmt = "TIFF" if mode == "CMYK" else "PNG"
    img = Image.new(mode, (8, 6))
    assert decode_image(encode(img, fmt)).mode == expected


def test_sixteen_bit_is_scaled_not_clipped() -> None:
    arr = np.full((4, 4), 65535, np.uint16)
    img = Image.fromarray(arr)
    assert img.mode == "I;16"
    assert np.asarray(decode_image(encode(img))).min() == 255


def test_transparent_pixels_composite_over_white() -> None:
    img = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert np.asarray(decode_image(encode(img)))[0, 0].tolist() == [255, 255, 255]


def test_animated_gif_gives_first_frame() -> None:
    frames = [Image.new("L", (8, 8), v) for v in (10, 200)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    assert np.asarray(decode_image(buf.getvalue())).mean() < 50


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"hello world", "not a readable image"),
        (encode(Image.new("RGB", (64, 64)))[:60], "truncated or corrupt"),
    ],
)
def test_bad_files_are_refused_clearly(data: bytes, message: str) -> None:
    with pytest.raises(ConvlensError, match=message):
        decode_image(data)


def test_limits_refuse_before_decoding() -> None:
    data = encode(Image.new("L", (300, 300)))
    with pytest.raises(ConvlensError, match="pixels; the limit"):
        decode_image(data, DecodeLimits(max_pixels=10_000))
    with pytest.raises(ConvlensError, match="bytes; the limit"):
        decode_image(data, DecodeLimits(max_bytes=10))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConvlensError, match="does not exist"):
        decode_image(tmp_path / "nope.png")


def test_shorter_side_resize_then_center_crop() -> None:
    # 60 wide x 30 high, a vertical stripe at the centre: after crop to 20x20 it stays centred
    arr = np.zeros((30, 60), np.uint8)
    arr[:, 28:32] = 255
    out = fit_to_spec(Image.fromarray(arr), InputSpec(1, 20, 20))
    assert out.size == (20, 20)
    col = np.asarray(out).mean(axis=0)
    assert col.argmax() in (9, 10)
    stretched = fit_to_spec(Image.fromarray(arr), InputSpec(1, 20, 20, resize="stretch"))
    assert np.asarray(stretched).mean(axis=0).argmax() in (9, 10)


def test_tensor_round_trip_and_load_image(tmp_path: Path) -> None:
    t = torch.rand(3, 5, 7)
    back = image_to_tensor(tensor_to_image(t))
    assert back.shape == (3, 5, 7) and (back - t).abs().max() <= 0.5 / 255 + 1e-6
    path = tmp_path / "x.png"
    Image.new("RGB", (10, 10), (255, 0, 0)).save(path)
    x = load_image(path, InputSpec(1, 4, 4))
    assert x.shape == (1, 1, 4, 4)
    assert x.max() == pytest.approx(0.299, abs=0.01)  # Pillow's ITU-R 601 luma of pure red


def test_input_spec_validation() -> None:
    spec = InputSpec(3, 8, 8, mean=(0.5,), std=(0.5,))
    assert spec.mean == (0.5, 0.5, 0.5)
    assert InputSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ConvlensError, match="1 or 3"):
        InputSpec(3, 8, 8, mean=(0.1, 0.2))
    with pytest.raises(ConvlensError, match="positive"):
        InputSpec(1, 8, 8, std=(0.0,))
    with pytest.raises(ConvlensError, match="unknown input spec keys"):
        InputSpec.from_dict({"channels": 1, "height": 2, "width": 2, "colour": 1})


def test_colormap_endpoints_and_diverging_scale() -> None:
    assert lut("viridis")[0].tolist() == [0x44, 0x01, 0x54]
    assert lut("viridis")[-1].tolist() == [0xFD, 0xE7, 0x25]
    scale = Scale.fit(np.array([-1.0, 3.0]), "rdbu")
    assert (scale.vmin, scale.vmax) == (-3.0, 3.0)
    rgb = colorize(np.array([[0.0]]), scale)
    assert rgb[0, 0].tolist() == lut("rdbu")[128].tolist()  # zero sits at the white middle
    nan = colorize(np.array([[np.nan]]), scale)
    assert nan[0, 0].tolist() == [128, 128, 128]


def test_figures_have_the_expected_sizes(tmp_path: Path) -> None:
    img = torch.rand(3, 28, 28)
    ov = overlay(img, torch.rand(7, 7))
    assert ov.size == (28, 28)
    bar = colorbar(Scale("viridis", 0, 1), length=100, label="value")
    assert bar.height > 100
    g = grid([torch.rand(1, 8, 8) for _ in range(5)], ncols=3, labels=list("abcde"), cell_size=32)
    assert g.width == 3 * 32 + 4 * 6
    save_png(g, tmp_path / "g.png")
    assert Image.open(tmp_path / "g.png").size == g.size


def test_gray_figures_are_stored_as_gray(tmp_path: Path) -> None:
    gray = Image.fromarray(np.repeat(np.arange(64, dtype=np.uint8).reshape(8, 8, 1), 3, axis=2))
    save_png(gray, tmp_path / "g.png")
    back = Image.open(tmp_path / "g.png")
    assert back.mode == "L" and np.array_equal(np.asarray(back), np.asarray(gray)[..., 0])
    colour = Image.new("RGB", (4, 4), (255, 0, 0))
    save_png(colour, tmp_path / "c.png")
    assert Image.open(tmp_path / "c.png").mode == "RGB"


def test_atomic_write_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_write(target, "w") as f:
        f.write("half")
        raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.txt"]


def test_atomic_write_gives_the_usual_permissions(tmp_path: Path) -> None:
    mask = os.umask(0o022)
    try:
        import importlib

        import convlens.io.atomic as atomic

        importlib.reload(atomic)
        atomic.write_text_atomic(tmp_path / "f.txt", "x")
    finally:
        os.umask(mask)
    assert (tmp_path / "f.txt").stat().st_mode & 0o777 == 0o644


def test_unwritable_folder_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConvlensError, match=r"not a folder|cannot create"):
        save_png(torch.rand(1, 4, 4), blocker / "sub" / "a.png")
