"""Keras models without TensorFlow: ``.keras`` archives and legacy ``.h5`` files, via h5py.

- Legacy HDF5 (``model.save("m.h5")``, Keras 2): the model config is the JSON attribute
  ``model_config`` of the root; the weights are in ``model_weights/<layer>/`` with the
  attribute ``weight_names`` giving their order (``conv/kernel:0``, ``conv/bias:0``).
- ``.keras`` (Keras 2.13+ and 3): a zip holding ``config.json`` and ``model.weights.h5``,
  where each layer's variables are ``layers/<layer>/vars/0, 1, ...`` (Keras 3) or
  ``_layer_checkpoint_dependencies/<layer>/vars/...`` (Keras 2.13-2.15), in the layer's
  variable order (kernel, bias; gamma, beta, moving mean, moving variance).

Only configs and arrays are read: no Python code (Lambda layers, custom objects) is ever
deserialized, so a model file cannot run code. The layers are converted by
:mod:`convlens.model.formats.keras_layers`. ``h5py`` comes with the ``formats`` extra.

>>> m = load_model("classifier.keras", classes="classes.txt")  # doctest: +SKIP
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from convlens.errors import ConvlensError
from convlens.io.spec import InputSpec
from convlens.model.core import Model
from convlens.model.formats.base import input_size_override, make_model
from convlens.model.formats.keras_layers import Weights, convert, weights_by_layer
from convlens.model.load import FORMATS, LoadOptions, ModelFormat

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
WEIGHT_GROUPS = ("layers", "_layer_checkpoint_dependencies")


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
    with zipfile.ZipFile(p) as z:
        return "config.json" in z.namelist()


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


# ------------------------------------------------------------------ legacy HDF5


def _legacy_weights(group: Any) -> Weights:
    named: list[tuple[str, np.ndarray]] = []
    for layer in group.attrs.get("layer_names", []):
        layer_name = _text(layer)
        lg = group[layer_name]
        for w in lg.attrs.get("weight_names", []):
            wname = _text(w)
            arr = np.asarray(lg[wname])
            short = wname.split(":")[0].rsplit("/", 1)[-1]
            named.append((f"{layer_name}/{short}", arr))
    return weights_by_layer(named)


def read_h5(path: str) -> tuple[dict[str, Any], Weights]:
    h5py = _h5py()
    try:
        with h5py.File(path, "r") as f:
            config = f.attrs.get("model_config")
            if config is None:
                raise ConvlensError(
                    f"{path!r} holds Keras weights only, no model config; save the whole model "
                    "(model.save) as .keras or .h5"
                )
            weights_group = f.get("model_weights", f)
            return json.loads(_text(config)), _legacy_weights(weights_group)
    except OSError as e:
        raise ConvlensError(f"cannot read {path!r} as a Keras HDF5 file: {e}") from None


# ------------------------------------------------------------------ .keras zip


def _vars_of(group: Any) -> list[tuple[str | None, np.ndarray]]:
    """The ``vars/0, 1, ...`` datasets of a Keras 3 layer group, in index order."""
    if "vars" not in group:
        return []
    vars_group = group["vars"]
    keys = sorted(vars_group.keys(), key=lambda k: int(k) if k.isdigit() else 1 << 30)
    return [(None, np.asarray(vars_group[k])) for k in keys]


def _keras3_weights(f: Any) -> Weights:
    out: Weights = {}
    for top in WEIGHT_GROUPS:
        if top not in f:
            continue
        for name in f[top]:
            found = _vars_of(f[top][name])
            if found:
                out[name] = found
    return out


def read_keras_zip(path: str) -> tuple[dict[str, Any], Weights]:
    h5py = _h5py()
    try:
        with zipfile.ZipFile(path) as z:
            config = json.loads(z.read("config.json"))
            names = z.namelist()
            weights_name = next((n for n in names if n.endswith(".weights.h5")), None)
            if weights_name is None:
                raise ConvlensError(f"{path!r} has no model.weights.h5 inside")
            data = z.read(weights_name)
    except (OSError, zipfile.BadZipFile, KeyError, json.JSONDecodeError) as e:
        raise ConvlensError(f"cannot read {path!r} as a .keras archive: {e}") from None
    with h5py.File(io.BytesIO(data), "r") as f:
        return config, _keras3_weights(f)


# ------------------------------------------------------------------ loading


def _load(source: str, opts: LoadOptions, config: dict[str, Any], weights: Weights) -> Model:
    conv = convert(config, weights, input_size_override(opts.input_spec))
    spec = InputSpec(conv.channels, conv.height, conv.width, conv.mean, conv.std)
    return make_model(
        conv.net,
        spec,
        source,
        opts.classes,
        name=conv.name if conv.name not in ("sequential", "model") else Path(source).stem,
        input_overrides=opts.input_spec,
    )


def load_h5(source: str, opts: LoadOptions) -> Model:
    config, weights = read_h5(source)
    return _load(source, opts, config, weights)


def load_keras(source: str, opts: LoadOptions) -> Model:
    config, weights = read_keras_zip(source)
    return _load(source, opts, config, weights)


FORMATS.add(
    "keras",
    ModelFormat(is_keras_zip, load_keras, "a Keras .keras archive (Sequential or chain CNN)"),
)
FORMATS.add(
    "keras-h5",
    ModelFormat(is_h5, load_h5, "a legacy Keras .h5 model (Sequential or chain CNN)"),
)
