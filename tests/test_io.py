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


# ----------------------------------------------------------------- hostile images (issue 11)


def test_only_the_listed_formats_are_opened() -> None:
    from convlens.io.image import WEB_FORMATS, NotAnImageError

    img = Image.new("RGB", (8, 8), (1, 2, 3))
    web = DecodeLimits(formats=WEB_FORMATS)
    for fmt in ("EPS", "ICO", "PCX", "TGA", "PPM", "TIFF"):
        with pytest.raises(NotAnImageError, match="accepted: PNG, JPEG, BMP, GIF, WebP"):
            decode_image(encode(img, fmt), web)
    assert decode_image(encode(img, "TIFF")).size == (8, 8)  # files on disk may be TIFF
    with pytest.raises(NotAnImageError):
        decode_image(encode(img, "EPS"))  # never Ghostscript


def _header_only_png(width: int, height: int) -> bytes:
    """A PNG signature, an IHDR of ``width``×``height`` and one row of pixel data: a
    refusal that names the size was made from the header, before any decoding."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    row = zlib.compressobj().compress(b"\x00" * (1 + width))  # unflushed: truncated data
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", row or b"x")


def test_pixel_and_aspect_budgets_are_checked_from_the_header() -> None:
    from convlens.io.image import ImageTooLargeError

    with pytest.raises(ImageTooLargeError, match="aspect ratio of 1,000,000:1; the limit is 50:1"):
        decode_image(_header_only_png(1, 1_000_000))
    with pytest.raises(ImageTooLargeError, match="10,000,000:1"):
        decode_image(_header_only_png(10_000_000, 1))
    with pytest.raises(ImageTooLargeError, match="40,960,000 pixels; the limit is 40,000,000"):
        decode_image(_header_only_png(6400, 6400))
    with pytest.raises(ConvlensError, match="truncated or corrupt"):  # within budget: decoded
        decode_image(_header_only_png(100, 100))
    assert decode_image(encode(Image.new("L", (1, 50)))).size == (1, 50)  # 50:1 is fine


@pytest.mark.parametrize("mode", ["I;16", "I", "F"])
def test_blockwise_8bit_conversion_equals_the_whole_image_formula(
    mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Converted in blocks of a few rows (a small block size forces many, with a ragged last
    one); the result equals the formula applied to the whole array at once."""
    import convlens.io.image as image_mod

    monkeypatch.setattr(image_mod, "_BLOCK_PIXELS", 37 * 5)
    rng = np.random.default_rng(3)
    if mode == "I;16":
        arr = rng.integers(0, 65536, (23, 37)).astype(np.uint16)
        img, want = Image.frombytes("I;16", (37, 23), arr.tobytes()), np.rint(arr / 257.0)
    elif mode == "I":
        arr = rng.integers(-500, 60000, (23, 37)).astype(np.int32)
        img, want = Image.fromarray(arr, "I"), np.rint(arr / 257.0)
    else:
        arr = rng.random((23, 37)).astype(np.float32)
        arr[0, 0] = np.nan
        img, want = Image.fromarray(arr, "F"), np.rint(np.nan_to_num(arr) * np.float32(255.0))
    out = np.asarray(decode_image(encode(img, "TIFF") if mode != "I;16" else encode(img)))
    assert out.dtype == np.uint8 and out.shape == (23, 37)
    assert np.array_equal(out, np.clip(want, 0, 255).astype(np.uint8))


def test_crop_box_resampling_matches_resize_then_crop() -> None:
    """``fit_to_spec`` resamples the centre box straight to the output; the old way (resize
    the whole image, then crop) gives the same pixels up to resampling at the crop's edge."""
    rng = np.random.default_rng(0)
    arr = (rng.random((30, 240)) * 60 + np.linspace(0, 190, 240)[None, :]).astype(np.uint8)
    img = Image.fromarray(arr)
    out = np.asarray(fit_to_spec(img, InputSpec(1, 20, 20))).astype(float)
    scale = 20 / 30
    big = img.resize((round(240 * scale), 20), Image.Resampling.BICUBIC)
    left = (big.width - 20) // 2
    ref = np.asarray(big.crop((left, 0, left + 20, 20))).astype(float)
    assert np.abs(out - ref)[:, 2:-2].max() <= 3  # interior: same up to rounding
    assert abs(out.mean() - ref.mean()) < 2
