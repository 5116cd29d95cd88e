"""Hostile Keras files: each is refused with a one-line ConvlensError before data is read.

The files start as real Keras 3 saves (``.keras`` and legacy ``.h5``) of a small CNN; one
thing is then changed with h5py / zipfile: a weight stored in an external file
(``/etc/passwd``), a virtual dataset, links leading elsewhere, string and compound weights,
a huge declared shape, a zip bomb, a config nested thousands deep.
"""

from __future__ import annotations

import io
import json
import os
import tracemalloc
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from convlens.errors import ConvlensError
from convlens.model import load_model

h5py = pytest.importorskip("h5py")
os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")

Edit = Callable[[Any, str], None]  # (open h5 file, path of the conv kernel dataset)


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A small CNN saved by Keras 3 as .keras and .h5."""
    layers = keras.layers
    model = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            layers.Conv2D(4, 3, name="conv"),
            layers.GlobalAveragePooling2D(),
            layers.Dense(3, name="fc"),
        ]
    )
    out = tmp_path_factory.mktemp("keras-hostile")
    paths = {"keras": out / "m.keras", "h5": out / "m.h5"}
    for p in paths.values():
        model.save(p)
    return paths


def _kernel_path(f: Any) -> str:
    found: list[str] = []
    f.visititems(lambda name, obj: found.append(name) if getattr(obj, "ndim", 0) == 4 else None)
    assert found, "the saved model has a conv kernel"
    return found[0]


def edited(saved: dict[str, Path], kind: str, tmp_path: Path, edit: Edit) -> Path:
    """A copy of the saved model with ``edit`` applied to its weights HDF5 file."""
    out = tmp_path / f"bad.{kind}"
    if kind == "h5":
        out.write_bytes(saved["h5"].read_bytes())
        with h5py.File(out, "r+") as f:
            edit(f, _kernel_path(f))
        return out
    with zipfile.ZipFile(saved["keras"]) as z:
        members = {n: z.read(n) for n in z.namelist()}
    buf = io.BytesIO(members["model.weights.h5"])
    with h5py.File(buf, "r+") as f:
        edit(f, _kernel_path(f))
    members["model.weights.h5"] = buf.getvalue()
    with zipfile.ZipFile(out, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return out


def _replace(f: Any, path: str, **kwargs: Any) -> None:
    del f[path]
    f.create_dataset(path, **kwargs)


def external_passwd(f: Any, path: str) -> None:
    shape = f[path].shape
    _replace(
        f, path, shape=shape, dtype="f4", external=[("/etc/passwd", 0, 4 * int(np.prod(shape)))]
    )


def virtual(f: Any, path: str) -> None:
    shape = f[path].shape
    layout = h5py.VirtualLayout(shape=shape, dtype="f4")
    layout[...] = h5py.VirtualSource("/etc/other.h5", "data", shape=shape)
    del f[path]
    f.create_virtual_dataset(path, layout)


def strings(f: Any, path: str) -> None:
    _replace(f, path, data=np.array([b"evil"] * 4))


def compound(f: Any, path: str) -> None:
    _replace(f, path, data=np.zeros(4, dtype=[("a", "f4"), ("b", "i4")]))


def objects(f: Any, path: str) -> None:
    _replace(f, path, data=["a", "bb"], dtype=h5py.string_dtype())


def external_link(f: Any, path: str) -> None:
    del f[path]
    f[path] = h5py.ExternalLink("/etc/passwd", "/data")


def soft_link(f: Any, path: str) -> None:
    del f[path]
    f[path] = h5py.SoftLink("/somewhere/else")


def huge(f: Any, path: str) -> None:
    """10¹¹ declared values, stored as unwritten chunks: a tiny file."""
    _replace(f, path, shape=(100_000, 1_000_000), dtype="f4", chunks=(1, 1024))


CASES: dict[str, tuple[Edit, str]] = {
    "external": (external_passwd, r"external file \('/etc/passwd'\).*refused"),
    "virtual": (virtual, "virtual dataset.*refused"),
    "strings": (strings, "dtype.*accepted: plain integer or floating-point"),
    "compound": (compound, "dtype.*accepted: plain integer or floating-point"),
    "objects": (objects, "dtype.*accepted: plain integer or floating-point"),
    "external-link": (external_link, "ExternalLink.*refused"),
    "soft-link": (soft_link, "SoftLink.*refused"),
    "huge": (huge, r"declares shape \(100000, 1000000\).*over the budget"),
}


@pytest.mark.parametrize("kind", ["keras", "h5"])
@pytest.mark.parametrize("case", list(CASES))
def test_hostile_weights_refused(
    saved: dict[str, Path], tmp_path: Path, kind: str, case: str
) -> None:
    edit, message = CASES[case]
    path = edited(saved, kind, tmp_path, edit)
    tracemalloc.start()
    try:
        with pytest.raises(ConvlensError, match=message) as info:
            load_model(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "\n" not in str(info.value)
    assert peak < 64 << 20  # nothing the size of the declared data was allocated


def test_weights_over_the_model_budget(
    saved: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under the per-tensor bound, but 1.6 GB declared against a 64 MB model budget."""
    path = edited(
        saved,
        "h5",
        tmp_path,
        lambda f, p: _replace(f, p, shape=(20_000, 20_000), dtype="f4", chunks=(1, 1024)),
    )
    monkeypatch.setenv("CONVLENS_MAX_MODEL_MB", "64")
    with pytest.raises(ConvlensError, match="over the budget of 67108864 bytes"):
        load_model(path)


def _rezip(source: Path, out: Path, **replace: bytes) -> Path:
    with zipfile.ZipFile(source) as z:
        members = {n: z.read(n) for n in z.namelist()}
    members.update(replace)
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return out


def test_zip_bomb_refused_before_extraction(
    saved: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """200 MB of zeros deflate ~1000-fold; with a small budget the declared size is refused."""
    path = _rezip(saved["keras"], tmp_path / "bomb.keras", **{"model.weights.h5": bytes(200 << 20)})
    assert path.stat().st_size < 1 << 20
    monkeypatch.setenv("CONVLENS_MAX_MODEL_MB", "100")
    tracemalloc.start()
    try:
        with pytest.raises(ConvlensError, match=r"zip bomb|over the model budget"):
            load_model(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 32 << 20


def test_deeply_nested_config_refused(saved: dict[str, Path], tmp_path: Path) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    path = _rezip(saved["keras"], tmp_path / "deep.keras", **{"config.json": deep})
    with pytest.raises(ConvlensError, match="nests deeper than 64 levels"):
        load_model(path)
    h5 = tmp_path / "deep.h5"
    h5.write_bytes(saved["h5"].read_bytes())
    with h5py.File(h5, "r+") as f:
        f.attrs["model_config"] = deep.decode()
    with pytest.raises(ConvlensError, match="nests deeper than 64 levels"):
        load_model(h5)


def test_config_that_is_not_a_model(saved: dict[str, Path], tmp_path: Path) -> None:
    for text in (b'"just a string"', b'{"class_name": "Sequential", "config": {"layers": 7}}'):
        path = _rezip(saved["keras"], tmp_path / "odd.keras", **{"config.json": text})
        with pytest.raises(ConvlensError):
            load_model(path)


def test_missing_reference_in_graph(saved: dict[str, Path], tmp_path: Path) -> None:
    """A layer reading a tensor no layer makes (and a reference cycle) is a clear error."""
    inp = keras.Input((6, 6, 3))
    a = keras.layers.Conv2D(2, 1, name="a")(inp)
    b = keras.layers.Conv2D(2, 1, name="b")(a)
    model = keras.Model(inp, keras.layers.GlobalMaxPooling2D(name="g")(b))
    model.save(tmp_path / "g.keras")
    with zipfile.ZipFile(tmp_path / "g.keras") as z:
        cfg = json.loads(z.read("config.json"))
    lays = {la["name"]: la for la in cfg["config"]["layers"]}
    hist = lays["b"]["inbound_nodes"][0]["args"][0]["config"]["keras_history"]
    for target, message in (("nothing", "reads 'nothing', which no layer"), ("b", "cycle")):
        hist[0] = target
        bad = _rezip(
            tmp_path / "g.keras",
            tmp_path / "bad.keras",
            **{"config.json": json.dumps(cfg).encode()},
        )
        with pytest.raises(ConvlensError, match=message):
            load_model(bad)


def test_fifo_is_not_opened(tmp_path: Path) -> None:
    fifo = tmp_path / "model.h5"
    os.mkfifo(fifo)
    for fmt in ("keras-h5", "keras"):
        with pytest.raises(ConvlensError, match="not a regular file"):
            load_model(fifo, format=fmt)
