"""CIFAR-10 (Krizhevsky, 2009): 60,000 colour 32×32 images of 10 classes, "python version".

The folder ``cifar-10-batches-py`` holds ``data_batch_1`` … ``data_batch_5`` (train) and
``test_batch``, each a pickled dict ``{b"data": uint8 (10000, 3072), b"labels": [int], ...}``
whose rows are the red, green and blue 32×32 planes one after another, and ``batches.meta``
with the class names. Looked for in ``--data-dir`` (the folder itself, its
``cifar-10-batches-py`` subfolder, or the ``.tar.gz`` there), then in the download cache;
downloaded from the authors' page only with ``--download`` (MD5-checked).

Pickle can run arbitrary code, so these files are read with a restricted unpickler that
allows only the few numpy functions needed to rebuild an array; anything else is refused.
"""

from __future__ import annotations

import io
import pickle
import tarfile
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from convlens.data.base import DATASETS, DatasetSource, TensorImages
from convlens.data.download import cache_dir, download
from convlens.errors import ConvlensError

NAME = "cifar10"
FOLDER = "cifar-10-batches-py"
ARCHIVE = "cifar-10-python.tar.gz"
URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
MD5 = "c58f30108f718f92721af3b95e74349a"
CLASSES = ["airplane", "automobile", "bird", "cat", "deer",
           "dog", "frog", "horse", "ship", "truck"]  # fmt: skip
BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}

# Exactly what a pickled numpy array (and Python 3's protocol-2 bytes) needs.
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def safe_unpickle(data: bytes, source: str) -> Any:
    """Unpickle ``data`` allowing only numpy arrays, dicts, lists, numbers and strings."""
    try:
        return _RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except pickle.UnpicklingError as e:
        raise ConvlensError(f"{source} is not a CIFAR-10 batch: {e}") from None
    except Exception as e:  # truncated or garbled pickles raise many kinds of errors
        raise ConvlensError(f"{source} is corrupt or truncated: {e}") from None


def _key(d: dict[Any, Any], name: str) -> Any:
    for k in (name.encode(), name):
        if k in d:
            return d[k]
    raise KeyError(name)


def read_batch(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``(N, 3, 32, 32)`` uint8 and labels ``(N,)`` of one batch file."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConvlensError(f"cannot read {str(path)!r}: {e.strerror or e}") from None
    d = safe_unpickle(raw, repr(str(path)))
    try:
        data = np.asarray(_key(d, "data"), dtype=np.uint8)
        labels = np.asarray(_key(d, "labels"), dtype=np.int64)
    except (KeyError, TypeError, ValueError) as e:
        raise ConvlensError(f"{str(path)!r} is not a CIFAR-10 batch (missing {e})") from None
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(labels):
        raise ConvlensError(
            f"{str(path)!r}: expected data (N, 3072) and N labels, got {data.shape} and "
            f"{labels.shape}"
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= len(CLASSES)):
        raise ConvlensError(f"{str(path)!r} has labels outside 0..9")
    images = torch.from_numpy(data.copy()).view(-1, 3, 32, 32)  # rows are R, G, B planes
    return images, torch.from_numpy(labels)


def _batch_folder(folder: Path) -> Path | None:
    for candidate in (folder, folder / FOLDER):
        if (candidate / "test_batch").is_file():
            return candidate
    return None


def _extract(archive: Path, into: Path) -> Path:
    try:
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(into, filter="data")  # no absolute paths, links out, devices
    except (tarfile.TarError, OSError, EOFError) as e:
        raise ConvlensError(f"cannot unpack {str(archive)!r}: {e}") from None
    found = _batch_folder(into)
    if found is None:
        raise ConvlensError(f"{str(archive)!r} does not hold {FOLDER}/")
    return found


def locate(data_dir: str | None, download_ok: bool) -> Path:
    """The folder holding the batch files, following the documented search order."""
    cache = cache_dir(NAME)
    for folder in [Path(data_dir)] if data_dir else []:
        if found := _batch_folder(folder):
            return found
        if (folder / ARCHIVE).is_file():
            return _extract(folder / ARCHIVE, cache)
    if found := _batch_folder(cache):
        return found
    if download_ok:
        return _extract(download(URL, cache / ARCHIVE, MD5), cache)
    where = f"in {data_dir!r} or " if data_dir else ""
    raise ConvlensError(
        f"CIFAR-10 ({FOLDER}/ or {ARCHIVE}) not found {where}in {str(cache)!r}. Accepted "
        f"ways: pass --data-dir FOLDER holding {FOLDER}/ (the python version); or add "
        "--download to fetch it from the authors' page (checksum-verified)"
    )


def _classes(folder: Path) -> list[str]:
    meta = folder / "batches.meta"
    if not meta.is_file():
        return list(CLASSES)
    d = safe_unpickle(meta.read_bytes(), repr(str(meta)))
    try:
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in _key(d, "label_names")]
    except (KeyError, TypeError):
        return list(CLASSES)
    return names if len(names) == len(CLASSES) else list(CLASSES)


@lru_cache(maxsize=2)
def _decode(folder: str, split: str) -> TensorImages:
    parts = []
    for name in BATCHES[split]:
        path = Path(folder) / name
        if not path.is_file():
            raise ConvlensError(f"CIFAR-10 batch {str(path)!r} is missing")
        parts.append(read_batch(path))
    images = torch.cat([p[0] for p in parts])
    labels = torch.cat([p[1] for p in parts])
    return TensorImages(images, labels, _classes(Path(folder)), name=NAME)


def open_cifar10(
    split: str = "train", data_dir: str | None = None, download: bool = False
) -> TensorImages:
    """CIFAR-10 ``split`` (``train``: 50,000 images, ``test``: 10,000) as uint8 in memory."""
    return _decode(str(locate(data_dir, download)), split)


DATASETS.add(
    NAME,
    DatasetSource(open_cifar10, "CIFAR-10: 60,000 colour 32×32 images, 10 classes (python)"),
)
