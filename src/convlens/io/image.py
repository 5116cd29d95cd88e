"""Safe image decoding and conversion between images and tensors.

Decoding refuses files that are too large in bytes or pixels, or too elongated, before the
pixels are read (a decompression bomb never reaches memory), opens only the formats it is told
to (Pillow's other plugins, EPS through Ghostscript among them, are never tried), respects EXIF
orientation, takes the first frame of an animation, and turns any mode (CMYK, 16-bit,
palette, alpha, gray) into 8-bit ``L`` or ``RGB`` in row blocks, so a conversion costs about
one extra 8-bit copy of the image. :func:`fit_to_spec` resamples straight from the source
region to the model's size: its memory never depends on the aspect ratio.
"""

from __future__ import annotations

import enum
import io
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from convlens.errors import ConvlensError
from convlens.io.spec import InputSpec

MAX_BYTES = 32 * 1024 * 1024
MAX_PIXELS = 40_000_000
MAX_ASPECT = 50.0  # longer side / shorter side; a 1×1,000,000 strip is no photograph
# Pillow format names: files on disk (data sets, samples) may also be TIFF; uploads may not
WEB_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP")
FILE_FORMATS = (*WEB_FORMATS, "TIFF")
_SUFFIXES = {
    "PNG": (".png",),
    "JPEG": (".jpg", ".jpeg"),
    "BMP": (".bmp",),
    "GIF": (".gif",),
    "WEBP": (".webp",),
    "TIFF": (".tif", ".tiff"),
}


def suffixes(formats: tuple[str, ...]) -> tuple[str, ...]:
    """The file name endings of Pillow ``formats`` (lower case, with the dot).

    >>> suffixes(("PNG", "JPEG"))
    ('.png', '.jpg', '.jpeg')
    """
    return tuple(s for f in formats for s in _SUFFIXES[f])


IMAGE_SUFFIXES = suffixes(FILE_FORMATS)  # every image file convlens reads
WEB_SUFFIXES = suffixes(WEB_FORMATS)  # the ones a browser shows too


class ImageProblem(enum.Enum):
    """Why an image was refused; callers branch on it (the web API maps it to a status)."""

    MISSING = "missing"  # no such file
    EMPTY = "empty"  # 0 bytes, or a header of 0 pixels
    TOO_LARGE = "too large"  # bytes, pixels or aspect ratio over the limits; a bomb
    NOT_AN_IMAGE = "not an image"  # no accepted format's decoder recognizes it
    CORRUPT = "corrupt"  # truncated or damaged


class ImageError(ConvlensError):
    """An image refused while reading or decoding it; :attr:`kind` says why."""

    kind = ImageProblem.CORRUPT

    def __init__(self, message: str, kind: ImageProblem | None = None) -> None:
        super().__init__(message)
        if kind is not None:
            self.kind = kind


class ImageTooLargeError(ImageError):
    """An image over the byte, pixel or aspect budget (the web API answers 413)."""

    kind = ImageProblem.TOO_LARGE


class NotAnImageError(ImageError):
    """Bytes that no accepted format's decoder recognizes (the web API answers 415)."""

    kind = ImageProblem.NOT_AN_IMAGE


_BLOCK_PIXELS = 1 << 20  # pixels converted per block (about 4 MB of float32)


@dataclass(frozen=True)
class DecodeLimits:
    """Upper bounds on what :func:`decode_image` accepts, and the formats it opens."""

    max_bytes: int = MAX_BYTES
    max_pixels: int = MAX_PIXELS
    max_aspect: float = MAX_ASPECT
    formats: tuple[str, ...] = FILE_FORMATS

    @property
    def accepted(self) -> str:
        """The formats as a user reads them: ``PNG, JPEG, BMP, GIF, WebP``."""
        return ", ".join("WebP" if f == "WEBP" else f for f in self.formats)

    def check_bytes(self, size: int, name: str = "image") -> None:
        """Refuse a file of ``size`` bytes before it is read (empty, or over ``max_bytes``)."""
        if size > self.max_bytes:
            raise ImageTooLargeError(f"{name} is {size:,} bytes; the limit is {self.max_bytes:,}")
        if size == 0:
            raise ImageError(f"{name} is empty (0 bytes)", ImageProblem.EMPTY)

    def check_size(self, width: int, height: int) -> None:
        """Refuse a header's size before any pixel is decoded (:class:`ImageTooLargeError`)."""
        if width < 1 or height < 1:
            raise ImageError(f"image is {width}×{height}: it has no pixels", ImageProblem.EMPTY)
        pixels = width * height
        if pixels > self.max_pixels:
            raise ImageTooLargeError(
                f"image is {width}×{height} = {pixels:,} pixels; the limit is {self.max_pixels:,}"
            )
        aspect = max(width, height) / min(width, height)
        if aspect > self.max_aspect:
            raise ImageTooLargeError(
                f"image is {width}×{height}, an aspect ratio of {aspect:,.0f}:1; the limit is "
                f"{self.max_aspect:g}:1"
            )


def read_image_bytes(source: str | os.PathLike[str] | bytes, limits: DecodeLimits) -> bytes:
    """The bytes of an image file (checked for size before it is read) or the bytes given."""
    if isinstance(source, bytes):
        limits.check_bytes(len(source))
        return source
    path = Path(source)
    if not path.is_file():
        raise ImageError(
            f"image file {str(path)!r} does not exist or is not a file", ImageProblem.MISSING
        )
    limits.check_bytes(path.stat().st_size, f"image {path.name!r}")
    data = path.read_bytes()
    limits.check_bytes(len(data), f"image {path.name!r}")  # it may have grown meanwhile
    return data


def _blockwise_to_l(img: Image.Image, scale: float) -> Image.Image:
    """``img`` (one band, integer or float) times ``scale``, rounded and clipped to 8 bits,
    converted a block of rows at a time so no full-size float copy is ever made."""
    w, h = img.size
    out = np.empty((h, w), dtype=np.uint8)
    rows = max(1, _BLOCK_PIXELS // w)
    for top in range(0, h, rows):
        bottom = min(h, top + rows)
        block = np.asarray(img.crop((0, top, w, bottom)), dtype=np.float32)
        block = np.nan_to_num(block * scale, nan=0.0, posinf=255.0, neginf=0.0)
        out[top:bottom] = np.clip(np.rint(block), 0, 255).astype(np.uint8)
    return Image.fromarray(out, mode="L")


def _to_8bit(img: Image.Image) -> Image.Image:
    """Bring 16-bit and float modes to 8-bit gray, scaling by the mode's range."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return _blockwise_to_l(img, 1 / 257.0)
    if img.mode == "I":
        high = img.getextrema()[1]
        return _blockwise_to_l(img, 1 / 257.0 if float(high) > 255 else 1.0)  # type: ignore[arg-type]
    if img.mode == "F":  # values in [0, 1] are scaled to 255; NaN is ignored (then read as 0)
        return _blockwise_to_l(img, 255.0 if _block_max(img) <= 1.0 else 1.0)
    return img


def _block_max(img: Image.Image) -> float:
    """The largest value of a one-band image, NaN ignored, read a block of rows at a time."""
    w, h = img.size
    rows = max(1, _BLOCK_PIXELS // w)
    high = -np.inf
    for top in range(0, h, rows):
        block = np.asarray(img.crop((0, top, w, min(h, top + rows))), dtype=np.float32)
        if np.isfinite(block).any():
            high = max(high, float(np.nanmax(np.where(np.isinf(block), np.nan, block))))
    return high


def _flatten_alpha(img: Image.Image) -> Image.Image:
    """Composite transparent pixels over white, the way a browser shows them."""
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("LA", "PA"):
        img = img.convert("RGBA")
    if img.mode == "RGBA":
        flat = Image.new("RGB", img.size, (255, 255, 255))
        flat.paste(img, (0, 0), img)  # the alpha band is the mask: src·a + white·(1 − a)
        return flat
    return img


def _upright(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation (no copy when there is none to apply)."""
    if img.getexif().get(0x0112, 1) in (0, 1):
        return img
    return ImageOps.exif_transpose(img) or img


def decode_image(
    source: str | os.PathLike[str] | bytes, limits: DecodeLimits | None = None
) -> Image.Image:
    """Decode an image file or bytes into an 8-bit ``L`` or ``RGB`` Pillow image.

    Raises :class:`ImageError` for a missing, empty, truncated, non-image or oversized input,
    naming what was wrong; its ``kind`` (:class:`ImageProblem`) says which, for callers.

    >>> decode_image(b"not an image", DecodeLimits(formats=("PNG", "JPEG")))
    Traceback (most recent call last):
    ...
    convlens.io.image.NotAnImageError: not a readable image (accepted: PNG, JPEG)
    """
    limits = limits or DecodeLimits()
    data = read_image_bytes(source, limits)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img: Image.Image = Image.open(io.BytesIO(data), formats=list(limits.formats))
            limits.check_size(*img.size)
            img.seek(0)  # first frame of an animation
            img.load()
    except ConvlensError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageTooLargeError(f"image refused as a decompression bomb: {e}") from None
    except UnidentifiedImageError:
        raise NotAnImageError(f"not a readable image (accepted: {limits.accepted})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageError(f"image is truncated or corrupt: {e}") from None
    img = _upright(img)
    if img.mode == "CMYK":
        img = img.convert("RGB")
    img = _flatten_alpha(_to_8bit(img))
    if img.mode not in ("L", "RGB"):
        img = img.convert("RGB")
    return img


_FILTERS = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


def fit_to_spec(img: Image.Image, spec: InputSpec) -> Image.Image:
    """Resize (and crop) ``img`` to the spec's size and convert it to its channels.

    ``shorter-side-crop`` scales the shorter side to the spec and keeps the centre. With
    ``spec.resize_size`` the shorter side goes to that size first and the centre is cut out,
    torchvision's ``Resize`` + ``CenterCrop`` (Pillow's filters antialias when shrinking, as
    torchvision's do on Pillow images). Either way only the kept region is resampled, straight
    to the output size (``resize``'s ``box``), so memory is the output's whatever the image's
    aspect ratio: a 1×10⁶ image never becomes a 224×224,000,000 intermediate.
    """
    if spec.color_mode == "L" and img.mode != "L":
        img = img.convert("L")  # shrinks: convert before resampling
    target = (spec.width, spec.height)
    if img.size != target:
        resample = _FILTERS[spec.interpolation]
        resized = _publisher_resize(img, spec)
        if resized is not None:  # torchvision's two steps, bit for bit, when they are cheap
            new_w, new_h = resized
            left, top = round((new_w - spec.width) / 2), round((new_h - spec.height) / 2)
            img = img.resize(resized, resample).crop(
                (left, top, left + spec.width, top + spec.height)
            )
        else:
            img = img.resize(target, resample, box=_crop_box(img.size, spec))
    return img.convert(spec.color_mode) if img.mode != spec.color_mode else img


_MAX_INTERMEDIATE = 1 << 22  # pixels of a resize-then-crop intermediate (4 Mpx, ~12 MB RGB)


def _resized_size(size: tuple[int, int], spec: InputSpec) -> tuple[int, int]:
    """torchvision's ``Resize(resize_size)`` output size, grown to cover the target.

    The shorter side gets exactly ``resize_size``, the longer ``int(size × ratio)``; a size
    too small to cover the target (after an ``--input-size`` override) grows until it does.
    """
    assert spec.resize_size is not None
    w, h = size
    cover = math.ceil(min(w, h) * max(spec.width / w, spec.height / h))
    side = max(spec.resize_size, cover)
    new_w, new_h = (side, int(side * h / w)) if w <= h else (int(side * w / h), side)
    return max(new_w, spec.width), max(new_h, spec.height)


def _publisher_resize(img: Image.Image, spec: InputSpec) -> tuple[int, int] | None:
    """The intermediate size for an exact resize-then-crop, or None to resample a box."""
    if spec.resize != "shorter-side-crop" or spec.resize_size is None:
        return None
    new_w, new_h = _resized_size(img.size, spec)
    return (new_w, new_h) if new_w * new_h <= _MAX_INTERMEDIATE else None


def _crop_box(size: tuple[int, int], spec: InputSpec) -> tuple[float, float, float, float]:
    """The region of an image of ``size`` that ends up in the model's input, in its pixels."""
    w, h = size
    if spec.resize == "stretch":
        return (0.0, 0.0, float(w), float(h))
    if spec.resize_size is None:
        scale = max(spec.width / w, spec.height / h)
        cw, ch = min(w, spec.width / scale), min(h, spec.height / scale)
        left, top = (w - cw) / 2, (h - ch) / 2
        return (left, top, left + cw, top + ch)
    # the region torchvision's resize-then-crop keeps, mapped back to source pixels
    new_w, new_h = _resized_size(size, spec)
    left, top = round((new_w - spec.width) / 2), round((new_h - spec.height) / 2)
    sx, sy = w / new_w, h / new_h  # resized pixels → source pixels
    return (left * sx, top * sy, (left + spec.width) * sx, (top + spec.height) * sy)


def image_to_tensor(img: Image.Image) -> torch.Tensor:
    """An 8-bit ``L``/``RGB`` image to a float tensor ``(C, H, W)`` in ``[0, 1]``."""
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)  # (H,W,C) -> (C,H,W)


def tensor_to_image(t: torch.Tensor) -> Image.Image:
    """A tensor ``(C, H, W)`` (or ``(H, W)``) in ``[0, 1]`` to an 8-bit Pillow image."""
    t = t.detach().float().cpu()
    if t.dim() == 3 and t.shape[0] == 1:
        t = t[0]
    if t.dim() == 2:
        arr = (t.clamp(0, 1) * 255).round().byte().numpy()
        return Image.fromarray(arr, mode="L")
    if t.dim() == 3 and t.shape[0] == 3:
        arr = (t.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()  # (C,H,W) -> (H,W,C)
        return Image.fromarray(arr, mode="RGB")
    raise ConvlensError(f"cannot turn a tensor of shape {tuple(t.shape)} into an image")


def load_image(
    source: str | os.PathLike[str] | bytes, spec: InputSpec, limits: DecodeLimits | None = None
) -> torch.Tensor:
    """Decode, fit to ``spec`` and return a batch of one: ``(1, C, H, W)`` in ``[0, 1]``."""
    return image_to_tensor(fit_to_spec(decode_image(source, limits), spec)).unsqueeze(0)


def load_images(paths: list[str] | list[Path], spec: InputSpec) -> torch.Tensor:
    """Several image files as one batch ``(B, C, H, W)``."""
    if not paths:
        raise ConvlensError("no images given")
    return torch.cat([load_image(p, spec) for p in paths])
