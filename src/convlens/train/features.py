"""Cached body features for feature extraction: the frozen body runs once per image.

With the body frozen (eval mode, no gradients) its output for an image never changes, so
:class:`FeatureCache` computes the head's input (the body's map, pooled) for every image once,
in data-set order, and training then runs only the head: an epoch costs a matrix multiply
per layer of the head instead of a forward pass of the body.

The features live in memory when they fit ``memory_bytes``, else in a memory-mapped file in a
temporary folder (``cache_dir``) when they fit ``disk_bytes`` and the free space there; a set
too large for both is refused with a one-line error before anything is computed.

Random augmentation contradicts a cache (each epoch would need the body on new images), so
the caller refuses that combination; with the cache off the body runs every step instead.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from convlens.data.base import ImageDataset
from convlens.errors import ConvlensError
from convlens.model.core import Model
from convlens.model.headed import TransferNet

MEMORY_BYTES = 2 << 30
DISK_BYTES = 64 << 30


class FeatureCache:
    """The pooled body features ``(N, F)`` of ``data`` for ``model`` (a transfer model)."""

    def __init__(
        self,
        model: Model,
        data: ImageDataset,
        *,
        batch_size: int = 256,
        channels_last: bool = False,
        memory_bytes: int = MEMORY_BYTES,
        disk_bytes: int = DISK_BYTES,
        cache_dir: str | None = None,
    ) -> None:
        if not isinstance(model.net, TransferNet):
            raise ConvlensError("cached features need a model with a new head (--mode features)")
        self.model, self.data = model, data
        self.batch_size, self.channels_last = batch_size, channels_last
        self.memory_bytes, self.disk_bytes, self.cache_dir = memory_bytes, disk_bytes, cache_dir
        self._features: torch.Tensor | None = None
        self._labels: torch.Tensor | None = None
        self._folder: Path | None = None
        self.seconds = 0.0
        self.on_disk = False

    def width(self) -> int:
        net = self.model.net
        assert isinstance(net, TransferNet)
        with torch.no_grad():
            was = net.training
            net.eval()
            try:
                probe = self.model.normalize(torch.zeros(1, *self.model.spec.shape))
                return int(net.features(probe).shape[1])
            finally:
                net.train(was)

    def _storage(self, n: int, width: int) -> torch.Tensor:
        nbytes = n * width * 4
        if nbytes <= self.memory_bytes:
            return torch.empty(n, width)
        folder = Path(tempfile.mkdtemp(prefix="convlens-features-", dir=self.cache_dir))
        free = shutil.disk_usage(folder).free
        if nbytes > min(self.disk_bytes, free):
            folder.rmdir()
            raise ConvlensError(
                f"the cached features of {n:,} images × {width:,} values need "
                f"{nbytes / 2**30:.1f} GiB: more than the memory budget "
                f"({self.memory_bytes / 2**30:.1f} GiB) and the disk budget or free space in "
                f"{folder.parent} ({min(self.disk_bytes, free) / 2**30:.1f} GiB); use --limit, "
                "a smaller --head pooling, or --no-cache"
            )
        self._folder, self.on_disk = folder, True
        mm = np.lib.format.open_memmap(folder / "features.npy", "w+", np.float32, (n, width))
        return torch.from_numpy(mm)

    @torch.no_grad()
    def build(self) -> None:
        """Run the body over every image once (in data-set order, eval mode)."""
        import time

        if self._features is not None:
            return
        net = self.model.net
        assert isinstance(net, TransferNet)
        t0 = time.perf_counter()
        n = len(self.data)
        store = self._storage(n, self.width())
        labels = torch.empty(n, dtype=torch.long)
        was = net.training
        net.eval()
        try:
            for idx, x, y in self.data.batches(self.batch_size):
                if self.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                self.model.check_input(x)
                store[idx[0] : idx[-1] + 1] = net.features(self.model.normalize(x))
                labels[idx[0] : idx[-1] + 1] = y
        finally:
            net.train(was)
        self._features, self._labels = store, labels
        self.seconds = time.perf_counter() - t0

    def get(self, idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Features and labels of images ``idx`` (computing the cache on first use)."""
        self.build()
        assert self._features is not None and self._labels is not None
        index = torch.as_tensor(idx, dtype=torch.long)
        return self._features[index].clone(), self._labels[index]

    def head(self, features: torch.Tensor) -> torch.Tensor:
        net = self.model.net
        assert isinstance(net, TransferNet)
        out: torch.Tensor = net.head.layers(features)
        return out

    @torch.no_grad()
    def evaluate(self, batch_size: int = 1000) -> tuple[float, float]:
        """Mean cross-entropy and accuracy of the head (eval mode) on the cached features."""
        self.build()
        net = self.model.net
        was = net.training
        net.eval()
        total, correct = 0.0, 0
        try:
            for start in range(0, len(self.data), batch_size):
                x, y = self.get(list(range(start, min(start + batch_size, len(self.data)))))
                out = self.head(x)
                total += float(torch.nn.functional.cross_entropy(out, y)) * len(y)
                correct += int((out.argmax(1) == y).sum())
        finally:
            net.train(was)
        n = max(len(self.data), 1)
        return total / n, correct / n

    def close(self) -> None:
        """Drop the features (and the temporary file, if any)."""
        self._features = self._labels = None
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None

    def __enter__(self) -> FeatureCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["DISK_BYTES", "MEMORY_BYTES", "FeatureCache"]
