"""Tensors and images as JSON values.

A tensor travels as ``{"shape": [...], "dtype": "float32", "b64": ...}``: the base64 of its
little-endian float32 bytes in C order. That is about 5.3 bytes per number instead of the ~10
of a decimal list, and the browser turns it into a ``Float32Array`` without parsing numbers.

A map the front end only draws may travel quantized (:func:`encode_quantized`): one byte a
number, ``value = offset[c] + scale[c] * q`` per channel ``c`` (q in 0..255), so the error is
at most ``scale[c] / 2`` and a trace is about four times smaller.

>>> d = encode_tensor(torch.arange(6.0).view(2, 3))
>>> d["shape"], float(decode_tensor(d)[1, 2])
([2, 3], 5.0)
>>> t = torch.rand(4, 8, 8)
>>> q = encode_quantized(t)
>>> error = abs(decode_tensor(q) - t.numpy()).max()
>>> q["dtype"], len(q["offset"]), bool(error <= max(q["scale"]) / 2 + 1e-6)
('uint8', 4, True)
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


def encode_quantized(t: torch.Tensor, unit_range: bool = False) -> TensorJSON:
    """A ``(C, ...)`` tensor as ``{"shape", "dtype": "uint8", "b64", "offset", "scale"}``:
    per channel, ``q = round((v - min) / scale)`` with ``scale = (max - min) / 255``.

    ``unit_range`` fixes the range to ``[0, 1]`` (``scale = 1/255``): an 8-bit image's tensor
    then travels exactly. NaN and infinities (which a byte cannot carry) are sent as the
    channel's minimum; the trace's ``stats`` report them.
    """
    arr = t.detach().cpu().float().reshape(t.shape[0], -1)
    finite = torch.isfinite(arr)
    if unit_range:
        low, high = torch.zeros(arr.shape[0]), torch.ones(arr.shape[0])
    else:
        low = torch.where(finite, arr, torch.inf).amin(dim=1)
        high = torch.where(finite, arr, -torch.inf).amax(dim=1)
        low = torch.where(torch.isfinite(low), low, 0.0)  # a channel without one finite value
        high = torch.maximum(torch.where(torch.isfinite(high), high, 0.0), low)
    scale = (high - low) / 255
    safe = torch.where(scale > 0, scale, 1.0)[:, None]
    filled = torch.where(finite, arr, low[:, None])
    q = ((filled - low[:, None]) / safe).round_().clamp_(0, 255).to(torch.uint8)
    return {
        "shape": list(t.shape),
        "dtype": "uint8",
        "b64": base64.b64encode(q.numpy().tobytes()).decode("ascii"),
        "offset": low.tolist(),
        "scale": scale.tolist(),
    }


def decode_tensor(d: TensorJSON) -> np.ndarray:
    """The inverse of :func:`encode_tensor` and :func:`encode_quantized` (for clients, tests)."""
    try:
        shape = [int(s) for s in d["shape"]]
        raw = base64.b64decode(d["b64"])
        if d["dtype"] == "uint8":
            q = np.frombuffer(raw, dtype=np.uint8).reshape(shape[0], -1).astype(np.float32)
            offset = np.asarray(d["offset"], dtype=np.float32)[:, None]
            scale = np.asarray(d["scale"], dtype=np.float32)[:, None]
            return (offset + scale * q).reshape(shape)
        if d["dtype"] != "float32":
            raise ConvlensError(
                f"tensor dtype {d['dtype']!r} is not supported; accepted: float32, uint8"
            )
        return np.frombuffer(raw, dtype=_LE_FLOAT32).reshape(shape).astype(np.float32)
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
