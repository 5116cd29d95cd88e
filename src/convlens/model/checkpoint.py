"""Checkpoint folders: ``weights.safetensors`` plus ``model.json``.

``model.json`` holds ``{"format": "convlens-checkpoint", "version": 1, "arch": {"name", "args"},
"input_spec": {...}, "classes": [...], "outputs": "logits", "history": [...], ...}``. Both
files are written atomically, weights first, so a folder whose ``model.json`` exists is whole.
Training state for ``--resume`` (optimizer, RNG) lives beside them in ``train_state.pt``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from convlens.errors import ConvlensError
from convlens.io.atomic import ensure_writable_dir, write_bytes_atomic, write_text_atomic
from convlens.io.spec import InputSpec
from convlens.model.core import Model, Sample

FORMAT = "convlens-checkpoint"
VERSION = 1
META_FILE = "model.json"
WEIGHTS_FILE = "weights.safetensors"
SAMPLES_DIR = "samples"


def is_checkpoint(path: str | os.PathLike[str]) -> bool:
    p = Path(path)
    return p.is_dir() and (p / META_FILE).is_file() and (p / WEIGHTS_FILE).is_file()


def save_checkpoint(model: Model, folder: str | os.PathLike[str], **meta: Any) -> Path:
    """Write ``model``'s weights and metadata (plus any JSON-able ``meta``) to ``folder``."""
    if model.arch is None:
        raise ConvlensError("only models built from the zoo can be saved as checkpoints")
    out = ensure_writable_dir(folder)
    state = {k: v.detach().contiguous().cpu() for k, v in model.net.state_dict().items()}
    write_bytes_atomic(out / WEIGHTS_FILE, save(state))
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "name": model.name,
        "arch": model.arch,
        "input_spec": model.spec.to_dict(),
        "classes": model.classes,
        "outputs": model.outputs,
        **meta,
    }
    write_text_atomic(out / META_FILE, json.dumps(doc, indent=2) + "\n")
    return out


def read_meta(folder: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(folder) / META_FILE
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConvlensError(f"{str(path)!r} is missing: not a convlens checkpoint folder") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConvlensError(f"{str(path)!r} is not valid JSON: {e}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ConvlensError(f"{str(path)!r} is not a convlens checkpoint (format {FORMAT!r})")
    if doc.get("version", 0) > VERSION:
        raise ConvlensError(
            f"{str(path)!r} was written by a newer convlens (version {doc['version']})"
        )
    return doc


def load_state_dict_into(model: Model, state: dict[str, torch.Tensor], source: str) -> None:
    """Copy ``state`` into ``model.net``, naming every missing, extra or mis-shaped tensor."""
    own = model.net.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    wrong = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or extra or wrong:
        parts = []
        if wrong:
            parts.append("shape mismatch at " + "; ".join(wrong[:5]))
        if missing:
            parts.append(f"missing {', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else ""))
        if extra:
            parts.append(f"unexpected {', '.join(extra[:5])}" + (" ..." if len(extra) > 5 else ""))
        arch = model.arch["name"] if model.arch else model.name
        raise ConvlensError(
            f"the weights in {source} do not fit the architecture {arch!r}: " + "; ".join(parts)
        )
    model.net.load_state_dict(state)


def read_safetensors(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise ConvlensError(f"weights file {str(path)!r} does not exist") from None
    except (SafetensorError, OSError, ValueError) as e:
        raise ConvlensError(
            f"weights file {str(path)!r} is corrupt or not safetensors: {e}"
        ) from None


def load_checkpoint(folder: str | os.PathLike[str]) -> Model:
    """A :class:`Model` from a checkpoint folder written by :func:`save_checkpoint`."""
    from convlens.model.zoo import build  # zoo imports core; avoid a cycle at import time

    folder = Path(folder)
    meta = read_meta(folder)
    arch = meta.get("arch") or {}
    try:
        model = build(arch["name"], meta.get("classes"), **arch.get("args", {}))
    except KeyError:
        raise ConvlensError(f"{folder / META_FILE} names no architecture") from None
    spec = InputSpec.from_dict(meta["input_spec"])
    model = Model(
        model.net,
        spec,
        meta.get("classes"),
        name=meta.get("name", arch["name"]),
        arch=arch,
        outputs=meta.get("outputs", "logits"),
        samples=_samples(folder / SAMPLES_DIR),
    )
    load_state_dict_into(model, read_safetensors(folder / WEIGHTS_FILE), str(folder))
    model.eval()
    return model


def _samples(folder: Path) -> list[Sample]:
    """Sample images named ``NN_LABEL_anything.png`` (LABEL a class index) or any images."""
    if not folder.is_dir():
        return []
    samples = []
    for p in sorted(folder.iterdir()):
        if p.suffix.lower() not in (".png", ".jpg", ".jpeg"):
            continue
        parts = p.stem.split("_")
        label = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None
        samples.append(Sample(p, label))
    return samples
