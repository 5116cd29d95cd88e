"""Safe image decoding and conversion between images and tensors.

Decoding refuses files that are too large in bytes or pixels before the pixels are read (a
decompression bomb never reaches memory), respects EXIF orientation, takes the first frame of
an animation, and turns any mode (CMYK, 16-bit, palette, alpha, gray) into 8-bit ``L`` or
``RGB``.
"""

from __future__ import annotations

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
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


@dataclass(frozen=True)
class DecodeLimits:
    """Upper bounds on what :func:`decode_image` accepts."""

    max_bytes: int = MAX_BYTES
    max_pixels: int = MAX_PIXELS


def read_image_bytes(source: str | os.PathLike[str] | bytes, limits: DecodeLimits) -> bytes:
    if isinstance(source, bytes):
        data = source
    else:
        path = Path(source)
        if not path.is_file():
            raise ConvlensError(f"image file {str(path)!r} does not exist or is not a file")
        size = path.stat().st_size
        if size > limits.max_bytes:
            raise ConvlensError(
                f"image {path.name!r} is {size:,} bytes; the limit is {limits.max_bytes:,}"
            )
        data = path.read_bytes()
    if len(data) > limits.max_bytes:
        raise ConvlensError(f"image is {len(data):,} bytes; the limit is {limits.max_bytes:,}")
    if not data:
        raise ConvlensError("image is empty (0 bytes)")
    return data


def _to_8bit(img: Image.Image) -> Image.Image:
    """Bring 16-bit and float modes to 8-bit gray, scaling by the mode's range."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        arr = np.asarray(img, dtype=np.uint16).astype(np.float32) / 257.0
    elif img.mode == "I":
        arr = np.asarray(img, dtype=np.int32).astype(np.float32)
        arr = arr / 257.0 if arr.max(initial=0) > 255 else arr
    elif img.mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        arr = arr * 255.0 if arr.max(initial=0) <= 1.0 else arr
    else:
        return img
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")


def _flatten_alpha(img: Image.Image) -> Image.Image:
    """Composite transparent pixels over white, the way a browser shows them."""
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img


def decode_image(
    source: str | os.PathLike[str] | bytes, limits: DecodeLimits | None = None
) -> Image.Image:
    """Decode an image file or bytes into an 8-bit ``L`` or ``RGB`` Pillow image.

    Raises :class:`ConvlensError` for a missing, empty, truncated, non-image or oversized
    input, naming what was wrong.

    >>> decode_image(b"not an image")
    Traceback (most recent call last):
    ...
    convlens.errors.ConvlensError: not a readable image (accepted: PNG, JPEG, GIF, BMP, WebP, TIFF)
    """
    limits = limits or DecodeLimits()
    data = read_image_bytes(source, limits)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img: Image.Image = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > limits.max_pixels:
                raise ConvlensError(
                    f"image is {w}×{h} = {w * h:,} pixels; the limit is {limits.max_pixels:,}"
                )
            img.seek(0)  # first frame of an animation
            img.load()
    except ConvlensError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ConvlensError(f"image refused as a decompression bomb: {e}") from None
    except UnidentifiedImageError:
        raise ConvlensError(
            "not a readable image (accepted: PNG, JPEG, GIF, BMP, WebP, TIFF)"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ConvlensError(f"image is truncated or corrupt: {e}") from None
    img = ImageOps.exif_transpose(img) or img
    if img.mode == "CMYK":
        img = img.convert("RGB")
    img = _flatten_alpha(_to_8bit(img))
    if img.mode not in ("L", "RGB"):
        img = img.convert("RGB")
    return img


_FILTERS = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


def fit_to_spec(img: Image.Image, spec: InputSpec) -> Image.Image:
    """Resize (and crop) ``img`` to the spec's size and convert it to its channels.

    With ``spec.resize_size`` the shorter side goes to that size first and the centre is cut
    out, torchvision's ``Resize`` + ``CenterCrop`` (Pillow's filters antialias when shrinking,
    as torchvision's do on Pillow images).
    """
    img = img.convert(spec.color_mode)
    target = (spec.width, spec.height)
    resample = _FILTERS[spec.interpolation]
    if img.size == target:
        return img
    if spec.resize == "stretch":
        return img.resize(target, resample)
    w, h = img.size
    if spec.resize_size is not None:
        # torchvision: the shorter side gets exactly resize_size, the longer int(size × ratio),
        # and the crop's corner is the rounded half of the margin; a size too small to cover
        # the target (after an --input-size override) grows until it does
        cover = math.ceil(min(w, h) * max(spec.width / w, spec.height / h))
        size = max(spec.resize_size, cover)
        new_w, new_h = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
        new_w, new_h = max(new_w, spec.width), max(new_h, spec.height)
        img = img.resize((new_w, new_h), resample)
        left, top = round((new_w - spec.width) / 2), round((new_h - spec.height) / 2)
        return img.crop((left, top, left + spec.width, top + spec.height))
    scale = max(spec.width / w, spec.height / h)
    new_w, new_h = max(spec.width, round(w * scale)), max(spec.height, round(h * scale))
    img = img.resize((new_w, new_h), resample)
    left, top = (new_w - spec.width) // 2, (new_h - spec.height) // 2
    return img.crop((left, top, left + spec.width, top + spec.height))


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
