"""Fashion-MNIST (Xiao, Rasul and Vollgraf, 2017): 70,000 gray 28×28 images of 10 clothes.

Read from the four IDX files (gzipped or not), looked for in this order:

1. ``--data-dir`` (``data_dir=``), when given;
2. ``/usr/share/datasets/fashion-mnist`` (Debian's ``dataset-fashion-mnist`` package);
3. the download cache (``~/.cache/convlens/datasets/fashion-mnist``), filled from the
   official source only with ``--download`` and checked against the published MD5 sums.

An IDX file is a big-endian header ``0 0 dtype ndim`` followed by ``ndim`` 32-bit sizes and
the raw array; images are ``(N, 28, 28)`` uint8, labels ``(N,)`` uint8. Each split is decoded
once per process into an in-memory uint8 tensor ``(N, 1, 28, 28)``.

>>> ds = open_fashion_mnist("test")  # doctest: +SKIP
>>> ds.get([0])[0].shape  # doctest: +SKIP
torch.Size([1, 1, 28, 28])
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from functools import lru_cache
from pathlib import Path

import torch

from convlens.data.base import DATASETS, DatasetSource, TensorImages
from convlens.data.download import cache_dir, download
from convlens.errors import ConvlensError

NAME = "fashion-mnist"
CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
BASE_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
# The MD5 sums published with the data set (and used by torchvision).
MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
_IDX_UBYTE = 0x08


def parse_idx(data: bytes, source: str) -> torch.Tensor:
    """An uncompressed IDX file's array as a uint8 tensor (only unsigned-byte IDX is used)."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ConvlensError(f"{source} is not an IDX file (bad magic number)")
    if data[2] != _IDX_UBYTE:
        raise ConvlensError(f"{source}: IDX element type 0x{data[2]:02x}; only ubyte (0x08)")
    ndim = data[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise ConvlensError(f"{source} is truncated (IDX header)")
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = header + math.prod(dims)
    if len(data) != expected:
        raise ConvlensError(
            f"{source} is truncated or corrupt: {len(data):,} bytes, "
            f"its header {dims} says {expected:,}"
        )
    return torch.frombuffer(bytearray(data[header:]), dtype=torch.uint8).reshape(dims)


def read_idx(path: Path) -> torch.Tensor:
    """An IDX file, gzipped (``.gz``) or not."""
    try:
        raw = path.read_bytes()
        data = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    except (OSError, EOFError, zlib.error) as e:
        raise ConvlensError(f"cannot read {str(path)!r}: corrupt or truncated ({e})") from None
    return parse_idx(data, repr(str(path)))


def _find(folder: Path, name: str) -> Path | None:
    """``name`` or its unzipped twin in ``folder``."""
    for candidate in (folder / name, folder / name.removesuffix(".gz")):
        if candidate.is_file():
            return candidate
    return None


def locate(split: str, data_dir: str | None, download_ok: bool) -> tuple[Path, Path]:
    """The images and labels files of ``split``, following the documented search order."""
    names = FILES[split]
    folders = ([Path(data_dir)] if data_dir else []) + [SYSTEM_DIR, cache_dir(NAME)]
    for folder in folders:
        found = [_find(folder, n) for n in names]
        if found[0] is not None and found[1] is not None:
            return found[0], found[1]
    if download_ok:
        target = cache_dir(NAME)
        paths = [download(BASE_URL + n, target / n, MD5[n]) for n in names]
        return paths[0], paths[1]
    where = f"in {data_dir!r}, " if data_dir else ""
    raise ConvlensError(
        f"Fashion-MNIST files {' and '.join(names)} not found {where}in {str(SYSTEM_DIR)!r} "
        f"or in {str(cache_dir(NAME))!r}. Accepted ways: pass --data-dir FOLDER holding the "
        "IDX files; install Debian's dataset-fashion-mnist package; or add --download to "
        "fetch them from the official source (checksum-verified)"
    )


@lru_cache(maxsize=4)
def _decode(images_path: str, labels_path: str, _mtimes: tuple[float, float]) -> TensorImages:
    images = read_idx(Path(images_path))
    labels = read_idx(Path(labels_path))
    if images.dim() != 3 or labels.dim() != 1:
        raise ConvlensError(
            f"{images_path} must hold (N, H, W) images and {labels_path} (N,) labels; "
            f"got {tuple(images.shape)} and {tuple(labels.shape)}"
        )
    if len(images) != len(labels):
        raise ConvlensError(f"{images_path} has {len(images)} images but {len(labels)} labels")
    if len(labels) and int(labels.max()) >= len(CLASSES):
        raise ConvlensError(f"{labels_path} has label {int(labels.max())}; accepted: 0..9")
    return TensorImages(images.unsqueeze(1), labels.long(), CLASSES, name=NAME)  # (N,1,H,W)


def open_fashion_mnist(
    split: str = "train", data_dir: str | None = None, download: bool = False
) -> TensorImages:
    """Fashion-MNIST ``split`` (``train``: 60,000 images, ``test``: 10,000)."""
    images, labels = locate(split, data_dir, download)
    mtimes = (os.path.getmtime(images), os.path.getmtime(labels))
    return _decode(str(images), str(labels), mtimes)


DATASETS.add(
    NAME,
    DatasetSource(
        open_fashion_mnist,
        "Fashion-MNIST: 70,000 gray 28×28 clothes images, 10 classes (IDX files)",
    ),
)
