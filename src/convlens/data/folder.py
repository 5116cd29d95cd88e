"""Any folder of images with one subfolder per class (the layout of torchvision's ImageFolder).

::

    root/                         root/
      cat/  a.jpg b.png ...   or    train/ cat/ ...  dog/ ...
      dog/  c.jpg ...               test/  cat/ ...  dog/ ...   (or val/, valid/)

Class names are the subfolder names in sorted order. With ``train``/``test`` subfolders each
split reads its own; without them, ``all`` is every image and ``train``/``test`` divide them
9:1 by a hash of each file's path, so the division never changes between runs or machines.

Images are decoded on demand with convlens's safe decoder and fitted to one size (the first
image's size and colour unless ``shape`` is given), so a folder of any size can be scanned.

>>> ds = FolderImages("photos", split="all", shape=(3, 64, 64))  # doctest: +SKIP
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from convlens.data.base import DATASETS, FOLDER, DatasetSource, ImageDataset
from convlens.errors import ConvlensError
from convlens.io.image import IMAGE_SUFFIXES, decode_image, fit_to_spec, image_to_tensor
from convlens.io.spec import InputSpec

SPLIT_DIRS = {"train": ("train",), "test": ("test", "val", "valid", "validation")}
TEST_EVERY = 10  # without split folders, 1 image in 10 (by path hash) is held out as "test"


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")


def _class_dirs(root: Path) -> list[Path]:
    return sorted(
        (d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")),
        key=lambda d: d.name,
    )


def _split_root(root: Path, split: str) -> Path | None:
    """The subfolder holding ``split`` when the folder is divided into splits."""
    for name in SPLIT_DIRS.get(split, ()):
        if (root / name).is_dir():
            return root / name
    return None


def _held_out(rel: str) -> bool:
    return zlib.crc32(rel.encode()) % TEST_EVERY == 0


def _bases(root: Path, split: str) -> list[Path]:
    """The folders whose class subfolders make up ``split``."""
    split_roots = {s: r for s in SPLIT_DIRS if (r := _split_root(root, s)) is not None}
    if not split_roots:
        return [root]
    if split == "all":
        return list(split_roots.values())
    if split not in split_roots:
        raise ConvlensError(
            f"{str(root)!r} has split folders but none for {split!r} "
            f"(looked for {', '.join(SPLIT_DIRS[split])})"
        )
    return [split_roots[split]]


def scan(root: Path, split: str) -> tuple[list[str], list[tuple[Path, int]]]:
    """Class names and ``(file, label)`` pairs of ``split``, in sorted order."""
    bases = _bases(root, split)
    hash_split = bases == [root] and split != "all"
    # Classes from every split, so a label means the same class in train and test.
    classes = sorted({d.name for b in _bases(root, "all") for d in _class_dirs(b)})
    items: list[tuple[Path, int]] = []
    for b in bases:
        for d in _class_dirs(b):
            for f in sorted(d.iterdir()):
                if not _is_image(f):
                    continue
                if hash_split and _held_out(f.relative_to(root).as_posix()) != (split == "test"):
                    continue
                items.append((f, classes.index(d.name)))
    return classes, items


class FolderImages(ImageDataset):
    """Images in class subfolders, decoded on demand and fitted to ``shape`` ``(C, H, W)``."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str = "all",
        shape: tuple[int, int, int] | None = None,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise ConvlensError(f"image folder {str(self.root)!r} does not exist")
        if split not in ("train", "test", "all"):
            raise ConvlensError(
                f"no split {split!r} for an image folder; accepted: train, test, all"
            )
        self.classes, self.items = scan(self.root, split)
        if not self.classes:
            raise ConvlensError(
                f"{str(self.root)!r} has no class subfolders; expected ROOT/CLASS/IMAGE files "
                f"(image types: {', '.join(IMAGE_SUFFIXES)})"
            )
        self.name = f"folder:{self.root.name}"
        self.split = split
        self.shape = shape or self._first_shape()
        self._spec = InputSpec(*self.shape)

    def _first_shape(self) -> tuple[int, int, int]:
        if not self.items:
            return (3, 1, 1)  # empty: open_dataset reports it
        img = self._decode(self.items[0][0])
        return (1 if img.mode == "L" else 3, img.height, img.width)

    @staticmethod
    def _decode(path: Path) -> Image.Image:
        try:
            return decode_image(path)
        except ConvlensError as e:
            raise ConvlensError(f"{str(path)!r}: {e}") from None

    def __len__(self) -> int:
        return len(self.items)

    def path(self, index: int) -> Path:
        return self.items[index][0]

    def get(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = list(indices)
        if not idx:
            return torch.empty(0, *self.shape), torch.empty(0, dtype=torch.long)
        images = [image_to_tensor(fit_to_spec(self._decode(self.items[i][0]), self._spec))
                  for i in idx]  # fmt: skip
        labels = torch.tensor([self.items[i][1] for i in idx], dtype=torch.long)
        return torch.stack(images), labels


def open_folder(split: str, data_dir: str | None, download: bool) -> FolderImages:
    if not data_dir:
        raise ConvlensError(
            "the 'folder' data set needs a folder: --data-dir ROOT (ROOT/CLASS/*.png)"
        )
    return FolderImages(data_dir, split)


DATASETS.add(
    FOLDER,
    DatasetSource(
        open_folder,
        "a folder of images with one subfolder per class (optionally train/ and test/)",
        splits=("train", "test", "all"),
    ),
)
