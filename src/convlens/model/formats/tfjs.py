"""TensorFlow.js layers models (``model.json`` plus binary weight shards), no TensorFlow needed.

``model.json`` holds the Keras model config under ``modelTopology`` and a ``weightsManifest``:
groups of shard files whose concatenated bytes hold, in order, every weight listed in the
group (little-endian; ``float32``/``int32``/``bool``, or quantized to ``uint8``/``uint16``
with ``value = q · scale + min``, or to ``float16``). The Keras layers are converted by
:mod:`convlens.model.formats.keras_layers`; graph models (``"format": "graph-model"``) by
:mod:`convlens.model.formats.tfjs_graph`, which shares the weight reader below.

Everything in the folder is treated as hostile: only regular files are opened, the JSON is
bounded in size and depth, every declared weight shape is checked and budgeted and the shard
sizes compared with the manifest before any shard is read, and the Keras config's sizes
(units, filters, kernel sizes) are checked against the manifest before a module is built.

CNN Explainer (Wang et al., VIS 2020) ships its Tiny VGG this way:

>>> from convlens.model import load_model
>>> m = load_model("../shared/fixtures/cnn-explainer/model.json")  # doctest: +SKIP
>>> m.spec.shape, len(m.classes)  # doctest: +SKIP
((3, 64, 64), 10)
"""

from __future__ import annotations

import math
import stat
from pathlib import Path
from typing import Any

import numpy as np

from convlens.errors import ConvlensError
from convlens.io.spec import InputSpec
from convlens.model.core import Model
from convlens.model.formats.base import input_size_override, make_model, parse_class_list
from convlens.model.formats.download import known_classes
from convlens.model.formats.keras_layers import convert, weights_by_layer
from convlens.model.formats.safety import (
    MAX_JSON_BYTES,
    Budget,
    checked_elements,
    parse_json,
    read_bounded,
    regular_file,
)
from convlens.model.load import FORMATS, LoadOptions, ModelFormat

MODEL_FILE = "model.json"
MAX_SIDE = 8192  # pixels per image side, and the largest kernel/pool/padding/stride accepted

# Stored dtype → (numpy dtype, the dtypes a quantization may stand for).
_DTYPES: dict[str, np.dtype[Any]] = {
    "float32": np.dtype("<f4"),
    "int32": np.dtype("<i4"),
    "bool": np.dtype("u1"),
}
_QUANTIZED: dict[str, np.dtype[Any]] = {
    "uint8": np.dtype("u1"),
    "uint16": np.dtype("<u2"),
    "float16": np.dtype("<f2"),
}


def model_file(source: str | Path) -> Path:
    p = Path(source)
    return p / MODEL_FILE if p.is_dir() else p


def read_model_json(path: Path) -> dict[str, Any]:
    """``model.json`` as a dict: a regular file, bounded in size and nesting, else an error.

    Read with its own size as the bound (after checking it against :data:`MAX_JSON_BYTES`):
    ``read_bounded`` reads ``limit + 1`` bytes at once, and Python allocates that much.
    """
    size = regular_file(path, "TF.js model.json").stat().st_size
    if size > MAX_JSON_BYTES:
        raise ConvlensError(
            f"TF.js model.json {str(path)!r} is {size} bytes; at most {MAX_JSON_BYTES} are accepted"
        )
    doc = parse_json(
        read_bounded(path, size, "TF.js model.json"), f"TF.js model.json {str(path)!r}"
    )
    if not isinstance(doc, dict) or not isinstance(doc.get("modelTopology"), dict):
        raise ConvlensError(
            f"{str(path)!r} is not a TensorFlow.js model.json (an object with modelTopology)"
        )
    return doc


def peek_model_json(source: str) -> dict[str, Any] | None:
    """The parsed ``model.json`` for format detection, or ``None``; never raises, never hangs."""
    path = model_file(source)
    if path.suffix.lower() != ".json":
        return None
    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_JSON_BYTES:
            return None
        doc = read_model_json(path)
    except (OSError, ConvlensError):
        return None
    return doc if "weightsManifest" in doc else None


def detect(source: str) -> bool:
    doc = peek_model_json(source)
    return doc is not None and doc.get("format") != "graph-model"


# ------------------------------------------------------------------ weights


def _entry_layout(entry: Any, where: str) -> tuple[str, tuple[int, ...], np.dtype[Any], int]:
    """(name, shape, stored dtype, byte count) of one manifest entry, validated."""
    if not isinstance(entry, dict):
        raise ConvlensError(f"{where} is not an object with name, shape and dtype")
    name = entry.get("name")
    if not isinstance(name, str):
        raise ConvlensError(f"{where} has no name")
    raw_shape = entry.get("shape", [])
    if not isinstance(raw_shape, list):
        raise ConvlensError(f"weight {name!r} has shape {raw_shape!r}; accepted: a list")
    count = checked_elements(raw_shape, what=f"weight {name!r}")
    shape = tuple(int(d) for d in raw_shape)
    kind = entry.get("dtype", "float32")
    if not isinstance(kind, str) or kind not in _DTYPES:
        raise ConvlensError(f"weight {name!r} has dtype {kind!r}; accepted: {', '.join(_DTYPES)}")
    dtype = _DTYPES[kind]
    quant = entry.get("quantization")
    if quant is not None:
        if not isinstance(quant, dict) or str(quant.get("dtype")) not in _QUANTIZED:
            q = quant.get("dtype") if isinstance(quant, dict) else quant
            raise ConvlensError(
                f"weight {name!r} is quantized as {q!r}; accepted: {', '.join(_QUANTIZED)}"
            )
        if quant["dtype"] != "float16":
            for key in ("scale", "min"):
                v = quant.get(key)
                if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                    raise ConvlensError(
                        f"weight {name!r} is quantized to {quant['dtype']} without a finite "
                        f"{key!r}; accepted: numbers scale and min"
                    )
        elif kind != "float32":
            raise ConvlensError(f"weight {name!r}: float16 quantization of {kind} is refused")
        dtype = _QUANTIZED[quant["dtype"]]
    return name, shape, dtype, count * dtype.itemsize


def _shard_path(folder: Path, rel: Any) -> Path:
    if not isinstance(rel, str) or not rel or rel.startswith(("/", "\\")) or "\\" in rel:
        raise ConvlensError(f"weight shard path {rel!r} is refused; accepted: a file name")
    shard = (folder / rel).resolve()
    if folder.resolve() not in shard.parents:
        raise ConvlensError(f"weight shard {rel!r} lies outside the model folder")
    return shard


def _decode(buf: bytes, offset: int, entry: dict[str, Any], layout: Any) -> np.ndarray:
    _, shape, dtype, nbytes = layout
    count = nbytes // dtype.itemsize
    arr = np.frombuffer(buf, dtype=dtype, count=count, offset=offset)
    quant = entry.get("quantization")
    if quant is not None and quant["dtype"] != "float16":
        out = arr.astype(np.float32) * np.float32(quant["scale"]) + np.float32(quant["min"])
        if entry.get("dtype") == "int32":  # TF.js rounds dequantized integers
            out = np.round(out)
    elif entry.get("dtype", "float32") == "float32":
        out = arr.astype(np.float32)
    else:
        out = arr.astype(np.int64)
    return out.reshape(shape)


def _mismatch(size: int, entries: list[tuple[dict[str, Any], Any]]) -> str:
    """Why shards of ``size`` bytes do not fit the entries: which weight they cut short."""
    end = 0
    for _, (name, _, _, nbytes) in entries:
        end += nbytes
        if end > size:
            return f"end before weight {name!r} (need {end} bytes, have {size})"
    return f"hold {size} bytes but model.json declares {end}"


def read_weights(
    folder: Path, manifest: Any, budget: Budget | None = None
) -> list[tuple[str, np.ndarray]]:
    """Every weight of the manifest as ``(name, array)``, in file order.

    All declared shapes are checked and charged to ``budget``, and each group's shards are
    checked to be regular files whose sizes add up to exactly what the group declares, before
    the first shard byte is read.
    """
    if not isinstance(manifest, list):
        raise ConvlensError("weightsManifest is not a list of weight groups")
    budget = budget or Budget()
    plans: list[tuple[list[Path], list[tuple[dict[str, Any], Any]], int]] = []
    for g, group in enumerate(manifest):
        if not isinstance(group, dict) or not isinstance(group.get("weights", []), list):
            raise ConvlensError(f"weightsManifest group {g} is not an object with weights")
        paths = group.get("paths", [])
        if not isinstance(paths, list):
            raise ConvlensError(f"weightsManifest group {g} has no list of paths")
        entries = []
        total = 0
        for i, entry in enumerate(group.get("weights", [])):
            layout = _entry_layout(entry, f"weightsManifest group {g} weight {i}")
            budget.take(layout[3], f"weight {layout[0]!r}")
            entries.append((entry, layout))
            total += layout[3]
        shards = [regular_file(_shard_path(folder, rel), "weight shard") for rel in paths]
        size = sum(p.stat().st_size for p in shards)
        if size != total:
            raise ConvlensError(f"weight group {g}'s shards {paths} " + _mismatch(size, entries))
        plans.append((shards, entries, total))
    out: list[tuple[str, np.ndarray]] = []
    for shards, entries, total in plans:
        buf = b"".join(read_bounded(p, p.stat().st_size, "weight shard") for p in shards)
        if len(buf) != total:
            raise ConvlensError(f"weight shards {[p.name for p in shards]} changed while read")
        offset = 0
        for entry, layout in entries:
            out.append((layout[0], _decode(buf, offset, entry, layout)))
            offset += layout[3]
    return out


# ------------------------------------------------------------------ Keras config checks


def _ints(value: Any) -> list[int]:
    """Every integer in a config value (nested lists included), for bounds checks."""
    if isinstance(value, bool):
        return []
    if isinstance(value, int):
        return [value]
    if isinstance(value, list):
        return [i for v in value for i in _ints(v)]
    return []


def _layer_configs(topology: dict[str, Any]) -> list[tuple[int, dict[str, Any]]]:
    cfg = topology.get("model_config", topology)
    inner = cfg.get("config") if isinstance(cfg, dict) else None
    layers = inner.get("layers") if isinstance(inner, dict) else inner
    if not isinstance(layers, list):
        return []
    return [(i, lay) for i, lay in enumerate(layers) if isinstance(lay, dict)]


def check_config_sizes(topology: dict[str, Any], named: list[tuple[str, np.ndarray]]) -> None:
    """Refuse a Keras config whose sizes disagree with the weights before modules are built.

    The converter allocates ``nn.Linear(n_in, units)`` and ``nn.Conv2d(.., filters, k)`` from
    the config; a hostile config declaring ``units: 10**9`` would allocate gigabytes before the
    weight shapes are compared. So every ``units``/``filters``/``kernel_size``/
    ``depth_multiplier`` must match the layer's weights in the manifest (already budgeted), and
    sizes, strides and paddings must be at most :data:`MAX_SIDE`.
    """
    by_layer = weights_by_layer(named)
    for i, lay in _layer_configs(topology):
        cfg = lay.get("config") if isinstance(lay.get("config"), dict) else {}
        assert isinstance(cfg, dict)
        where = f"layer {i} ({cfg.get('name')!r}, {lay.get('class_name')})"
        for key in ("batch_input_shape", "batch_shape"):
            shape = cfg.get(key)
            if isinstance(shape, list):
                dims = [d for d in shape[1:] if d is not None]
                checked_elements(dims, what=f"{where} input")
                if any(d > MAX_SIDE for d in _ints(dims)):
                    raise ConvlensError(f"{where}: input shape {shape} is over {MAX_SIDE} a side")
        for key in ("kernel_size", "pool_size", "strides", "dilation_rate", "padding",
                    "cropping", "size"):  # fmt: skip
            if any(v < 0 or v > MAX_SIDE for v in _ints(cfg.get(key))):
                raise ConvlensError(
                    f"{where}: {key} {cfg.get(key)!r} is refused; accepted: 0..{MAX_SIDE}"
                )
        weights = by_layer.get(str(cfg.get("name")).replace(".", "_")) or by_layer.get(
            str(cfg.get("name")), []
        )
        _check_layer_weights(where, cfg, weights)


# Which weight carries each config size (Keras 3 calls a depthwise kernel just "kernel").
_SIZE_WEIGHTS = {
    "units": ("kernel",),
    "filters": ("pointwise_kernel", "kernel"),
    "depth_multiplier": ("depthwise_kernel", "kernel"),
    "kernel_size": ("depthwise_kernel", "kernel"),
}


def _check_layer_weights(
    where: str, cfg: dict[str, Any], weights: list[tuple[str | None, np.ndarray]]
) -> None:
    named = {short: arr for short, arr in weights if short}
    for key, candidates in _SIZE_WEIGHTS.items():
        if key not in cfg:
            continue
        value = cfg[key]
        found = [named[c] for c in candidates if c in named]
        kernel = found[0] if found else (weights[0][1] if weights and not named else None)
        if kernel is None:
            raise ConvlensError(f"{where} declares {key} {value!r} but has no kernel weights")
        if key == "kernel_size":
            pair = [value, value] if isinstance(value, int) else value
            ok = isinstance(pair, list) and kernel.ndim == 4 and list(kernel.shape[:2]) == pair
        else:
            ok = _ints(value) == [value] and kernel.ndim > 0 and kernel.shape[-1] == value
        if not ok:
            raise ConvlensError(
                f"{where}: {key} {value!r} does not match its kernel's shape {kernel.shape}"
            )


def metadata_classes(doc: dict[str, Any]) -> list[str] | None:
    """Class names a converter put in ``userDefinedMetadata`` (``classes`` or ``labels``)."""
    meta = doc.get("userDefinedMetadata")
    if not isinstance(meta, dict):
        return None
    return parse_class_list(meta.get("classes", meta.get("labels")))


def load(source: str, opts: LoadOptions) -> Model:
    path = model_file(source)
    doc = read_model_json(path)
    if doc.get("format") == "graph-model":
        from convlens.model.formats import tfjs_graph

        return tfjs_graph.load(source, opts)
    topology = doc["modelTopology"]
    named = read_weights(path.parent, doc.get("weightsManifest") or [])
    check_config_sizes(topology, named)
    try:
        conv = convert(topology, weights_by_layer(named), input_size_override(opts.input_spec))
    except ConvlensError:
        raise
    except (TypeError, AttributeError, KeyError, IndexError, AssertionError, SyntaxError,
            RuntimeError, ArithmeticError) as e:  # fmt: skip
        # A safety net: a config value of the wrong type must not reach the user as a traceback.
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ConvlensError(
            f"{str(path)!r}: the Keras config in modelTopology cannot be converted "
            f"({type(e).__name__}: {first})"
        ) from None
    spec = InputSpec(conv.channels, conv.height, conv.width, conv.mean, conv.std)
    known = known_classes(path)  # the published CNN Explainer model, recognised by checksum
    name = "cnn-explainer" if known else conv.name
    model = make_model(
        conv.net,
        spec,
        path,
        opts.classes,
        file_classes=known or metadata_classes(doc),
        name=name if name != "sequential" else path.parent.name or "tfjs-model",
        input_overrides=opts.input_spec,
    )
    return model.eval()  # else Model.probabilities restores the wrapper's training mode


FORMATS.add(
    "tfjs",
    ModelFormat(detect, load, "a TensorFlow.js layers model (model.json + weight shards)"),
)

# Registers the graph-model format, which shares this module's weight reader.
from convlens.model.formats import tfjs_graph as _tfjs_graph  # noqa: E402

__all__ = ["_tfjs_graph", "detect", "load", "model_file", "read_model_json", "read_weights"]
