"""Tensors and images as JSON values.

A tensor travels as ``{"shape": [...], "dtype": "float32", "b64": ...}``: the base64 of its
little-endian float32 bytes in C order. That is about 5.3 bytes per number instead of the ~10
of a decimal list, and the browser turns it into a ``Float32Array`` without parsing numbers.

>>> d = encode_tensor(torch.arange(6.0).view(2, 3))
>>> d["shape"], float(decode_tensor(d)[1, 2])
([2, 3], 5.0)
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import torch
from PIL import Image

from convlens.errors import ConvlensError
from convlens.io.figure import png_bytes

TensorJSON = dict[str, Any]

_LE_FLOAT32 = np.dtype("<f4")


def encode_tensor(t: torch.Tensor | np.ndarray) -> TensorJSON:
    """A tensor as ``{"shape", "dtype": "float32", "b64"}`` (little-endian, C order)."""
    arr = t.detach().cpu().float().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)
    arr = np.ascontiguousarray(arr, dtype=_LE_FLOAT32)
    return {
        "shape": list(arr.shape),
        "dtype": "float32",
        "b64": base64.b64encode(arr.tobytes()).decode("ascii"),
    }


def decode_tensor(d: TensorJSON) -> np.ndarray:
    """The inverse of :func:`encode_tensor` (for clients and tests)."""
    try:
        if d["dtype"] != "float32":
            raise ConvlensError(f"tensor dtype {d['dtype']!r} is not supported; accepted: float32")
        flat = np.frombuffer(base64.b64decode(d["b64"]), dtype=_LE_FLOAT32)
        return flat.reshape([int(s) for s in d["shape"]]).astype(np.float32)
    except (KeyError, TypeError, ValueError) as e:
        raise ConvlensError(f"not an encoded tensor ({e}); expected shape, dtype and b64") from None


def png_data_url(image: Image.Image) -> str:
    """A Pillow image as a ``data:image/png;base64,...`` URL."""
    return "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode("ascii")


def display_copy(image: Image.Image, max_side: int = 512) -> Image.Image:
    """``image`` shrunk (aspect kept) so its longer side is at most ``max_side``."""
    if max(image.size) <= max_side:
        return image
    out = image.copy()
    out.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return out
