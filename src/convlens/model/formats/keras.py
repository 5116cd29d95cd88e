"""Keras models without TensorFlow: ``.keras`` archives and legacy ``.h5`` files, via h5py.

- Legacy HDF5 (``model.save("m.h5")``, Keras 2 and Keras 3): the model config is the JSON
  attribute ``model_config`` of the root; the weights are in ``model_weights/<layer>/`` with
  the attribute ``weight_names`` giving their order and paths (Keras 2 ``conv/kernel:0``,
  Keras 3 ``conv/kernel``; a nested model's group lists all of its layers' weights).
- ``.keras`` (Keras 3): a zip holding ``config.json`` and ``model.weights.h5``. Keras 3 does
  NOT store a layer's variables under its name: it walks ``model.layers`` in order and names
  each ``snake_case(class) + _<n>``, counting per class within the model (``layers/conv2d``,
  ``layers/conv2d_1``, ...; a nested model's layers under ``layers/functional/layers/...``),
  each with ``vars/0, 1, ...`` in the layer's variable order. The same walk over the
  archive's own ``config.json`` recovers the mapping; newer Keras also writes each layer's
  name as the ``name`` attribute of its ``vars`` group, which is preferred when present.
  Keras 2.13-2.15 wrote ``_layer_checkpoint_dependencies/<layer name>/vars``.

Model files are treated as hostile. Only regular files are opened; a ``.keras`` archive's
members are judged by their declared sizes before extraction; JSON is depth-checked; every
HDF5 object is reached through hard links only (soft and external links are refused), and a
weight dataset is read only after its storage (no external files, no virtual datasets), its
dtype (plain numbers) and its declared size (:class:`~convlens.model.formats.safety.Budget`)
are checked. No Python code (Lambda layers, custom objects) is ever deserialized.

>>> m = load_model("classifier.keras", classes="classes.txt")  # doctest: +SKIP
"""

from __future__ import annotations

import io
import re
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from convlens.errors import ConvlensError
from convlens.io.spec import InputSpec
from convlens.model.core import Model
from convlens.model.formats import safety
from convlens.model.formats.base import input_size_override, make_model
from convlens.model.formats.keras_layers import MODEL_CLASSES, Weights, convert, weights_by_layer
from convlens.model.load import FORMATS, LoadOptions, ModelFormat

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
MAX_WEIGHT_NAMES = 10_000  # per layer; a real layer has a handful


def _h5py() -> Any:
    try:
        import h5py
    except ImportError:
        raise ConvlensError(
            "reading Keras files needs h5py: pip install 'convlens[formats]'"
        ) from None
    return h5py


def is_h5(source: str) -> bool:
    p = Path(source)
    if p.suffix.lower() not in (".h5", ".hdf5", ".keras") or not p.is_file():
        return False
    with p.open("rb") as f:
        return f.read(8) == HDF5_SIGNATURE


def is_keras_zip(source: str) -> bool:
    p = Path(source)
    if p.suffix.lower() != ".keras" or not p.is_file() or not zipfile.is_zipfile(p):
        return False
    try:
        with zipfile.ZipFile(p) as z:
            return "config.json" in z.namelist()
    except (zipfile.BadZipFile, OSError):
        return False


_H5_ERRORS = (OSError, RuntimeError, KeyError, ValueError, TypeError, AttributeError)


def _first_line(e: BaseException) -> str:
    text = str(e).strip("'\"") or type(e).__name__
    return text.splitlines()[0]


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


# ------------------------------------------------------------------ safe HDF5 access


class _H5:
    """Checked access to one HDF5 file: hard links only, plain numeric datasets, a budget."""

    def __init__(self, h5py: Any, source: str, budget: safety.Budget) -> None:
        self.h5py, self.source, self.budget = h5py, source, budget

    def child(self, group: Any, path: str) -> Any:
        """``group[path]``, following hard links only (soft/external links are refused)."""
        node = group
        for part in [p for p in path.split("/") if p]:
            if not isinstance(node, self.h5py.Group):
                raise ConvlensError(f"{self.source!r}: {path!r} is not inside an HDF5 group")
            link = node.get(part, getlink=True)
            if link is None:
                return None
            if not isinstance(link, self.h5py.HardLink):
                kind = type(link).__name__
                raise ConvlensError(
                    f"{self.source!r}: HDF5 object {path!r} is a {kind}; only objects stored in "
                    "the file itself are read (soft and external links are refused)"
                )
            node = node[part]
        return node

    def attr_text(self, obj: Any, name: str, limit: int = safety.MAX_JSON_BYTES) -> str | None:
        """A string attribute, its stored size checked before it is read."""
        if name not in obj.attrs:
            return None
        aid = obj.attrs.get_id(name)
        if aid.dtype.kind not in "SUO" or aid.shape not in ((), (1,)):
            raise ConvlensError(f"{self.source!r}: attribute {name!r} is not a single string")
        # A variable-length string's size is known only once read; the file's size (checked
        # on opening) bounds it, and the text is checked before it is parsed.
        value = obj.attrs[name]
        if isinstance(value, np.ndarray):
            value = value.reshape(-1)[0]
        text = _text(value)
        if len(text) > limit:
            raise ConvlensError(f"{self.source!r}: attribute {name!r} is over {limit} bytes")
        return text

    def attr_names(self, obj: Any, name: str) -> list[str]:
        """A list-of-strings attribute (``layer_names``, ``weight_names``), bounded."""
        if name not in obj.attrs:
            return []
        aid = obj.attrs.get_id(name)
        if aid.shape and safety.checked_elements(aid.shape, name) > MAX_WEIGHT_NAMES:
            raise ConvlensError(f"{self.source!r}: attribute {name!r} lists too many names")
        if aid.dtype.kind not in "SUO" and aid.shape and aid.shape[0]:
            raise ConvlensError(f"{self.source!r}: attribute {name!r} is not a list of names")
        value = obj.attrs[name]
        items = value.reshape(-1).tolist() if isinstance(value, np.ndarray) else [value]
        return [_text(v) for v in items]

    def array(self, ds: Any, what: str) -> np.ndarray:
        """A weight dataset as float32, after checking its storage, dtype and declared size."""
        h5py = self.h5py
        if not isinstance(ds, h5py.Dataset):
            raise ConvlensError(f"{self.source!r}: weight {what!r} is not an HDF5 dataset")
        if ds.external:
            raise ConvlensError(
                f"{self.source!r}: weight {what!r} keeps its data in an external file "
                f"({_text(ds.external[0][0])!r}); refused: only data inside the model file is read"
            )
        if ds.is_virtual:
            raise ConvlensError(
                f"{self.source!r}: weight {what!r} is a virtual dataset mapping other files; "
                "refused"
            )
        dtype = ds.dtype
        if dtype.fields is not None or dtype.kind not in "fiub" or dtype.itemsize > 8:
            raise ConvlensError(
                f"{self.source!r}: weight {what!r} has dtype {dtype}; accepted: plain "
                "integer or floating-point numbers"
            )
        count = safety.checked_elements(ds.shape or (), f"weight {what!r}")
        self.budget.take(count * 4, f"weight {what!r}")
        return np.asarray(ds[()], dtype=np.float32)


# ------------------------------------------------------------------ legacy HDF5


def _legacy_weights(h5: _H5, group: Any, models: set[str]) -> Weights:
    """Weights grouped by layer: a layer's group is named after it (Keras 2.0 named the
    weights themselves after a uniquified scope, ``conv2d_1_1/kernel:0``); a nested model's
    group (a name in ``models``) holds its layers' weights under their own names."""
    named: list[tuple[str, np.ndarray]] = []
    for layer_name in h5.attr_names(group, "layer_names"):
        lg = h5.child(group, layer_name)
        if lg is None:
            raise ConvlensError(f"{h5.source!r}: the weights of layer {layer_name!r} are missing")
        for wname in h5.attr_names(lg, "weight_names"):
            ds = h5.child(lg, wname)
            if ds is None:
                raise ConvlensError(f"{h5.source!r}: weight {wname!r} is missing")
            parts = wname.split(":")[0].split("/")
            layer = parts[-2] if layer_name in models and len(parts) >= 2 else layer_name
            named.append((f"{layer}/{parts[-1]}", h5.array(ds, wname)))
    return weights_by_layer(named)


def _model_names(cfg: Any, depth: int = 0) -> set[str]:
    """Names of the nested models (Sequential/Functional layers) anywhere in a config."""
    inner = cfg.get("config") if isinstance(cfg, dict) else None
    layers = inner.get("layers") if isinstance(inner, dict) else inner
    found: set[str] = set()
    if not isinstance(layers, list) or depth > 32:
        return found
    for lay in layers:
        if isinstance(lay, dict) and lay.get("class_name") in MODEL_CLASSES:
            c = lay.get("config")
            found.add(str(lay.get("name") or (c.get("name") if isinstance(c, dict) else "")))
            found |= _model_names(lay, depth + 1)
    return found


def _keras_major(version: str | None) -> bool | None:
    """True for a Keras 3 file, False for Keras 2, None when unknown."""
    m = re.match(r"\s*(\d+)\.", version or "")
    return None if m is None else int(m.group(1)) >= 3


def read_h5(path: str) -> tuple[dict[str, Any], Weights, bool | None]:
    """The model config, weights and Keras major version (3 → True) of a legacy ``.h5``."""
    h5py = _h5py()
    p = safety.regular_file(path)
    size, limit = p.stat().st_size, safety.model_budget_bytes() + safety.MAX_JSON_BYTES
    if size > limit:
        raise ConvlensError(f"{path!r} is {size} bytes, over the model budget of {limit} bytes")
    try:
        with h5py.File(p, "r") as f:
            h5 = _H5(h5py, str(path), safety.Budget())
            config = h5.attr_text(f, "model_config")
            if config is None:
                raise ConvlensError(
                    f"{path!r} holds Keras weights only, no model config; save the whole model "
                    "(model.save) as .keras or .h5"
                )
            weights_group = h5.child(f, "model_weights") or f
            version = h5.attr_text(f, "keras_version", 256) or h5.attr_text(
                weights_group, "keras_version", 256
            )
            cfg = safety.parse_json(config, f"the model config of {path!r}")
            models = _model_names(cfg)
            return cfg, _legacy_weights(h5, weights_group, models), _keras_major(version)
    except ConvlensError:
        raise
    except _H5_ERRORS as e:  # h5py reports a damaged file with any of these
        raise ConvlensError(
            f"cannot read {path!r} as a Keras HDF5 file: {_first_line(e)}"
        ) from None


# ------------------------------------------------------------------ .keras zip


def snake_case(name: str) -> str:
    """Keras's ``to_snake_case``: ``DepthwiseConv2D`` → ``depthwise_conv2d``.

    >>> snake_case("BatchNormalization"), snake_case("ReLU"), snake_case("Conv2D")
    ('batch_normalization', 're_lu', 'conv2d')
    """
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _vars(h5: _H5, group: Any, what: str) -> list[tuple[str | None, np.ndarray]]:
    """The ``vars/0, 1, ...`` datasets of a Keras 3 layer group, in index order."""
    vars_group = h5.child(group, "vars")
    if vars_group is None:
        return []
    keys = list(vars_group.keys())
    if len(keys) > MAX_WEIGHT_NAMES or not all(k.isdigit() for k in keys):
        raise ConvlensError(f"{h5.source!r}: the variables of {what!r} are not numbered 0, 1, ...")
    return [
        (None, h5.array(h5.child(vars_group, k), f"{what}/vars/{k}")) for k in sorted(keys, key=int)
    ]


def _vars_name(h5: _H5, group: Any) -> str | None:
    vars_group = h5.child(group, "vars")
    return None if vars_group is None else h5.attr_text(vars_group, "name", 4096)


def _keras3_model_weights(h5: _H5, group: Any, cfg: dict[str, Any], key: str, out: Weights) -> None:
    """Weights of the layers of model ``cfg`` saved under ``group``, keyed as the converter
    keys them (``name``, or ``outer/name`` inside a nested model)."""
    inner = cfg.get("config")
    layers = inner.get("layers") if isinstance(inner, dict) else inner
    container = h5.child(group, "layers")
    if not isinstance(layers, list) or container is None:
        return
    by_name: dict[str, Any] = {}  # from the "name" attribute newer Keras writes
    for child_name in list(container.keys())[: MAX_WEIGHT_NAMES * 10]:
        child = h5.child(container, child_name)
        name = _vars_name(h5, child) if child is not None else None
        if name is not None:
            by_name[name] = child
    counters: dict[str, int] = {}
    for lay in layers:
        if not isinstance(lay, dict):
            continue
        lay_cfg = lay.get("config")
        name = str((lay_cfg.get("name") if isinstance(lay_cfg, dict) else None) or lay.get("name"))
        if str(lay.get("module", "")).startswith("keras.src.ops"):
            continue  # an operation on tensors (x + y), not a layer: not in model.layers
        base = snake_case(str(lay.get("class_name", "")))
        n = counters.get(base)
        counters[base] = 0 if n is None else n + 1
        path = base if n is None else f"{base}_{n + 1}"
        child = by_name.get(name)
        if child is None:
            child = h5.child(container, path)
        if child is None:
            continue
        qualified = f"{key}/{name}" if key else name
        if lay.get("class_name") in MODEL_CLASSES:
            _keras3_model_weights(h5, child, lay, qualified, out)
        else:
            found = _vars(h5, child, qualified)
            if found:
                out[qualified] = found


def _keras213_weights(h5: _H5, group: Any, out: Weights, depth: int = 0) -> None:
    """Keras 2.13-2.15: ``_layer_checkpoint_dependencies/<layer name>/vars``, nested alike."""
    deps = h5.child(group, "_layer_checkpoint_dependencies")
    if deps is None or depth > 16:
        return
    for name in deps:
        child = h5.child(deps, name)
        found = _vars(h5, child, name)
        if found:
            out[name] = found
        _keras213_weights(h5, child, out, depth + 1)


def read_keras_zip(path: str) -> tuple[dict[str, Any], Weights, bool | None]:
    """Config, weights and Keras major version (3 → True) of a ``.keras`` archive."""
    h5py = _h5py()
    budget = safety.Budget()
    try:
        config, version, data = _read_archive(path, budget)
    except ConvlensError:
        raise
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error, NotImplementedError) as e:
        raise ConvlensError(f"{path!r} is a damaged .keras archive: {_first_line(e)}") from None
    if not isinstance(config, dict):
        raise ConvlensError(f"config.json of {path!r} is not a Keras model config")
    try:
        with h5py.File(io.BytesIO(data), "r") as f:
            h5 = _H5(h5py, f"{path}:model.weights.h5", budget)
            weights: Weights = {}
            _keras3_model_weights(h5, f, config, "", weights)
            _keras213_weights(h5, f, weights)
    except ConvlensError:
        raise
    except _H5_ERRORS as e:
        raise ConvlensError(f"cannot read the weights of {path!r}: {_first_line(e)}") from None
    return config, weights, _keras_major(str(version) if version else None)


def _read_archive(path: str, budget: safety.Budget) -> tuple[Any, Any, bytes]:
    """``config.json`` (parsed), the Keras version and ``model.weights.h5``'s bytes."""
    with safety.check_zip(path) as z:
        config = safety.parse_json(
            safety.read_member(z, "config.json", safety.MAX_JSON_BYTES),
            f"config.json of {path!r}",
        )
        version = None
        if "metadata.json" in z.namelist():
            meta = safety.parse_json(
                safety.read_member(z, "metadata.json", 1 << 20), f"metadata.json of {path!r}"
            )
            version = meta.get("keras_version") if isinstance(meta, dict) else None
        if "model.weights.h5" not in z.namelist():
            raise ConvlensError(
                f"{path!r} has no model.weights.h5 inside (sharded or npz weights are not read)"
            )
        data = safety.read_member(z, "model.weights.h5", budget.limit)
    return config, version, data


# ------------------------------------------------------------------ loading


def _load(
    source: str, opts: LoadOptions, config: dict[str, Any], weights: Weights, k3: bool | None
) -> Model:
    conv = convert(config, weights, input_size_override(opts.input_spec), keras3=k3)
    spec = InputSpec(conv.channels, conv.height, conv.width, conv.mean, conv.std)
    generic = conv.name in ("sequential", "model", "functional") or conv.name.startswith(
        ("sequential_", "functional_", "model_")
    )
    return make_model(
        conv.net,
        spec,
        source,
        opts.classes,
        name=Path(source).stem if generic else conv.name,
        input_overrides=opts.input_spec,
    )


def load_h5(source: str, opts: LoadOptions) -> Model:
    config, weights, k3 = read_h5(source)
    return _load(source, opts, config, weights, k3)


def load_keras(source: str, opts: LoadOptions) -> Model:
    config, weights, k3 = read_keras_zip(source)
    return _load(source, opts, config, weights, k3)


FORMATS.add(
    "keras",
    ModelFormat(is_keras_zip, load_keras, "a Keras .keras archive (Sequential or Functional)"),
)
FORMATS.add(
    "keras-h5",
    ModelFormat(is_h5, load_h5, "a legacy Keras .h5 model (Sequential or Functional)"),
)
