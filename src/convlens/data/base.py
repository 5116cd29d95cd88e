"""The data-set interface shared by training and dataset-level analysis.

A data set is an indexable collection of labelled images, handed out in batches of float
tensors ``(B, C, H, W)`` in ``[0, 1]``. It never holds more than one batch of decoded images
at a time unless it is small enough to live in memory (Fashion-MNIST, CIFAR-10).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from convlens.errors import ConvlensError
from convlens.registry import Registry


class ImageDataset(ABC):
    """Labelled images of one size and channel count."""

    name: str
    classes: list[str]
    shape: tuple[int, int, int]  # (C, H, W) of every image

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def get(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Images ``(B, C, H, W)`` float in ``[0, 1]`` and labels ``(B,)`` int64."""

    def batches(
        self, batch_size: int, indices: Sequence[int] | None = None
    ) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor]]:
        """``(indices, images, labels)`` in order, ``batch_size`` at a time."""
        if batch_size < 1:
            raise ConvlensError(f"batch size must be at least 1, got {batch_size}")
        order = list(range(len(self))) if indices is None else list(indices)
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            images, labels = self.get(chunk)
            yield chunk, images, labels


class TensorImages(ImageDataset):
    """A data set held in memory as uint8 ``(N, C, H, W)`` (or float in ``[0, 1]``)."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        classes: Sequence[str],
        name: str = "tensors",
    ) -> None:
        if images.dim() != 4:
            raise ConvlensError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
        if len(images) != len(labels):
            raise ConvlensError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels = images, labels.long()
        self.classes, self.name = list(classes), name
        self.shape = tuple(images.shape[1:])  # type: ignore[assignment]

    def __len__(self) -> int:
        return len(self.images)

    def get(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        x = self.images[idx]
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
        return x, self.labels[idx]


@dataclass(frozen=True)
class DatasetSource:
    """How a registered data set is opened: ``open(split, data_dir, download)``."""

    open: Callable[[str, str | None, bool], ImageDataset]
    description: str
    splits: tuple[str, ...] = ("train", "test")


DATASETS: Registry[DatasetSource] = Registry("data set")
FOLDER = "folder"  # the source that reads a folder of class subfolders; the rest go by name


class EmptyDatasetError(ConvlensError):
    """A data set split without images (a caller may go on without it, e.g. validation)."""


def named_datasets() -> list[str]:
    """The data sets opened by name alone (every registered source but the folder reader)."""
    return [n for n in DATASETS.names() if n != FOLDER]


def dataset_help() -> str:
    """What a ``--dataset`` option accepts, in words."""
    return f"{', '.join(named_datasets())}, or a folder ROOT/CLASS/*.png (or folder:ROOT)"


def open_dataset(
    name: str | os.PathLike[str],
    split: str = "train",
    data_dir: str | None = None,
    download: bool = False,
) -> ImageDataset:
    """A registered data set by name (``fashion-mnist``, ``cifar10``) or a folder of images
    with one subfolder per class (its path, or ``folder:PATH``)."""
    key = os.fspath(name)
    if key.startswith("folder:") and key not in DATASETS:  # folder:PATH names a folder
        key, data_dir = "folder", key.removeprefix("folder:")
    if key not in DATASETS and os.path.isdir(key):
        key, data_dir = FOLDER, key
    source = DATASETS.get(key)
    if split not in source.splits:
        raise ConvlensError(f"{key} has no split {split!r}; accepted: {', '.join(source.splits)}")
    dataset = source.open(split, data_dir, download)
    if len(dataset) == 0:
        raise EmptyDatasetError(f"data set {key!r} ({split}) is empty")
    return dataset
