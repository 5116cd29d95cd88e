"""Where convlens computes: one parser for ``--device`` / ``device=`` and ``--precision``.

``auto`` picks CUDA, then Apple's MPS, then the CPU. A device that is not there is refused in
one line naming the devices that are (``cuda:3`` on a two-GPU machine, ``mps`` on Linux), so
no command starts loading a model it cannot run.

Models, inputs and intermediate tensors stay on the chosen device; results come back to the
CPU only where they are drawn or stored (figures, scan files, JSON answers).

>>> resolve_device("cpu")
device(type='cpu')
>>> resolve_device("meta")  # shapes only: tests run code paths on it without any data
device(type='meta')
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import Literal

import torch

from convlens.errors import ConvlensError

DEVICE_CHOICES = "auto, cpu, cuda, cuda:N, mps"
Precision = Literal["float32", "bfloat16", "float16"]
PRECISIONS: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
_DEVICE = re.compile(r"(auto|cpu|meta|mps|cuda)(?::(\d{1,4}))?")


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def available_devices() -> list[str]:
    """The devices this machine has, e.g. ``['cpu', 'cuda:0', 'cuda:1']``."""
    found = ["cpu"]
    if torch.cuda.is_available():
        found += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if _mps_available():
        found.append("mps")
    return found


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """The device named by ``spec`` (``auto``/``None``: CUDA, then MPS, then CPU), checked to
    exist here. ``meta`` (tensors without data) is accepted for shape checks."""
    if isinstance(spec, torch.device):
        spec = str(spec)
    text = "auto" if spec is None else spec.strip().lower()
    m = _DEVICE.fullmatch(text)
    if m is None or (m.group(2) is not None and m.group(1) != "cuda"):
        raise ConvlensError(f"unknown device {spec!r}; accepted: {DEVICE_CHOICES}")
    kind, index = m.group(1), m.group(2)
    if kind == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("mps" if _mps_available() else "cpu")
    if kind == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        i = int(index) if index is not None else (torch.cuda.current_device() if count else 0)
        if i >= count:
            what = "no CUDA device" if count == 0 else f"CUDA devices 0..{count - 1} only"
            raise ConvlensError(
                f"device {spec!r} is not available: this machine has {what} (torch "
                f"{torch.__version__}, CUDA build {torch.version.cuda or 'none'}); available: "
                f"{', '.join(available_devices())}"
            )
        return torch.device("cuda", i)
    if kind == "mps" and not _mps_available():
        raise ConvlensError(
            f"device 'mps' is not available here (Apple-silicon GPUs only); available: "
            f"{', '.join(available_devices())}"
        )
    return torch.device(kind)


def parse_precision(text: str) -> torch.dtype:
    """``float32`` (no autocast), ``bfloat16`` or ``float16`` (``torch.autocast``)."""
    dtype = PRECISIONS.get(text.strip().lower())
    if dtype is None:
        raise ConvlensError(f"unknown precision {text!r}; accepted: {', '.join(PRECISIONS)}")
    return dtype


@contextlib.contextmanager
def autocast(device: torch.device, precision: str | torch.dtype = "float32") -> Iterator[None]:
    """Run the block under ``torch.autocast`` in ``precision`` on ``device``'s kind (nothing
    for float32). Matrix products and convolutions run in the lower precision; reductions and
    losses stay in float32 (autocast's own op lists)."""
    dtype = precision if isinstance(precision, torch.dtype) else parse_precision(precision)
    if dtype == torch.float32 or device.type == "meta":
        yield
        return
    if device.type == "mps" and dtype == torch.bfloat16:
        raise ConvlensError("MPS has no bfloat16 autocast; use --precision float16 or float32")
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


def module_device(module: torch.nn.Module) -> torch.device:
    """The device of a module's first parameter or buffer (CPU for a module with neither)."""
    for p in module.parameters():
        return p.device
    for b in module.buffers():
        return b.device
    return torch.device("cpu")
