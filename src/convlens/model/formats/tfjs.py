"""TensorFlow.js layers models (``model.json`` plus binary weight shards), no TensorFlow needed.

``model.json`` holds the Keras model config under ``modelTopology`` and a ``weightsManifest``:
groups of shard files whose concatenated bytes hold, in order, every weight listed in the
group (little-endian; ``float32``/``int32``, or quantized to ``uint8``/``uint16``/``float16``
with ``value = q · scale + min`` for the integer kinds). The Keras layers are converted by
:mod:`convlens.model.formats.keras_layers`.

CNN Explainer (Wang et al., VIS 2020) ships its Tiny VGG this way:

>>> from convlens.model import load_model
>>> m = load_model("../shared/fixtures/cnn-explainer/model.json")  # doctest: +SKIP
>>> m.spec.shape, len(m.classes)  # doctest: +SKIP
((3, 64, 64), 10)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from convlens.errors import ConvlensError
from convlens.io.spec import InputSpec
from convlens.model.core import Model
from convlens.model.formats.base import input_size_override, make_model, parse_class_list
from convlens.model.formats.download import known_classes
from convlens.model.formats.keras_layers import convert, weights_by_layer
from convlens.model.load import FORMATS, LoadOptions, ModelFormat

MODEL_FILE = "model.json"
MAX_JSON_BYTES = 64 << 20  # a layers-model topology is small; refuse to parse huge files

_DTYPES: dict[str, np.dtype[Any]] = {
    "float32": np.dtype("<f4"),
    "int32": np.dtype("<i4"),
    "uint8": np.dtype("u1"),
    "uint16": np.dtype("<u2"),
    "float16": np.dtype("<f2"),
    "bool": np.dtype("u1"),
}


def model_file(source: str) -> Path:
    p = Path(source)
    return p / MODEL_FILE if p.is_dir() else p


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        if not path.is_file() or path.stat().st_size > MAX_JSON_BYTES:
            return None
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return doc if isinstance(doc, dict) else None


def detect(source: str) -> bool:
    path = model_file(source)
    if path.suffix.lower() != ".json":
        return False
    doc = _read_json(path)
    return doc is not None and "modelTopology" in doc and "weightsManifest" in doc


def read_weights(folder: Path, manifest: list[dict[str, Any]]) -> list[tuple[str, np.ndarray]]:
    """Every weight of the manifest as ``(name, array)``, in file order."""
    out: list[tuple[str, np.ndarray]] = []
    for group in manifest:
        buf = b""
        for rel in group.get("paths", []):
            shard = (folder / rel).resolve()
            if folder.resolve() not in shard.parents:
                raise ConvlensError(f"weight shard {rel!r} lies outside the model folder")
            try:
                buf += shard.read_bytes()
            except FileNotFoundError:
                raise ConvlensError(
                    f"weight shard {str(shard)!r} named in model.json is missing"
                ) from None
        offset = 0
        for entry in group.get("weights", []):
            arr, offset = _take(buf, offset, entry)
            out.append((str(entry["name"]), arr))
        if offset != len(buf):
            raise ConvlensError(
                f"the weight shards hold {len(buf)} bytes but model.json describes {offset}"
            )
    return out


def _take(buf: bytes, offset: int, entry: dict[str, Any]) -> tuple[np.ndarray, int]:
    quant = entry.get("quantization") or {}
    kind = str(quant.get("dtype") or entry.get("dtype", "float32"))
    if kind not in _DTYPES:
        raise ConvlensError(
            f"weight {entry.get('name')!r} has dtype {kind!r}; accepted: {', '.join(_DTYPES)}"
        )
    dtype = _DTYPES[kind]
    shape = tuple(int(s) for s in entry.get("shape", []))
    count = int(np.prod(shape)) if shape else 1
    end = offset + count * dtype.itemsize
    if end > len(buf):
        raise ConvlensError(
            f"the weight shards end before weight {entry.get('name')!r} (need {end} bytes, "
            f"have {len(buf)})"
        )
    arr = np.frombuffer(buf, dtype=dtype, count=count, offset=offset).astype(np.float32)
    if quant and kind in ("uint8", "uint16"):
        arr = arr * float(quant["scale"]) + float(quant["min"])
    return arr.reshape(shape), end


def _metadata_classes(doc: dict[str, Any]) -> list[str] | None:
    """Class names a converter put in ``userDefinedMetadata`` (``classes`` or ``labels``)."""
    meta = doc.get("userDefinedMetadata")
    if not isinstance(meta, dict):
        return None
    return parse_class_list(meta.get("classes", meta.get("labels")))


def load(source: str, opts: LoadOptions) -> Model:
    path = model_file(source)
    doc = _read_json(path)
    if doc is None:
        raise ConvlensError(f"{str(path)!r} is not a readable TensorFlow.js model.json")
    if doc.get("format") == "graph-model":
        raise ConvlensError(
            f"{str(path)!r} is a TensorFlow.js graph model; only layers models (converted from "
            "Keras) can be loaded. Convert the original model to ONNX instead"
        )
    topology = doc["modelTopology"]
    named = read_weights(path.parent, doc.get("weightsManifest") or [])
    conv = convert(topology, weights_by_layer(named), input_size_override(opts.input_spec))
    spec = InputSpec(conv.channels, conv.height, conv.width, conv.mean, conv.std)
    known = known_classes(path)  # the published CNN Explainer model, recognised by checksum
    name = "cnn-explainer" if known else conv.name
    return make_model(
        conv.net,
        spec,
        path,
        opts.classes,
        file_classes=known or _metadata_classes(doc),
        name=name if name != "sequential" else path.parent.name or "tfjs-model",
        input_overrides=opts.input_spec,
    )


FORMATS.add(
    "tfjs",
    ModelFormat(detect, load, "a TensorFlow.js layers model (model.json + weight shards)"),
)
