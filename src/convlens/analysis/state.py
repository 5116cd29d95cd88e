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


def _exact_topk(flat: torch.Tensor, k: int, floor: torch.Tensor | None = None) -> torch.Tensor:
    """Indices of the top ``k`` of each row of ``flat``, ties broken by the smaller index.

    ``torch.topk`` picks arbitrarily among values equal to the k-th (all the zeros of a dead
    ReLU unit, say). Asking it for ``k + 1`` shows where that can happen: a row whose
    ``(k+1)``-th value equals its k-th. Such rows are redone exactly: everything above the
    k-th value, then the first equal ones in index order. With a ``floor`` per row (see
    :func:`_top_hits`) a tie at or below it is left as it is: those hits lose any merge.
    """
    n = flat.shape[1]
    vals, idx = flat.topk(min(k + 1, n), dim=1, sorted=True)  # (C, k+1)
    if n <= k:
        return idx  # every position is kept: no choice to make
    kth = vals[:, k - 1 : k]
    ambiguous = vals[:, k] == vals[:, k - 1]  # a tie across the edge
    if floor is not None:
        ambiguous &= vals[:, k - 1] > floor
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


def _count_positive(flat: torch.Tensor, scratch: torch.Tensor | None = None) -> torch.Tensor:
    """Per row, how many entries are above zero: ``x > 0`` written as float32 ones and zeros
    (one pass) and summed, several times faster than summing a boolean mask, and exact below
    2**24 per row. ``scratch`` (as many floats as ``flat``, reused across batches) spares
    allocating and page-faulting a fresh buffer of the layer's size on every call."""
    if flat.shape[1] >= 2**24:
        return (flat > 0).sum(dim=1)
    if scratch is None or scratch.numel() < flat.numel():
        scratch = torch.empty(flat.numel())
    ones = torch.gt(flat, 0, out=scratch[: flat.numel()].view(flat.shape))
    return ones.sum(dim=1).round_().long()


# A byte lane of an int64 word holds at most 255 before it carries into the next lane.
LANE_MAX = 255


def _count_nonzero(flat: torch.Tensor, scratch: torch.Tensor | None = None) -> torch.Tensor:
    """Per row, how many entries are not zero, from one pass that writes a byte per entry.

    ``flat`` is copied into a bool buffer (nonzero -> 1) whose rows are padded with zeros to
    whole int64 words; summing the words as int64 adds eight bytes side by side without a
    carry as long as no lane passes 255 (rows are summed in groups of at most 255 words), and
    the eight lane totals add up to the count. The buffer is a quarter of the float32 one
    :func:`_count_positive` writes and the int64 sum reads an eighth as many elements, which
    is what costs on a layer that has just left the cache. For a non-negative layer (a ReLU's
    output) "not zero" is "above zero", except for NaN: the caller checks for it."""
    R, N = flat.shape
    words = -(-N // 8)
    groups = -(-words // LANE_MAX)
    if groups > 1:
        words = groups * LANE_MAX
    padded = words * 8
    need = R * padded
    if scratch is None or scratch.numel() * scratch.element_size() < need:
        buf = torch.empty(need, dtype=torch.bool)
    else:
        buf = scratch.view(-1).view(torch.bool)[:need]
    rows = buf.view(R, padded)
    if padded > N:
        rows[:, N:].zero_()
    rows[:, :N].copy_(flat)
    lanes = rows.view(torch.int64).view(R, groups, words // groups).sum(dim=2)  # (R, groups)
    return lanes.view(torch.uint8).view(R, groups * 8).sum(dim=1)


def _count_above_zero(
    flat: torch.Tensor, scratch: torch.Tensor | None, nonneg: bool
) -> torch.Tensor:
    return _count_nonzero(flat, scratch) if nonneg else _count_positive(flat, scratch)


# Rows of a large layer (over 8 MiB) are reduced a block of this many floats (512 KiB) at a time, so
# the four reductions over a block find it in the core's cache instead of streaming the whole
# layer from memory four times (ResNet-18's first ReLU is 100 MB per batch of 32).
BLOCK = 1 << 17
ROW_UNITS = 2048  # maps of at least this many positions are searched row by row


def _row_stats(
    rows: torch.Tensor, width: int, scratch: torch.Tensor | None = None, nonneg: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row of ``rows`` ``(R, N)``, ``N`` a multiple of ``width``: the maximum of every run
    of ``width`` entries ``(R, N / width)`` (one image row of a feature map), and the row's
    float32 sum, float32 sum of squares and count of entries above zero; computed a block of
    rows at a time for large inputs. ``nonneg``: no entry is below zero (see
    :func:`_count_nonzero`; rows holding a NaN are then recounted by the caller)."""
    R, N = rows.shape
    if R * N <= 16 * BLOCK or N >= BLOCK:  # 8 MiB and less: no gain measured
        return (
            rows.view(R, N // width, width).amax(dim=2),
            rows.sum(dim=1),
            torch.linalg.vector_norm(rows, dim=1).square(),
            _count_above_zero(rows, scratch, nonneg),
        )
    step = max(1, BLOCK // N)
    maximum = torch.empty(R, N // width)
    total, total_sq = torch.empty(R), torch.empty(R)
    positive = torch.empty(R, dtype=torch.long)
    for start in range(0, R, step):
        block = rows[start : start + step]
        stop = start + block.shape[0]
        torch.amax(block.view(-1, N // width, width), dim=2, out=maximum[start:stop])
        torch.sum(block, dim=1, out=total[start:stop])
        torch.linalg.vector_norm(block, dim=1, out=total_sq[start:stop])
        positive[start:stop] = _count_above_zero(block, scratch, nonneg)
    return maximum, total, total_sq.square_(), positive


def _unit_rows(sel: torch.Tensor, channels: torch.Tensor, n_ch: int, rows: int) -> torch.Tensor:
    """Flat row indices into a ``(B·C·H, W)`` view of a batch (``n_ch`` = C, ``rows`` = H)
    for units ``sel`` (unit ``u`` is row ``u % H`` of image ``u // H``) of ``channels`` (one
    per row of ``sel``)."""
    if rows == 1:
        return sel * n_ch + channels[:, None]
    return ((sel // rows) * n_ch + channels[:, None]) * rows + sel % rows


def _search(
    x4: torch.Tensor, ch: torch.Tensor, sel: torch.Tensor, k: int, floor: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The exact top ``k`` of channels ``ch`` over the units ``sel`` ``(len(ch), m)`` (unit
    ``u`` is row ``u % H`` of image ``u // H``) of ``x4`` ``(B, C, H, W)``, as (values, unit,
    offset in the unit); ``sel`` ascends, so a tie between units goes to the earlier one."""
    B, C, H, W = x4.shape
    m = sel.shape[1]
    flat = _unit_rows(sel, ch, C, H).view(-1)
    cand = x4.view(B * C * H, W).index_select(0, flat).view(len(ch), m * W)  # (Cn, m·W)
    local = _exact_topk(cand, min(k, m * W), floor)
    return cand.gather(1, local), sel.gather(1, local // W), local % W


def _top_hits(
    xv: torch.Tensor, unit_max: torch.Tensor, k: int, floor: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per channel, the exact top ``k`` of ``xv`` ``(B, C, HW)`` as (values, batch row,
    position), ties broken by (row, position); batch row ``-1`` marks an empty slot. Fewer
    than ``k`` columns come back when the batch has fewer than ``k`` values worth returning.

    The search runs over *units*, runs of ``W`` consecutive positions (one row of an image's
    feature map, ``unit_max`` ``(B, C, H)`` their maxima). Only the ``k`` units with the
    largest maxima can hold a channel's top ``k`` values (the k-th largest value is at least
    the k-th largest unit maximum), so when the (k+1)-th unit maximum is strictly smaller the
    search reads those ``k·W`` values alone. A channel with a tie there (equal maxima on
    several images: a saturated unit, or a dead one) needs every unit whose maximum reaches
    the k-th, and then every channel searches that many.

    ``floor`` ``(C,)``, when given, is a value that only entries *strictly above* it can beat
    (the k-th value of a running state whose hits all come from earlier images). Then only
    units whose maximum exceeds ``floor`` matter: if no channel has one, nothing is searched;
    otherwise every channel searches its ``m`` best units, ``m`` the most any channel has
    above its floor (at most ``k``), and a tie at the k-th unit maximum matters only above the
    floor. Hits at or below ``floor`` (from channels with fewer such units) are not the
    batch's own top ``k``, but they lose to the state's in any merge (a tie goes to the
    state's earlier image), so the merged result is exact. All channels are searched together,
    so the number of tensor operations does not grow with the number of channels.
    """
    B, C, HW = xv.shape
    H = unit_max.shape[2]
    W = HW // H
    U = B * H
    umax = unit_max.permute(1, 0, 2).reshape(C, U)  # (C, U), units in (image, row) order
    x4 = xv.view(B, C, H, W)
    wide = None  # channels searched over the whole batch
    if k >= U:  # every unit is searched: no choice to make
        sel = torch.arange(U).expand(C, U)
    else:
        best, order = umax.topk(k + 1, dim=1)  # (C, k+1), largest first
        m = k
        tie = best[:, k] == best[:, k - 1]
        if floor is not None:
            live = best[:, :k] > floor[:, None]
            m = int(live.sum(dim=1).max())
            if m == 0:  # nothing in this batch can enter any channel's top k
                empty = torch.full((C, 0), EMPTY_IMAGE, dtype=torch.long)
                return torch.empty(C, 0), empty, empty
            tie &= live[:, k - 1]  # a tie at or below the floor cannot matter
        if bool(tie.any()):
            # The k-th largest value is at least the k-th unit maximum, so the units whose
            # maximum reaches it hold the top k: search all of them (k and the tied ones).
            # Where that is many (a dead unit's zeros, before there is a floor), search the
            # channel's whole batch on its own rather than that many units of every channel.
            need = torch.zeros(C, dtype=torch.long)
            need[tie] = (umax[tie] >= best[tie, k - 1 : k]).sum(dim=1)
            many = need > 2 * k
            if bool(many.any()):
                wide = many.nonzero()[:, 0]
                need[many] = 0
            if int(need.max()) > m:
                m = int(need.max())
                order = umax.topk(m, dim=1).indices
        sel = order[:, :m].sort(dim=1).values
    values, units, offsets = _search(x4, torch.arange(C), sel, k, floor)
    if wide is not None:  # k < U <= B·HW: k columns, as many as the search above returned
        full = xv[:, wide, :].transpose(0, 1).reshape(len(wide), B * HW)  # (Cw, B·HW)
        local = _exact_topk(full, k)
        pos = local % HW
        values[wide] = full.gather(1, local)
        units[wide] = (local // HW) * H + pos // W
        offsets[wide] = pos % W
    # back from (unit, offset) to (image, position)
    if H == 1:
        return values, units, offsets
    return values, units // H, (units % H) * W + offsets


def _pad_hits(
    values: torch.Tensor, images: torch.Tensor, positions: torch.Tensor, width: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hits padded with empty slots (-inf, -1, -1) to ``width`` columns."""
    n = width - values.shape[1]
    pad = torch.full((values.shape[0], n), EMPTY_IMAGE, dtype=torch.long)
    return (
        torch.cat([values, torch.full((values.shape[0], n), float("-inf"))], 1),
        torch.cat([images, pad], 1),
        torch.cat([positions, pad], 1),
    )


def map_candidates(
    activations: torch.Tensor,
    image_indices: torch.Tensor,
    k: int,
    floor: torch.Tensor | None = None,
) -> LayerState:
    """Like :func:`map_batch` but with the hits left unsorted: the streaming scan sorts many
    batches' candidates at once in :func:`merge_many` (fewer, larger operations per batch).

    ``floor`` (see :func:`_top_hits`) lets the streaming scan skip channels whose batch cannot
    reach the running top ``k``; the result is then only valid merged with that state.
    """
    if k < 1:
        raise ConvlensError(f"top-k needs k of at least 1, got {k}")
    x = _as_grid(activations.detach()).float()
    image_indices = image_indices.to(torch.long)
    if bool((image_indices.diff() < 0).any()):  # ties resolve by index order: sort the batch
        image_indices, order = image_indices.sort()
        x = x[order]
    return map_sorted(x, image_indices, k, floor)


def map_sorted(
    x: torch.Tensor,
    image_indices: torch.Tensor,
    k: int,
    floor: torch.Tensor | None = None,
    scratch: torch.Tensor | None = None,
    nonneg: bool = False,
) -> LayerState:
    """:func:`map_candidates` of a float32 ``(B, C, H, W)`` batch whose ``image_indices``
    (int64) already ascend: the streaming scan's per-layer call, with no checks to repeat
    (``scratch``: see :func:`_count_positive`). ``nonneg``: the caller knows that no value is
    below zero (a ReLU's output), which allows a cheaper count of the positive ones."""
    B, C, H, W = x.shape
    xv = x.reshape(B, C, H * W)  # every reduction below runs along the contiguous last axis
    # Large maps are searched an image row at a time, small ones a whole image at a time
    # (a maximum over a few dozen values vectorizes poorly; see _top_hits).
    rows_h = H if H * W >= ROW_UNITS else 1
    flat = xv.reshape(B * C, H * W)
    unit_max, sums, squares, positive = _row_stats(flat, H * W // rows_h, scratch, nonneg)
    if nonneg:  # NaN is "not zero" but not above zero; a row holding one sums to NaN
        nan = sums.isnan()
        if bool(nan.any()):
            positive[nan] = _count_positive(flat[nan])
    unit_max = unit_max.view(B, C, rows_h)
    per_image_max = unit_max.amax(dim=2) if rows_h > 1 else unit_max.view(B, C)  # (B, C)
    values, rows, positions = _top_hits(xv, unit_max, k, floor)
    sums, squares, positive = sums.view(B, C), squares.view(B, C), positive.view(B, C)
    images = image_indices[rows]
    if values.shape[1] < k:  # fewer hits than slots: pad with empty slots
        values, images, positions = _pad_hits(values, images, positions, k)
    return LayerState(
        values=values,
        images=images,
        positions=positions,
        # float32 along each image's map (a vectorized pass each), float64 across images
        total=sums.sum(dim=0, dtype=torch.float64),
        total_sq=squares.sum(dim=0, dtype=torch.float64),
        maximum=per_image_max.amax(dim=0),
        positive=positive.sum(dim=0),
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
