"""A scan on disk: a folder that a web app or a notebook reads without recomputing.

Format (version 1)::

    DIR/scan.json          metadata, human-readable (a copy of the state file's metadata)
    DIR/state.safetensors  tensors "<layer>/<field>" of every LayerState, and under the
                           metadata key "scan" the same JSON as scan.json

``scan.json`` holds ``version``, ``model`` (name and a SHA-256 of its weights),
``dataset`` (name, split, size, image shape), ``layers`` (name -> channels and grid), ``k``,
``images_done`` (the scan covers the data set's first ``images_done`` indices, in order),
``complete``, ``skipped`` (unreadable images: index, name, reason) and ``batch_size``.

Both files are written atomically (temporary file, then rename), the state first; the state
file's own metadata is authoritative, so a crash between the two renames loses nothing.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load, save

from convlens.analysis.state import LayerState, ScanState
from convlens.errors import ConvlensError
from convlens.io.atomic import write_bytes_atomic, write_text_atomic

VERSION = 1
META_FILE = "scan.json"
STATE_FILE = "state.safetensors"


@dataclass
class ScanMeta:
    """What a scan covers; see the module docstring for the fields."""

    model: dict[str, Any]
    dataset: dict[str, Any]
    layers: dict[str, dict[str, Any]]
    k: int
    batch_size: int
    images_done: int = 0
    complete: bool = False
    skipped: list[dict[str, Any]] = field(default_factory=list)
    version: int = VERSION

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "model": self.model,
            "dataset": self.dataset,
            "layers": self.layers,
            "k": self.k,
            "batch_size": self.batch_size,
            "images_done": self.images_done,
            "complete": self.complete,
            "skipped": self.skipped,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ScanMeta:
        if d.get("version") != VERSION:
            raise ConvlensError(
                f"scan format version {d.get('version')!r} is not supported (this convlens "
                f"reads version {VERSION}); rerun the scan"
            )
        return cls(
            model=d["model"],
            dataset=d["dataset"],
            layers=d["layers"],
            k=int(d["k"]),
            batch_size=int(d["batch_size"]),
            images_done=int(d["images_done"]),
            complete=bool(d["complete"]),
            skipped=list(d.get("skipped", [])),
        )


def save_scan(folder: str | os.PathLike[str], meta: ScanMeta, state: ScanState) -> None:
    """Write the state, then the metadata, each atomically."""
    tensors: dict[str, torch.Tensor] = {}
    for name, lay in state.items():
        meta.layers[name] = {
            **meta.layers.get(name, {}),
            "channels": lay.channels,
            "grid": list(lay.grid),
            "n_images": lay.n_images,
        }
        for key, t in lay.tensors().items():
            tensors[f"{name}/{key}"] = t.contiguous()
    text = json.dumps(meta.to_dict(), indent=1)
    path = Path(folder)
    write_bytes_atomic(path / STATE_FILE, save(tensors, metadata={"scan": text}))
    write_text_atomic(path / META_FILE, text + "\n")


def _read_state(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    raw = path.read_bytes()
    try:
        tensors = load(raw)
        # safetensors layout: u64 little-endian header size, then the JSON header
        header = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])
        return json.loads(header["__metadata__"]["scan"]), tensors
    except Exception as e:  # any corruption: say which file, not a library traceback
        raise ConvlensError(f"{str(path)!r} is not a readable convlens scan state: {e}") from None


def has_scan(folder: str | os.PathLike[str]) -> bool:
    return (Path(folder) / STATE_FILE).is_file()


def load_scan(folder: str | os.PathLike[str]) -> tuple[ScanMeta, ScanState]:
    """Read a scan folder written by :func:`save_scan`."""
    path = Path(folder) / STATE_FILE
    if not path.is_file():
        raise ConvlensError(
            f"no scan in {str(folder)!r} (expected {STATE_FILE} and {META_FILE}); run "
            "`convlens scan MODEL --dataset D --out DIR` first"
        )
    meta_dict, tensors = _read_state(path)
    meta = ScanMeta.from_dict(meta_dict)
    state: ScanState = {}
    for name, info in meta.layers.items():
        try:
            parts = {key: tensors[f"{name}/{key}"] for key in _TENSOR_FIELDS}
        except KeyError as e:
            raise ConvlensError(f"{str(path)!r} lacks tensor {e.args[0]!r}") from None
        state[name] = LayerState(
            **parts, n_images=int(info["n_images"]), grid=(info["grid"][0], info["grid"][1])
        )
    return meta, state


_TENSOR_FIELDS = (
    "values", "images", "positions", "total", "total_sq", "maximum", "positive", "fired",
)  # fmt: skip
