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
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from convlens.errors import ConvlensError
from convlens.io.atomic import ensure_writable_dir, write_bytes_atomic, write_text_atomic
from convlens.io.image import WEB_SUFFIXES
from convlens.io.spec import InputSpec
from convlens.model.core import Model, Sample

if TYPE_CHECKING:
    from convlens.model.formats.safety import Budget

# convlens.model.formats.safety is imported inside the functions below: importing the formats
# package registers every format, which imports load.py, which imports this module.

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
    """``model.json``, bounded and checked field by field (it may come from anyone)."""
    from convlens.model.formats.safety import read_json

    path = Path(folder) / META_FILE
    doc = read_json(path, "checkpoint metadata")
    where = repr(str(path))
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ConvlensError(f"{where} is not a convlens checkpoint (format {FORMAT!r})")
    version = doc.get("version", 0)
    if type(version) is not int:
        raise ConvlensError(f"{where} has version {version!r}; accepted: an integer")
    if version > VERSION:
        raise ConvlensError(f"{where} was written by a newer convlens (version {version})")
    arch = doc.get("arch")
    if not (
        isinstance(arch, dict)
        and isinstance(arch.get("name"), str)
        and isinstance(arch.get("args", {}), dict)
        and all(_scalar(v) for v in arch.get("args", {}).values())
    ):
        raise ConvlensError(
            f'{where} has arch {str(arch)[:80]}; accepted: {{"name": NAME, "args": '
            "{NAME: number, string or boolean}}"
        )
    if not isinstance(doc.get("input_spec"), dict):
        raise ConvlensError(f"{where} has no input_spec object")
    classes = doc.get("classes")
    if classes is not None and not (
        isinstance(classes, list) and all(isinstance(c, str) for c in classes)
    ):
        raise ConvlensError(f"{where} has classes that are not a list of strings")
    if doc.get("outputs", "logits") not in ("logits", "probabilities"):
        raise ConvlensError(
            f"{where} has outputs {doc.get('outputs')!r}; accepted: 'logits', 'probabilities'"
        )
    if not isinstance(doc.get("name", ""), str):
        raise ConvlensError(f"{where} has a name that is not a string")
    return doc


def _scalar(v: Any) -> bool:
    return v is None or isinstance(v, str | int | float | bool)


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


# safetensors dtype names → bytes per value (https://github.com/huggingface/safetensors).
SAFETENSORS_DTYPES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2,
    "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip
MAX_HEADER = 100 << 20  # the safetensors library's own header limit


def check_safetensors(path: str | os.PathLike[str], budget: Budget | None = None) -> int:
    """Check a safetensors file's header against its size before any tensor is built.

    The file is ``u64 N`` (little-endian), ``N`` bytes of JSON ``{name: {"dtype", "shape",
    "data_offsets": [begin, end]}, "__metadata__": {str: str}}``, then the data. Each tensor's
    byte range must equal ``prod(shape) × itemsize`` and lie inside the data; the total is
    charged to the model budget. Returns the number of tensors.
    """
    from convlens.model.formats.safety import Budget, checked_elements, parse_json, regular_file

    p = regular_file(path, "weights file")
    size = p.stat().st_size
    where = repr(str(p))
    with p.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ConvlensError(f"weights file {where} is too short to be safetensors")
        n = int.from_bytes(head, "little")
        if n > min(MAX_HEADER, size - 8):
            raise ConvlensError(
                f"weights file {where} declares a {n}-byte header in a {size}-byte file; "
                "not safetensors"
            )
        header = parse_json(f.read(n), f"safetensors header of {where}")
    if not isinstance(header, dict):
        raise ConvlensError(f"safetensors header of {where} is not an object")
    data_size = size - 8 - n
    budget = budget or Budget()
    count = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        what = f"tensor {str(name)[:80]!r} in {where}"
        if not isinstance(entry, dict) or entry.get("dtype") not in SAFETENSORS_DTYPES:
            dtype = entry.get("dtype") if isinstance(entry, dict) else None
            raise ConvlensError(
                f"{what} has dtype {str(dtype)[:20]!r}; accepted: {', '.join(SAFETENSORS_DTYPES)}"
            )
        shape, offsets = entry.get("shape"), entry.get("data_offsets")
        if not isinstance(shape, list):
            raise ConvlensError(f"{what} has no shape list")
        nbytes = checked_elements(shape, what) * SAFETENSORS_DTYPES[entry["dtype"]]
        if not (
            isinstance(offsets, list)
            and len(offsets) == 2
            and all(type(o) is int for o in offsets)
            and 0 <= offsets[0] <= offsets[1] <= data_size
            and offsets[1] - offsets[0] == nbytes
        ):
            raise ConvlensError(
                f"{what} has data_offsets {str(offsets)[:60]} for {nbytes} bytes in {data_size} "
                "bytes of data"
            )
        budget.take(nbytes, what)
        count += 1
    return count


def read_safetensors(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, after :func:`check_safetensors`."""
    check_safetensors(path)
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise ConvlensError(
            f"weights file {str(path)!r} is corrupt or not safetensors: {e}"
        ) from None


def _check_arch_size(name: str, args: dict[str, Any], where: str) -> None:
    """Build the architecture on the meta device first: its weights' size, with no memory.

    ``model.json`` may ask for ``width=10**6``; the real build would try to allocate it.
    """
    from convlens.model.formats.safety import Budget, checked_elements
    from convlens.model.zoo import ZOO

    entry = ZOO.get(name)
    try:
        with torch.device("meta"):
            net, _ = entry.make(**(entry.defaults | args))
    except ConvlensError:
        raise
    except Exception as e:
        raise ConvlensError(f"{where}: bad arguments for {name}: {e}") from None
    budget = Budget()
    for pname, t in net.state_dict().items():
        budget.take(checked_elements(t.shape, pname) * t.element_size(), f"{where}: {pname}")


def read_input_spec(meta: dict[str, Any], where: str) -> InputSpec:
    """The checkpoint's ``input_spec`` (a bad one is one line naming ``where``)."""
    try:
        return InputSpec.from_dict(meta["input_spec"])
    except (TypeError, ValueError) as e:
        if isinstance(e, ConvlensError):
            raise
        raise ConvlensError(f"{where} has a bad input_spec: {e}") from None


def load_checkpoint(folder: str | os.PathLike[str], trust_pickle: bool = False) -> Model:
    """A :class:`Model` from a checkpoint folder written by :func:`save_checkpoint`.

    A transfer-learning run's checkpoint (arch ``transfer``: a body with a new head) is
    rebuilt by :func:`convlens.model.headed.load_transfer`.
    """
    from convlens.model.zoo import build  # zoo imports core; avoid a cycle at import time

    folder = Path(folder)
    meta = read_meta(folder)
    arch = meta["arch"]
    if arch["name"] == "transfer":
        from convlens.model.headed import load_transfer

        return load_transfer(folder, meta, trust_pickle)
    where = str(folder / META_FILE)
    _check_arch_size(arch["name"], arch.get("args", {}), where)
    check_safetensors(folder / WEIGHTS_FILE)
    model = build(arch["name"], meta.get("classes"), **arch.get("args", {}))
    spec = read_input_spec(meta, where)
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
        if p.suffix.lower() not in WEB_SUFFIXES:
            continue
        parts = p.stem.split("_")
        label = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None
        samples.append(Sample(p, label))
    return samples
