"""Data sets in one registry, used by training and by dataset-level analysis."""

from convlens.data import cifar10 as _cifar10  # noqa: F401  (registers)
from convlens.data import fashion_mnist as _fashion_mnist  # noqa: F401  (registers)
from convlens.data import folder as _folder  # noqa: F401  (registers)
from convlens.data.base import (
    DATASETS,
    DatasetSource,
    EmptyDatasetError,
    ImageDataset,
    TensorImages,
    dataset_help,
    named_datasets,
    open_dataset,
)
from convlens.data.folder import FolderImages

__all__ = [
    "DATASETS",
    "DatasetSource",
    "EmptyDatasetError",
    "FolderImages",
    "ImageDataset",
    "TensorImages",
    "dataset_help",
    "named_datasets",
    "open_dataset",
]
