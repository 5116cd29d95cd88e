"""The scan's per-batch map with its shortcuts forced, streamed through the scan's fold, against
a numpy lexsort and float64 statistics of everything at once."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import convlens.analysis.state as state_module
from convlens.analysis.scan import Folder
from convlens.analysis.state import _count_nonzero, _count_positive, map_sorted


def tied_batches(seed: int, n: int, shape: tuple[int, int, int]) -> torch.Tensor:
    """``n`` maps of ``shape`` with every kind of tie the search must break by (image,
    position): few distinct values, a saturated channel (its maximum on many images), a
    dead one (all zeros), a constant positive one, duplicated images, and negative values."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *shape, generator=g).round(decimals=1)
    x[:, 0] = x[:, 0].clamp(max=0.7)  # saturated: the maximum ties across many images
    x[:, 1] = 0.0  # dead
    if shape[0] > 3:
        x[:, 3] = 0.5  # every value equal
    x[7] = x[2]  # duplicated images: equal maxima on two images
    x[n - 3] = x[4]
    return x


def reference(x: np.ndarray, k: int) -> dict[str, np.ndarray]:
    B, C, H, W = x.shape
    img, pos = np.repeat(np.arange(B), H * W), np.tile(np.arange(H * W), B)
    out: dict[str, list[np.ndarray]] = {"values": [], "images": [], "positions": []}
    for c in range(C):
        v = x[:, c].reshape(-1)
        order = np.lexsort((pos, img, -v))[:k]
        pad = k - len(order)
        out["values"].append(np.r_[v[order], np.full(pad, -np.inf, np.float32)])
        out["images"].append(np.r_[img[order], np.full(pad, -1)])
        out["positions"].append(np.r_[pos[order], np.full(pad, -1)])
    res = {key: np.stack(v) for key, v in out.items()}
    flat = x.transpose(1, 0, 2, 3).reshape(C, -1).astype(np.float64)
    res["total"], res["total_sq"] = flat.sum(1), np.square(flat).sum(1)
    res["maximum"], res["positive"] = flat.max(1), (flat > 0).sum(1)
    res["fired"] = (x.reshape(B, C, -1).max(2) > 0).sum(0)
    return res


def stream(x: torch.Tensor, k: int, batch: int, nonneg: bool, every: int = 3) -> Folder:
    """The scan's loop without a model: map each batch with the floor from the folded state,
    fold every ``every`` batches (the first at once, as the scan does)."""
    folder = Folder(every=every)
    scratch = torch.empty(0)
    for start in range(0, len(x), batch):
        part = x[start : start + batch].contiguous()
        idx = torch.arange(start, start + len(part))
        if scratch.numel() < part.numel():
            scratch = torch.empty(part.numel())
        floor = folder.floor("layer", idx)
        folder.add("layer", map_sorted(part, idx, k, floor, scratch, nonneg))
    folder.fold()
    return folder


@pytest.mark.parametrize("row_units", [1, 1 << 30])  # image rows / whole images as units
@pytest.mark.parametrize("k, batch", [(1, 4), (4, 9), (7, 2), (16, 5)])
@pytest.mark.parametrize("nonneg", [False, True])
def test_streamed_map_equals_lexsort_of_everything(
    monkeypatch: pytest.MonkeyPatch, row_units: int, k: int, batch: int, nonneg: bool
) -> None:
    """Floors, the narrow search over the best units, the widened search where the k-th unit
    maximum ties (a few tied units, or the whole batch of a dead channel), empty results
    padded, batches smaller than k units, and (``nonneg``) the nonzero-byte count; every
    shortcut reached on the same data."""
    monkeypatch.setattr(state_module, "ROW_UNITS", row_units)
    x = tied_batches(k * 10 + batch, 37, (5, 3, 4))
    if nonneg:
        x = x.clamp_min(0.0)
    lay = stream(x, k, batch, nonneg).state["layer"]
    ref = reference(x.numpy(), k)
    np.testing.assert_array_equal(lay.values.numpy(), ref["values"])
    np.testing.assert_array_equal(lay.images.numpy(), ref["images"])
    np.testing.assert_array_equal(lay.positions.numpy(), ref["positions"])
    np.testing.assert_allclose(lay.total.numpy(), ref["total"], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(lay.total_sq.numpy(), ref["total_sq"], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(lay.maximum.numpy(), ref["maximum"])
    np.testing.assert_array_equal(lay.positive.numpy(), ref["positive"])
    np.testing.assert_array_equal(lay.fired.numpy(), ref["fired"])
    assert lay.n_images == len(x)


def test_streamed_map_of_vectors_and_large_batches() -> None:
    """Logits-like ``(B, C)`` outputs (one position per image, units are images) over batches
    of many images, as the scan gathers small layers: many tied maxima above the floor."""
    g = torch.Generator().manual_seed(3)
    x = torch.randint(-3, 4, (600, 6), generator=g).float()[:, :, None, None]
    lay = stream(x, 16, 256, nonneg=False).state["layer"]
    ref = reference(x.numpy(), 16)
    np.testing.assert_array_equal(lay.values.numpy(), ref["values"])
    np.testing.assert_array_equal(lay.images.numpy(), ref["images"])
    np.testing.assert_array_equal(lay.positive.numpy(), ref["positive"])


@pytest.mark.parametrize("rows, n", [(7, 676), (3, 1), (5, 64), (4, 2040), (3, 2041), (2, 40000)])
def test_nonzero_byte_count_equals_numpy(rows: int, n: int) -> None:
    """Rows padded to whole words, one group of at most 255 words per lane or several; with a
    scratch buffer large enough, too small, and none."""
    g = torch.Generator().manual_seed(n)
    x = torch.randn(rows, n, generator=g).clamp_min(0.0)
    x[0] = 0.0
    x[-1] = 1.0  # a full row: every lane at its largest
    want = (x.numpy() != 0).sum(1)
    for scratch in (None, torch.empty(1), torch.empty(rows * n * 2)):
        got = _count_nonzero(x, scratch)
        np.testing.assert_array_equal(got.numpy(), want)
    np.testing.assert_array_equal(_count_positive(x).numpy(), want)


def test_nonneg_count_recounts_rows_with_nan() -> None:
    """NaN is nonzero but not above zero: a ReLU passes it on, and such rows are recounted."""
    x = torch.rand(4, 3, 5, 5).round(decimals=1)
    x[1, 2, 3, 4] = float("nan")
    x[2, 0] = float("nan")
    lay = map_sorted(x, torch.arange(4), 3, nonneg=True)
    want = (x.numpy() > 0).transpose(1, 0, 2, 3).reshape(3, -1).sum(1)
    np.testing.assert_array_equal(lay.positive.numpy(), want)
