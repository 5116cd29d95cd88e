"""The scan's state: a per-batch *map* and an associative, commutative *merge*.

For every channel of a layer the state keeps a running top-k of ``(value, image, position)``
and running sums for per-channel statistics. A scan is a fold of :func:`merge` over
:func:`map_batch` results, so it can be split over shards of the data set (processes, Ray
Data blocks, ``torch.distributed`` ranks) and combined in any order with the same result:

* top-k: ``topk(A ∪ B) = topk(topk(A) ∪ topk(B))`` under a *total* order, here value
  descending, then image index ascending, then position ascending (ties never depend on the
  order batches arrived);
* statistics: sums, counts and maxima, each associative and commutative (sums in float64, so
  shard order changes them only in the last bits).

This is the classic "top-k activating patches" computation of Zeiler and Fergus ("Visualizing
and Understanding Convolutional Networks", ECCV 2014), streamed.

>>> import torch
>>> x = torch.arange(8.0).view(2, 1, 2, 2)            # 2 images, 1 channel, 2×2
>>> s = map_batch(x, torch.tensor([10, 11]), k=3)
>>> s.values.tolist(), s.images.tolist(), s.positions.tolist()
([[7.0, 6.0, 5.0]], [[11, 11, 11]], [[3, 2, 1]])
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch

from convlens.errors import ConvlensError

EMPTY_IMAGE = -1  # image index of an unfilled top-k slot (its value is -inf)


@dataclass
class LayerState:
    """Running results for one layer of ``C`` channels on a ``H×W`` grid (1×1 for vectors).

    ``values``/``images``/``positions`` are ``(C, k)``, sorted best first; a position is the
    flat index ``row * W + col`` in the layer's grid. ``total``/``total_sq`` are float64 sums
    of the activations, ``positive`` counts positions above zero, ``fired`` counts images where
    the channel is above zero somewhere, ``n_images`` counts the images seen.
    """

    values: torch.Tensor  # (C, k) float32, -inf where empty
    images: torch.Tensor  # (C, k) int64, -1 where empty
    positions: torch.Tensor  # (C, k) int64, -1 where empty
    total: torch.Tensor  # (C,) float64
    total_sq: torch.Tensor  # (C,) float64
    maximum: torch.Tensor  # (C,) float32, -inf before any image
    positive: torch.Tensor  # (C,) int64
    fired: torch.Tensor  # (C,) int64
    n_images: int
    grid: tuple[int, int]  # (H, W)

    @property
    def channels(self) -> int:
        return int(self.values.shape[0])

    @property
    def k(self) -> int:
        return int(self.values.shape[1])

    @property
    def n_positions(self) -> int:
        """Positions seen per channel: images × H × W."""
        return self.n_images * self.grid[0] * self.grid[1]

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _SCALARS}

    @classmethod
    def empty(cls, channels: int, k: int, grid: tuple[int, int]) -> LayerState:
        return cls(
            values=torch.full((channels, k), float("-inf")),
            images=torch.full((channels, k), EMPTY_IMAGE, dtype=torch.long),
            positions=torch.full((channels, k), EMPTY_IMAGE, dtype=torch.long),
            total=torch.zeros(channels, dtype=torch.float64),
            total_sq=torch.zeros(channels, dtype=torch.float64),
            maximum=torch.full((channels,), float("-inf")),
            positive=torch.zeros(channels, dtype=torch.long),
            fired=torch.zeros(channels, dtype=torch.long),
            n_images=0,
            grid=grid,
        )


_SCALARS = frozenset({"n_images", "grid"})


def _as_grid(x: torch.Tensor) -> torch.Tensor:
    """A layer output as ``(B, C, H, W)``; vectors ``(B, C)`` become ``(B, C, 1, 1)``."""
    if x.dim() == 4:
        return x
    if x.dim() == 2:
        return x[:, :, None, None]
    raise ConvlensError(
        f"cannot scan a layer whose output has shape {tuple(x.shape[1:])} per image; "
        "accepted: (C, H, W) feature maps or (C,) vectors"
    )


def _exact_topk(flat: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the top ``k`` of each row of ``flat``, ties broken by the smaller index.

    ``torch.topk`` picks arbitrarily among values equal to the k-th (all the zeros of a dead
    ReLU unit, say). Asking it for ``k + 1`` shows where that can happen: a row whose
    ``(k+1)``-th value equals its k-th. Such rows are redone exactly: everything above the
    k-th value, then the first equal ones in index order.
    """
    n = flat.shape[1]
    vals, idx = flat.topk(min(k + 1, n), dim=1, sorted=True)  # (C, k+1)
    if n <= k:
        return idx  # every position is kept: no choice to make
    kth = vals[:, k - 1 : k]
    ambiguous = vals[:, k] == vals[:, k - 1]  # a tie across the edge
    idx = idx[:, :k]
    if bool(ambiguous.any()):
        rows = flat[ambiguous]
        edge = kth[ambiguous]
        above = rows > edge
        equal = rows == edge
        room = k - above.sum(dim=1, keepdim=True)  # how many of the equal ones fit
        take = above | (equal & (equal.cumsum(dim=1) <= room))
        idx[ambiguous] = take.nonzero()[:, 1].view(-1, k)  # row-major: grouped by row
    return idx


def sort_hits(
    values: torch.Tensor, images: torch.Tensor, positions: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sort each row by (value desc, image asc, position asc) and keep the first ``k``.

    Three stable sorts from the least to the most significant key give the lexicographic
    order; empty slots (-inf, -1, -1) sort last.
    """
    order = positions.argsort(dim=1, stable=True)
    order = order.gather(1, images.gather(1, order).argsort(dim=1, stable=True))
    order = order.gather(1, values.gather(1, order).argsort(dim=1, stable=True, descending=True))
    order = order[:, :k]
    return values.gather(1, order), images.gather(1, order), positions.gather(1, order)


def _count_positive(flat: torch.Tensor) -> torch.Tensor:
    """Per row, how many entries are above zero. Summing ``sign(max(x, 0))`` in float32 is
    several times faster than summing a boolean mask, and exact below 2**24 per row."""
    if flat.shape[1] >= 2**24:
        return (flat > 0).sum(dim=1)
    return flat.clamp(min=0).sign_().sum(dim=1).round_().long()


def _top_hits(
    xv: torch.Tensor, per_image_max: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per channel, the exact top ``k`` of ``xv`` ``(B, C, HW)`` as (values, batch row,
    position), ties broken by (row, position).

    Only the ``k`` images with the largest maxima can hold a channel's top ``k`` values (the
    k-th largest value is at least the k-th largest image maximum), so when the (k+1)-th image
    maximum is strictly smaller the search runs over those ``k`` images alone; channels with
    a tie there (a dead unit's zeros) search the whole batch.
    """
    B, C, HW = xv.shape
    kk = min(k, B * HW)
    values = torch.empty(C, kk)
    rows = torch.empty(C, kk, dtype=torch.long)
    positions = torch.empty(C, kk, dtype=torch.long)
    narrow = torch.zeros(C, dtype=torch.bool)
    if k < B:
        best, order = per_image_max.t().topk(k + 1, dim=1)  # (C, k+1)
        narrow = best[:, k] < best[:, k - 1]
    if bool(narrow.any()):
        ch = narrow.nonzero()[:, 0]
        sel = order[ch, :k].sort(dim=1).values  # (Cn, k) rows in batch order: ties stay exact
        cand = xv[sel, ch[:, None], :].reshape(len(ch), k * HW)  # (Cn, k·HW)
        local = _exact_topk(cand, kk)
        values[ch] = cand.gather(1, local)
        rows[ch] = sel.gather(1, local // HW)
        positions[ch] = local % HW
    if not bool(narrow.all()):
        ch = (~narrow).nonzero()[:, 0]
        full = xv[:, ch, :].transpose(0, 1).reshape(len(ch), B * HW)  # (Cw, B·HW)
        local = _exact_topk(full, kk)
        values[ch] = full.gather(1, local)
        rows[ch] = local // HW
        positions[ch] = local % HW
    return values, rows, positions


def map_candidates(activations: torch.Tensor, image_indices: torch.Tensor, k: int) -> LayerState:
    """Like :func:`map_batch` but with the hits left unsorted: the streaming scan sorts many
    batches' candidates at once in :func:`merge_many` (fewer, larger operations per batch)."""
    if k < 1:
        raise ConvlensError(f"top-k needs k of at least 1, got {k}")
    x = _as_grid(activations.detach()).float()
    image_indices = image_indices.to(torch.long)
    if bool((image_indices.diff() < 0).any()):  # ties resolve by index order: sort the batch
        image_indices, order = image_indices.sort()
        x = x[order]
    B, C, H, W = x.shape
    xv = x.reshape(B, C, H * W)  # every reduction below runs along the contiguous last axis
    per_image_max = xv.amax(dim=2)  # (B, C)
    values, rows, positions = _top_hits(xv, per_image_max, k)
    images = image_indices[rows]
    if values.shape[1] < k:  # fewer positions in this batch than slots: pad with empty slots
        pad = LayerState.empty(C, k - values.shape[1], (H, W))
        values = torch.cat([values, pad.values], 1)
        images = torch.cat([images, pad.images], 1)
        positions = torch.cat([positions, pad.positions], 1)
    return LayerState(
        values=values,
        images=images,
        positions=positions,
        total=xv.sum(dim=2).sum(dim=0).double(),  # float32 within a batch (fast), float64 across
        total_sq=torch.linalg.vector_norm(xv, dim=2).square().sum(dim=0).double(),
        maximum=per_image_max.amax(dim=0),
        positive=_count_positive(xv.reshape(B * C, H * W)).view(B, C).sum(dim=0),
        fired=(per_image_max > 0).sum(dim=0),
        n_images=B,
        grid=(H, W),
    )


def map_batch(activations: torch.Tensor, image_indices: torch.Tensor, k: int) -> LayerState:
    """The state of one batch: ``activations`` ``(B, C, H, W)`` (or ``(B, C)``) of the images
    whose data-set indices are ``image_indices`` ``(B,)``.

    One ``topk`` per channel over all ``B·H·W`` positions; no Python loop over images.
    """
    return merge_many([map_candidates(activations, image_indices, k)])


def merge_many(states: list[LayerState]) -> LayerState:
    """:func:`merge` of several states at once: one concatenation and one sort."""
    first = states[0]
    for other in states[1:]:
        if other.values.shape != first.values.shape or other.grid != first.grid:
            raise ConvlensError(
                f"cannot merge scan states of different shapes: {tuple(first.values.shape)} on "
                f"a {first.grid} grid and {tuple(other.values.shape)} on a {other.grid} grid"
            )
    values, images, positions = sort_hits(
        torch.cat([s.values for s in states], 1),
        torch.cat([s.images for s in states], 1),
        torch.cat([s.positions for s in states], 1),
        first.k,
    )
    return replace(
        first,
        values=values,
        images=images,
        positions=positions,
        total=torch.stack([s.total for s in states]).sum(0),
        total_sq=torch.stack([s.total_sq for s in states]).sum(0),
        maximum=torch.stack([s.maximum for s in states]).amax(0),
        positive=torch.stack([s.positive for s in states]).sum(0),
        fired=torch.stack([s.fired for s in states]).sum(0),
        n_images=sum(s.n_images for s in states),
    )


def merge(a: LayerState, b: LayerState) -> LayerState:
    """Combine the states of two disjoint sets of images (associative and commutative)."""
    return merge_many([a, b])


ScanState = dict[str, LayerState]  # layer name -> its state


def merge_states(a: ScanState, b: ScanState) -> ScanState:
    """:func:`merge` layer by layer; both states must cover the same layers."""
    if set(a) != set(b):
        raise ConvlensError(f"cannot merge scans of different layers: {sorted(a)} vs {sorted(b)}")
    return {name: merge(a[name], b[name]) for name in a}
