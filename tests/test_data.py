"""Data sets: Fashion-MNIST IDX files, image folders, CIFAR-10 batches, downloads."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import os
import pickle
import tarfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from convlens.data import DATASETS, FolderImages, cifar10, open_dataset
from convlens.data import fashion_mnist as fm
from convlens.errors import ConvlensError


def idx_bytes(arr: np.ndarray) -> bytes:
    """An IDX file written independently of the reader: magic, big-endian sizes, raw bytes."""
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def write_fmnist(folder: Path, n: int = 12, seed: int = 0, gz: bool = True) -> np.ndarray:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = (np.arange(n) % 10).astype(np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        for name, arr in zip(fm.FILES[split], (images, labels), strict=True):
            data = idx_bytes(arr)
            if gz:
                (folder / name).write_bytes(gzip.compress(data))
            else:
                (folder / name.removesuffix(".gz")).write_bytes(data)
    return images


@pytest.fixture
def no_system_fmnist(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Hide Debian's copy and point the download cache at an empty folder."""
    monkeypatch.setattr(fm, "SYSTEM_DIR", tmp_path / "no-system")
    monkeypatch.setenv("CONVLENS_CACHE", str(tmp_path / "cache"))
    fm._decode.cache_clear()
    return tmp_path / "cache" / "datasets" / "fashion-mnist"


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_reads_idx(tmp_path: Path, no_system_fmnist: Path, gz: bool) -> None:
    images = write_fmnist(tmp_path / "d", gz=gz)
    ds = open_dataset("fashion-mnist", "train", data_dir=str(tmp_path / "d"))
    assert len(ds) == 12 and ds.shape == (1, 28, 28) and ds.classes[9] == "Ankle boot"
    x, y = ds.get([3, 11])
    assert x.shape == (2, 1, 28, 28) and x.dtype == torch.float32
    np.testing.assert_allclose(x[:, 0].numpy(), images[[3, 11]] / 255.0, atol=1e-7)
    assert y.tolist() == [3, 1]


def test_fashion_mnist_missing_says_three_ways(tmp_path: Path, no_system_fmnist: Path) -> None:
    with pytest.raises(ConvlensError) as e:
        open_dataset("fashion-mnist", "test", data_dir=str(tmp_path))
    msg = str(e.value)
    assert "--data-dir" in msg and "dataset-fashion-mnist" in msg and "--download" in msg


@pytest.mark.parametrize(
    "damage", ["truncate-gz", "truncate-idx", "bad-magic", "label-count", "label-range"]
)
def test_fashion_mnist_corrupt(tmp_path: Path, no_system_fmnist: Path, damage: str) -> None:
    d = tmp_path / "d"
    write_fmnist(d)
    img, lab = d / fm.FILES["train"][0], d / fm.FILES["train"][1]
    raw = gzip.decompress(img.read_bytes())
    if damage == "truncate-gz":
        img.write_bytes(img.read_bytes()[:200])
    elif damage == "truncate-idx":
        img.write_bytes(gzip.compress(raw[:-5]))
    elif damage == "bad-magic":
        img.write_bytes(gzip.compress(b"\x12\x34" + raw[2:]))
    elif damage == "label-count":
        lab.write_bytes(gzip.compress(idx_bytes(np.zeros(5, np.uint8))))
    else:
        lab.write_bytes(gzip.compress(idx_bytes(np.full(12, 10, np.uint8))))
    with pytest.raises(ConvlensError, match="train-"):
        open_dataset("fashion-mnist", "train", data_dir=str(d))


def test_fashion_mnist_system_copy_when_present() -> None:
    if not (fm.SYSTEM_DIR / fm.FILES["test"][0]).is_file():
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    ds = open_dataset("fashion-mnist", "test")
    assert len(ds) == 10_000
    # The first ten test labels of the published data set.
    assert ds.get(range(10))[1].tolist() == [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]


@pytest.fixture
def http_dir(tmp_path: Path) -> Iterator[tuple[str, Path, list[str]]]:
    """A local http.server over a folder; yields (base URL, folder, request log)."""
    root = tmp_path / "served"
    root.mkdir()
    log: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a: Any, **k: Any) -> None:
            super().__init__(*a, directory=str(root), **k)

        def log_message(self, *args: object) -> None:
            log.append(self.path)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", root, log
    finally:
        server.shutdown()
        server.server_close()


def test_fashion_mnist_download_verified_and_cached(
    http_dir: tuple[str, Path, list[str]],
    no_system_fmnist: Path,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    url, served, log = http_dir
    write_fmnist(served)
    md5 = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in served.iterdir()}
    monkeypatch.setattr(fm, "BASE_URL", url)
    monkeypatch.setattr(fm, "MD5", md5)
    ds = open_dataset("fashion-mnist", "test", download=True)
    assert len(ds) == 12
    assert sorted(os.listdir(no_system_fmnist)) == sorted(fm.FILES["test"])  # no temp files
    n_requests = len(log)
    fm._decode.cache_clear()
    assert len(open_dataset("fashion-mnist", "test", download=True)) == 12
    assert len(log) == n_requests  # served from the cache


def test_download_checksum_mismatch_keeps_nothing(
    http_dir: tuple[str, Path, list[str]],
    no_system_fmnist: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url, served, _ = http_dir
    write_fmnist(served)
    monkeypatch.setattr(fm, "BASE_URL", url)
    monkeypatch.setattr(fm, "MD5", dict.fromkeys(fm.MD5, "0" * 32))
    with pytest.raises(ConvlensError, match="checksum"):
        open_dataset("fashion-mnist", "test", download=True)
    assert not no_system_fmnist.exists() or os.listdir(no_system_fmnist) == []


def test_download_unreachable_is_clear(
    no_system_fmnist: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fm, "BASE_URL", "http://127.0.0.1:9/")  # discard port: refused
    with pytest.raises(ConvlensError, match="cannot download"):
        open_dataset("fashion-mnist", "test", download=True)


# ------------------------------------------------------------------ image folders


def write_folder(root: Path, layout: dict[str, int], size: int = 10, mode: str = "RGB") -> None:
    rng = np.random.default_rng(1)
    for cls, n in layout.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            shape = (size, size, 3) if mode == "RGB" else (size, size)
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(
                root / cls / f"img{i:03d}.png"
            )


def test_folder_reads_pixels_and_labels(tmp_path: Path) -> None:
    write_folder(tmp_path / "imgs", {"b_dog": 2, "a_cat": 3})
    (tmp_path / "imgs" / "a_cat" / "notes.txt").write_text("not an image")
    ds = open_dataset(tmp_path / "imgs", "all")
    assert ds.classes == ["a_cat", "b_dog"] and len(ds) == 5 and ds.shape == (3, 10, 10)
    x, y = ds.get([0, 4])
    assert y.tolist() == [0, 1]
    ref = np.asarray(Image.open(tmp_path / "imgs" / "b_dog" / "img001.png"), dtype=np.float32)
    np.testing.assert_allclose(x[1].permute(1, 2, 0).numpy(), ref / 255.0, atol=1e-6)


def test_folder_hash_split_is_disjoint_and_stable(tmp_path: Path) -> None:
    write_folder(tmp_path, {"a": 30, "b": 30}, size=4, mode="L")
    train = FolderImages(tmp_path, "train")
    test = FolderImages(tmp_path, "test")
    every = FolderImages(tmp_path, "all")
    assert train.shape == (1, 4, 4)
    tr, te = {p for p, _ in train.items}, {p for p, _ in test.items}
    assert not tr & te and tr | te == {p for p, _ in every.items} and 0 < len(te) < len(tr)
    assert [p for p, _ in FolderImages(tmp_path, "test").items] == [p for p, _ in test.items]


def test_folder_split_subfolders_share_classes(tmp_path: Path) -> None:
    write_folder(tmp_path / "train", {"x": 2, "y": 2})
    write_folder(tmp_path / "val", {"y": 1})
    test = open_dataset("folder", "test", data_dir=str(tmp_path))
    assert test.classes == ["x", "y"] and test.get([0])[1].tolist() == [1]
    assert len(open_dataset("folder", "all", data_dir=str(tmp_path))) == 5


def test_folder_fits_shape_and_reports_bad_files(tmp_path: Path) -> None:
    write_folder(tmp_path, {"a": 1}, size=20)
    ds = FolderImages(tmp_path, "all", shape=(1, 8, 8))
    assert ds.get([0])[0].shape == (1, 1, 8, 8)
    (tmp_path / "a" / "zz_broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(ConvlensError, match=r"zz_broken\.png"):
        FolderImages(tmp_path, "all").get([1])


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(ConvlensError, match="no class subfolders"):
        FolderImages(tmp_path, "all")
    with pytest.raises(ConvlensError, match="does not exist"):
        FolderImages(tmp_path / "nope")
    with pytest.raises(ConvlensError, match="needs a folder"):
        open_dataset("folder")
    with pytest.raises(ConvlensError, match="fashion-mnist"):
        open_dataset("fashion-mnst")


def test_registry_lists_datasets() -> None:
    assert {"fashion-mnist", "folder"} <= set(DATASETS.names())


# ------------------------------------------------------------------ CIFAR-10


def write_cifar(folder: Path, n: int = 6) -> np.ndarray:
    """CIFAR-style batches: pickled dicts with bytes keys, rows of R, G, B planes."""
    rng = np.random.default_rng(2)
    rows = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    d = folder / cifar10.FOLDER
    d.mkdir(parents=True, exist_ok=True)
    for name in cifar10.BATCHES["train"] + cifar10.BATCHES["test"]:
        batch = {b"batch_label": b"x", b"labels": list(range(n)), b"data": rows,
                 b"filenames": [b"f%d.png" % i for i in range(n)]}  # fmt: skip
        (d / name).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {b"label_names": [c.encode() for c in cifar10.CLASSES]}
    (d / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return rows


@pytest.fixture
def fresh_cifar_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("CONVLENS_CACHE", str(tmp_path / "cache"))
    cifar10._decode.cache_clear()
    return tmp_path / "cache" / "datasets" / "cifar10"


def test_cifar10_reads_batches(tmp_path: Path, fresh_cifar_cache: Path) -> None:
    rows = write_cifar(tmp_path)
    ds = open_dataset("cifar10", "train", data_dir=str(tmp_path))
    assert len(ds) == 30 and ds.shape == (3, 32, 32) and ds.classes[0] == "airplane"
    x, y = ds.get([7])
    # Pixel (r, c) of channel k is byte k*1024 + r*32 + c of the row.
    ref = rows[1].reshape(3, 32, 32) / 255.0
    np.testing.assert_allclose(x[0].numpy(), ref, atol=1e-7)
    assert y.tolist() == [1]
    assert len(open_dataset("cifar10", "test", data_dir=str(tmp_path / cifar10.FOLDER))) == 6


class _Evil:
    def __reduce__(self) -> tuple[Callable[[str], int], tuple[str]]:
        return (os.system, ("touch pwned",))


def test_cifar10_refuses_code_in_pickles(tmp_path: Path, fresh_cifar_cache: Path) -> None:
    write_cifar(tmp_path)
    bad = tmp_path / cifar10.FOLDER / "test_batch"
    bad.write_bytes(pickle.dumps({b"data": _Evil(), b"labels": []}, protocol=2))
    with pytest.raises(ConvlensError, match=r"refusing to load (posix|os)\.system"):
        open_dataset("cifar10", "test", data_dir=str(tmp_path))
    assert not Path("pwned").exists()
    bad.write_bytes(bad.read_bytes()[:20])
    with pytest.raises(ConvlensError, match="test_batch"):
        open_dataset("cifar10", "test", data_dir=str(tmp_path))


def test_cifar10_missing_and_download(
    tmp_path: Path,
    fresh_cifar_cache: Path,
    http_dir: tuple[str, Path, list[str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(ConvlensError, match="--download"):
        open_dataset("cifar10", "test", data_dir=str(tmp_path))
    url, served, _ = http_dir
    write_cifar(tmp_path / "src")
    archive = served / cifar10.ARCHIVE
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src" / cifar10.FOLDER, arcname=cifar10.FOLDER)
    monkeypatch.setattr(cifar10, "URL", url + cifar10.ARCHIVE)
    monkeypatch.setattr(cifar10, "MD5", hashlib.md5(archive.read_bytes()).hexdigest())
    ds = open_dataset("cifar10", "test", download=True)
    assert len(ds) == 6 and (fresh_cifar_cache / cifar10.FOLDER / "test_batch").is_file()
