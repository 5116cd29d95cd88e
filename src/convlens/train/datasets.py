"""Views of a data set for training: a seeded subset, and images fitted to a model's input.

Fitting resizes with antialiased bilinear interpolation and converts channels (gray → RGB by
repetition, RGB → gray by luma ``0.299 R + 0.587 G + 0.114 B``), so a model can be trained or
fine-tuned on a data set of another size or colour.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from convlens.data.base import ImageDataset
from convlens.errors import ConvlensError
from convlens.train.augment import gray


class Subset(ImageDataset):
    """``limit`` images of ``data`` chosen by a seeded permutation (all of them if larger)."""

    def __init__(self, data: ImageDataset, limit: int, seed: int = 0) -> None:
        if limit < 1:
            raise ConvlensError(f"--limit must be at least 1, got {limit}")
        order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
        self.data, self.indices = data, order[:limit].tolist()
        self.name, self.classes, self.shape = data.name, data.classes, data.shape

    def __len__(self) -> int:
        return len(self.indices)

    def get(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.data.get([self.indices[i] for i in indices])


def fit_batch(x: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """Images ``(B, C, H, W)`` resized and converted to ``shape = (C', H', W')``."""
    channels, height, width = shape
    if x.shape[1] != channels:
        x = gray(x) if channels == 1 else x.expand(-1, 3, -1, -1)
    if tuple(x.shape[2:]) != (height, width):
        x = F.interpolate(x, size=(height, width), mode="bilinear", antialias=True,
                          align_corners=False).clamp_(0, 1)  # fmt: skip
    return x.contiguous()


class Fitted(ImageDataset):
    """``data`` with every image fitted to ``shape`` on the fly."""

    def __init__(self, data: ImageDataset, shape: tuple[int, int, int]) -> None:
        if shape[0] not in (1, 3) or data.shape[0] not in (1, 3):
            raise ConvlensError(f"cannot convert {data.shape[0]}-channel images to {shape[0]}")
        self.data, self.shape = data, tuple(shape)  # type: ignore[assignment]
        self.name, self.classes = data.name, data.classes

    def __len__(self) -> int:
        return len(self.data)

    def get(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.data.get(indices)
        return fit_batch(x, self.shape), y


def for_model(data: ImageDataset, shape: tuple[int, int, int]) -> ImageDataset:
    """``data`` itself when its images already have ``shape``, else a :class:`Fitted` view."""
    return data if tuple(data.shape) == tuple(shape) else Fitted(data, shape)
