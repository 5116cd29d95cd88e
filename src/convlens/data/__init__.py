"""Data sets in one registry, used by training and by dataset-level analysis."""

from convlens.data.base import DATASETS, DatasetSource, ImageDataset, TensorImages, open_dataset

__all__ = ["DATASETS", "DatasetSource", "ImageDataset", "TensorImages", "open_dataset"]
