"""ONNX shape operators as torch: reshaping, slicing, gathering, padding and resizing.

The companion of ``onnx_ops`` (same conventions). Shape arithmetic folds to constants at load
time; what runs on images keeps the batch free (see ``onnx_graph``). Padding and resizing
with non-constant modes are done by gathering precomputed indices, so every ONNX mode is
reproduced exactly rather than approximated by a torch mode with other edge rules.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from convlens.model.formats.onnx_graph import (
    BATCH,
    Converter,
    Node,
    batch_free_reshape,
    handler,
)
from convlens.model.formats.onnx_ops import DTYPES, _axes, _axis, _float_input, _no_batch_axis

# ------------------------------------------------------------------ shape changes


def flatten2d(x: torch.Tensor, axis: int) -> torch.Tensor:
    """ONNX Flatten: ``(prod(shape[:axis]), prod(shape[axis:]))``."""
    if axis == 0:
        return x.reshape(1, -1)
    if axis == x.dim():
        return torch.flatten(x).unsqueeze(-1)
    return torch.flatten(torch.flatten(x, axis), 0, axis - 1)


@handler("Flatten")
def _flatten(c: Converter, n: Node) -> None:
    rank = len(c.shape(n.inputs[0]))
    axis = n.geti("axis", 1)
    if not -rank <= axis <= rank:
        raise n.fail(f"axis {axis} is out of range for a rank-{rank} input")
    axis = axis + rank if axis < 0 else axis
    if axis == 1 and rank >= 2:
        c.module(n, nn.Flatten())
    else:
        if c.batch_free and axis != 1 and not c.is_const(n.inputs[0]):
            raise n.fail(f"Flatten from axis {axis} would mix the batch with other axes")
        c.emit(n, flatten2d, [n.inputs[0]], axis=axis)


def _resolve_shape(
    n: Node, in_shape: tuple[int, ...], target: list[int], allow_zero: bool
) -> list[int]:
    out = list(target)
    for i, v in enumerate(out):
        if v == 0 and not allow_zero:
            if i >= len(in_shape):
                raise n.fail(f"shape {target}: 0 at position {i} has no input dimension to copy")
            out[i] = in_shape[i]
    if out.count(-1) > 1 or any(v < -1 for v in out):
        raise n.fail(f"shape {target} is not a valid reshape target")
    total = math.prod(in_shape)
    if -1 in out:
        known = math.prod(v for v in out if v != -1)
        if known == 0 or total % known:
            raise n.fail(f"cannot reshape {in_shape} to {target}")
        out[out.index(-1)] = total // known
    if math.prod(out) != total:
        raise n.fail(f"cannot reshape {in_shape} to {target}")
    return out


@handler("Reshape")
def _reshape(c: Converter, n: Node) -> None:
    x = n.inputs[0]
    if n.opset < 5:
        target = n.ints("shape", [])
    else:
        target = [int(v) for v in c.const(n, 1, "(the target shape) ").reshape(-1)]
    in_shape = c.shape(x)
    if c.batch_free and in_shape[:1] == (BATCH,) and target[:1] == [1] and BATCH not in target:
        # exported at batch 1: a leading 1 is the batch (the product check below confirms)
        target = [BATCH, *target[1:]]
    resolved = _resolve_shape(n, in_shape, target, bool(n.geti("allowzero", 0)))
    if c.is_const(x):
        c.set_const(n.outputs[0], c.consts[c.value(x)].reshape(resolved))
        return
    final = batch_free_reshape(n, in_shape, resolved) if c.batch_free else resolved
    c.emit(n, torch.reshape, [x], shape=tuple(final))


def permute(x: torch.Tensor, perm: tuple[int, ...]) -> torch.Tensor:
    return x.permute(perm)


@handler("Transpose")
def _transpose(c: Converter, n: Node) -> None:
    x = n.inputs[0]
    rank = len(c.shape(x))
    perm = n.ints("perm", list(range(rank))[::-1])
    if sorted(perm) != list(range(rank)):
        raise n.fail(f"perm {perm} is not a permutation of {rank} axes")
    src = c.value(x)
    if c.batch_free and src in c.inputs and perm == [0, 3, 1, 2] and not c.ops:
        # A TensorFlow export: NHWC input transposed first. The model takes NCHW instead.
        b, h, w, ch = c.meta[src].shape
        c.meta[src] = torch.empty((b, ch, h, w), dtype=c.meta[src].dtype, device="meta")
        c.alias[n.outputs[0]] = src
        return
    if c.batch_free and not c.is_const(x) and BATCH in c.shape(x) and perm[0] != 0:
        raise n.fail(f"Transpose {perm} moves the batch axis")
    c.emit(n, permute, [x], perm=tuple(perm))


def slice_nd(x: torch.Tensor, index: tuple[slice, ...], flip: tuple[int, ...]) -> torch.Tensor:
    """``x[index]`` after reversing axes ``flip`` (ONNX's negative steps)."""
    return (torch.flip(x, flip) if flip else x)[index]


@handler("Slice")
def _slice(c: Converter, n: Node) -> None:
    x = n.inputs[0]
    shape = c.shape(x)
    rank = len(shape)
    if n.opset < 10:
        starts, ends = n.ints("starts", []), n.ints("ends", [])
        axes = n.ints("axes", list(range(len(starts))))
        steps = [1] * len(starts)
    else:
        starts = [int(v) for v in c.const(n, 1, "(starts) ").reshape(-1)]
        ends = [int(v) for v in c.const(n, 2, "(ends) ").reshape(-1)]
        ax = c.opt_const(n, 3)
        st = c.opt_const(n, 4)
        axes = list(range(len(starts))) if ax is None else [int(v) for v in ax.reshape(-1)]
        steps = [1] * len(starts) if st is None else [int(v) for v in st.reshape(-1)]
    if not len(starts) == len(ends) == len(axes) == len(steps):
        raise n.fail("starts, ends, axes and steps differ in length")
    index = [slice(None)] * rank
    flip: list[int] = []
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        a = _axis(n, axis, rank)
        if step == 0:
            raise n.fail("a slice step of 0 is invalid")
        lo, hi, st_ = slice(start, end, step).indices(shape[a])
        if c.batch_free and shape[a] == BATCH and not c.is_const(x):
            if (lo, hi, st_) != (0, BATCH, 1):
                raise n.fail("slicing along the batch axis is not supported")
            continue
        count = len(range(lo, hi, st_))
        if st_ < 0:
            flip.append(a)
            lo = shape[a] - 1 - lo
            st_ = -st_
        index[a] = slice(lo, lo + count * st_ if count else lo, st_)
    c.emit(n, slice_nd, [x], index=tuple(index), flip=tuple(flip))


def split(x: torch.Tensor, sizes: tuple[int, ...], dim: int) -> tuple[torch.Tensor, ...]:
    return torch.split(x, list(sizes), dim)


@handler("Split")
def _split(c: Converter, n: Node) -> None:
    x = n.inputs[0]
    shape = c.shape(x)
    axis = _axis(n, n.geti("axis", 0), len(shape))
    _no_batch_axis(c, n, [axis], "Split")
    count = len(n.outputs)
    given = n.ints("split", []) if n.opset < 13 else (
        [int(v) for v in c.opt_const(n, 1).reshape(-1)] if n.has(1) else []  # type: ignore[union-attr]
    )  # fmt: skip
    if not given:
        if n.opset >= 18 and "num_outputs" in n.attrs:
            count = n.geti("num_outputs", count)
            chunk = -(-shape[axis] // count)
            given = [min(chunk, shape[axis] - i * chunk) for i in range(count)]
        elif shape[axis] % count:
            raise n.fail(f"axis of size {shape[axis]} does not split into {count} equal parts")
        else:
            given = [shape[axis] // count] * count
    if sum(given) != shape[axis] or len(given) != len(n.outputs) or min(given) < 0:
        raise n.fail(f"split sizes {given} do not cover the axis of size {shape[axis]}")
    c.emit(n, split, [x], outputs=n.outputs, sizes=tuple(given), dim=axis)


def cat(*xs: torch.Tensor, dim: int) -> torch.Tensor:
    return torch.cat(xs, dim=dim)


@handler("Concat")
def _concat(c: Converter, n: Node) -> None:
    rank = len(c.shape(n.inputs[0]))
    axis = _axis(n, n.geti("axis", 1), rank)
    c.emit(n, cat, [i for i in n.inputs if i], dim=axis)


def squeeze(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    return torch.squeeze(x, dims) if dims else x


def unsqueeze(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    for d in dims:  # ascending: each index is in the output's numbering
        x = torch.unsqueeze(x, d)
    return x


@handler("Squeeze")
def _squeeze(c: Converter, n: Node) -> None:
    shape = c.shape(n.inputs[0])
    axes = _axes(c, n, 1, 13)
    if axes is None:
        dims = [i for i, d in enumerate(shape) if d == 1]
    else:
        dims = sorted({_axis(n, a, len(shape)) for a in axes})
        if any(shape[d] != 1 for d in dims):
            raise n.fail(f"cannot squeeze axes {axes} of shape {shape}: not of size 1")
    c.emit(n, squeeze, [n.inputs[0]], dims=tuple(dims))


@handler("Unsqueeze")
def _unsqueeze(c: Converter, n: Node) -> None:
    shape = c.shape(n.inputs[0])
    axes = _axes(c, n, 1, 13)
    if not axes:
        raise n.fail("Unsqueeze needs axes")
    out_rank = len(shape) + len(axes)
    dims = sorted(_axis(n, a, out_rank) for a in axes)
    if len(set(dims)) != len(dims):
        raise n.fail(f"axes {axes} repeat")
    c.emit(n, unsqueeze, [n.inputs[0]], dims=tuple(dims))


def gather(x: torch.Tensor, idx: torch.Tensor, axis: int, shape: tuple[int, ...]) -> torch.Tensor:
    """ONNX Gather: ``x``'s axis replaced by ``idx``'s shape (``idx`` already non-negative)."""
    out = torch.index_select(x, axis, idx.reshape(-1))
    return out.unflatten(axis, shape) if shape else out.squeeze(axis)


def gather_elements(x: torch.Tensor, idx: torch.Tensor, axis: int) -> torch.Tensor:
    return torch.gather(x, axis, idx)


def _norm_indices(c: Converter, n: Node, size: int) -> str:
    """Input 1 (constant indices) made non-negative, checked in ``[-size, size)``."""
    idx = c.const(n, 1, "(the indices) ").astype(np.int64)
    if idx.size and (idx.min() < -size or idx.max() >= size):
        raise n.fail(f"indices {idx.min()}..{idx.max()} are out of range for size {size}")
    name = n.outputs[0] + "#indices"
    c.consts[name] = np.where(idx < 0, idx + size, idx)
    return name


@handler("Gather", "GatherElements")
def _gather(c: Converter, n: Node) -> None:
    x = n.inputs[0]
    shape = c.shape(x)
    axis = _axis(n, n.geti("axis", 0), len(shape))
    _no_batch_axis(c, n, [axis], n.op)
    idx = _norm_indices(c, n, shape[axis])
    if n.op == "Gather":
        c.emit(n, gather, [x, idx], axis=axis, shape=tuple(c.consts[idx].shape))
    else:
        c.emit(n, gather_elements, [x, idx], axis=axis)


@handler("Shape")
def _shape(c: Converter, n: Node) -> None:
    shape = c.shape(n.inputs[0])
    start, end = n.geti("start", 0), n.attrs.get("end")
    c.set_const(n.outputs[0], np.array(shape[start : None if end is None else int(end)], np.int64))


@handler("Size")
def _size(c: Converter, n: Node) -> None:
    c.set_const(n.outputs[0], np.array(math.prod(c.shape(n.inputs[0])), np.int64))


def _tensor(c: Converter, n: Node, proto: Any) -> np.ndarray:
    from convlens.model.formats.onnx_format import tensor_to_array

    return tensor_to_array(proto, f"ONNX node {n.index} ({n.op}) value", c.budget)


@handler("Constant")
def _constant(c: Converter, n: Node) -> None:
    a = n.attrs
    if "value" in a:
        arr = _tensor(c, n, a["value"])
    elif "value_float" in a:
        arr = np.array(a["value_float"], np.float32)
    elif "value_floats" in a:
        arr = np.array(a["value_floats"], np.float32)
    elif "value_int" in a:
        arr = np.array(a["value_int"], np.int64)
    elif "value_ints" in a:
        arr = np.array(a["value_ints"], np.int64)
    else:
        raise n.fail(f"a Constant of kind {sorted(a)} is not supported (only numeric tensors)")
    c.set_const(n.outputs[0], arr)


@handler("ConstantOfShape")
def _constant_of_shape(c: Converter, n: Node) -> None:
    shape = [int(v) for v in c.const(n, 0, "(the shape) ").reshape(-1)]
    c.check_batch_free(np.array(shape, np.int64), "the shape of ConstantOfShape")
    value = _tensor(c, n, n.attrs["value"]) if "value" in n.attrs else np.zeros(1, np.float32)
    if value.size != 1:
        raise n.fail("value must hold one element")
    from convlens.model.formats.safety import checked_elements

    checked_elements(shape, f"ONNX node {n.index} (ConstantOfShape)")
    c.set_const(n.outputs[0], np.full(shape, value.reshape(-1)[0], dtype=value.dtype))


def expand(x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    return x.expand(shape)


@handler("Expand")
def _expand(c: Converter, n: Node) -> None:
    x = n.inputs[0]
    target = [int(v) for v in c.const(n, 1, "(the shape) ").reshape(-1)]
    in_shape = c.shape(x)
    try:
        out = list(np.broadcast_shapes(in_shape, tuple(target)))
    except ValueError:
        raise n.fail(f"cannot expand {in_shape} to {target}") from None
    if c.is_const(x):
        c.check_batch_free(np.array(out, np.int64), "the shape of Expand")
        c.emit(n, expand, [x], shape=tuple(out))
        return
    lead = len(out) - len(in_shape)
    for i, d in enumerate(out):
        if d == BATCH and c.batch_free:
            if i < lead or in_shape[i - lead] != BATCH:
                raise n.fail("Expand to the batch size is not supported (any batch size runs)")
            out[i] = -1
    c.emit(n, expand, [x], shape=tuple(out))


def tile(x: torch.Tensor, reps: tuple[int, ...]) -> torch.Tensor:
    return torch.tile(x, reps)


@handler("Tile")
def _tile(c: Converter, n: Node) -> None:
    reps = [int(v) for v in c.const(n, 1, "(repeats) ").reshape(-1)]
    if min(reps, default=0) < 0:
        raise n.fail(f"negative repeats {reps}")
    shape = c.shape(n.inputs[0])
    if c.batch_free and BATCH in shape and reps[shape.index(BATCH)] != 1:
        raise n.fail("Tile along the batch axis is not supported")
    c.emit(n, tile, [n.inputs[0]], reps=tuple(reps))


@handler("Range")
def _range(c: Converter, n: Node) -> None:
    start, limit, delta = (c.const(n, i).reshape(()) for i in range(3))
    for v in (start, limit, delta):
        c.check_batch_free(np.asarray(v), "Range")
    if delta == 0:
        raise n.fail("delta is 0")
    count = max(math.ceil(float(limit - start) / float(delta)), 0)
    from convlens.model.formats.safety import checked_elements

    checked_elements([count], f"ONNX node {n.index} (Range)")
    c.set_const(n.outputs[0], (start + np.arange(count) * delta).astype(start.dtype))


def cast(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return x.to(dtype)


@handler("Cast", "CastLike")
def _cast(c: Converter, n: Node) -> None:
    if n.op == "Cast":
        to = n.geti("to", 0)
        if to not in DTYPES:
            raise n.fail(f"casting to ONNX type {to} is not supported (only numeric types)")
        dtype = DTYPES[to]
    else:
        dtype = c.dtype(n.inputs[1])
    c.emit(n, cast, [n.inputs[0]], dtype=dtype)


@handler("Identity", "Dropout")
def _identity(c: Converter, n: Node) -> None:
    if n.op == "Dropout" and n.has(2):
        mode = c.const(n, 2, "(training_mode) ")
        if bool(mode.reshape(-1)[0]):
            raise n.fail("Dropout in training mode is random; not supported")
    src = c.value(n.inputs[0])
    if src in c.consts:
        c.consts[n.outputs[0]] = c.consts[src]
    else:
        c.alias[n.outputs[0]] = src


def argmax(x: torch.Tensor, axis: int, keepdims: bool, last: bool, kind: str) -> torch.Tensor:
    """Index of the first (or ``last``) maximum or minimum along ``axis``."""
    fn = torch.argmax if kind == "max" else torch.argmin
    if not last:
        return fn(x, axis, keepdim=keepdims)
    return x.shape[axis] - 1 - fn(torch.flip(x, (axis,)), axis, keepdim=keepdims)


@handler("ArgMax", "ArgMin")
def _argmax(c: Converter, n: Node) -> None:
    rank = len(c.shape(n.inputs[0]))
    axis = _axis(n, n.geti("axis", 0), rank)
    _no_batch_axis(c, n, [axis], n.op)
    c.emit(n, argmax, [n.inputs[0]], axis=axis, keepdims=bool(n.geti("keepdims", 1)),
           last=bool(n.geti("select_last_index", 0)), kind=n.op[3:].lower())  # fmt: skip


# ------------------------------------------------------------------------ padding


def pad_index(x: torch.Tensor, idx: torch.Tensor, axis: int) -> torch.Tensor:
    return torch.index_select(x, axis, idx)


def _pad_indices(size: int, before: int, after: int, mode: str) -> np.ndarray:
    """Source index of each padded position: ``edge`` repeats, ``reflect`` mirrors without
    the edge, ``wrap`` wraps around."""
    pos = np.arange(-before, size + after)
    if mode == "edge":
        return np.clip(pos, 0, size - 1)
    if mode == "wrap":
        return np.mod(pos, size)
    period = 2 * (size - 1)
    m = np.mod(pos, period) if period else np.zeros_like(pos)
    return np.where(m >= size, period - m, m)


@handler("Pad")
def _pad(c: Converter, n: Node) -> None:
    x = n.inputs[0]
    shape = c.shape(x)
    rank = len(shape)
    mode = n.gets("mode", "constant")
    if n.opset < 11:
        pads = n.ints("pads", [])
        value = n.getf("value", 0.0)
        axes = list(range(rank))
    else:
        pads = [int(v) for v in c.const(n, 1, "(pads) ").reshape(-1)]
        v = c.opt_const(n, 2)
        value = 0.0 if v is None or v.size == 0 else v.reshape(-1)[0].item()
        ax = c.opt_const(n, 3)
        axes = list(range(rank)) if ax is None else [_axis(n, int(a), rank) for a in ax.reshape(-1)]
    if len(pads) != 2 * len(axes):
        raise n.fail(f"{len(pads)} pads for {len(axes)} axes")
    begin = dict(zip(axes, pads[: len(axes)], strict=True))
    end = dict(zip(axes, pads[len(axes) :], strict=True))
    moved = [a for a in axes if begin[a] or end[a]]
    _no_batch_axis(c, n, moved, "Pad")
    if mode == "constant":
        flat: list[int] = []
        for a in range(rank - 1, -1, -1):  # F.pad lists the last axis first
            flat += [begin.get(a, 0), end.get(a, 0)]
        c.emit(n, F.pad, [x], pad=tuple(flat), value=value)
        return
    if mode not in ("reflect", "edge", "wrap"):
        raise n.fail(f"mode {mode!r} is not supported; accepted: constant, reflect, edge, wrap")
    src = x
    for k, a in enumerate(moved):
        if min(begin[a], end[a]) < 0 or (mode == "reflect" and max(begin[a], end[a]) >= shape[a]):
            raise n.fail(f"{mode} pads {[begin[a], end[a]]} on an axis of size {shape[a]}")
        if shape[a] == 0:
            raise n.fail(f"{mode} padding of an empty axis")
        idx_name = f"{n.outputs[0]}#idx{a}"
        c.consts[idx_name] = _pad_indices(shape[a], begin[a], end[a], mode).astype(np.int64)
        out = n.outputs[0] if k == len(moved) - 1 else f"{n.outputs[0]}#ax{a}"
        c.emit(n, pad_index, [src, idx_name], outputs=[out], axis=a)
        src = out
    if not moved:
        c.emit(n, torch.clone, [x])


# ------------------------------------------------------------------------- resize


def lerp_axis(
    x: torch.Tensor, i0: torch.Tensor, i1: torch.Tensor, w: torch.Tensor, axis: int
) -> torch.Tensor:
    """Linear interpolation along one axis: ``x[i0] + (x[i1] - x[i0]) * w``."""
    a = torch.index_select(x, axis, i0)
    b = torch.index_select(x, axis, i1)
    return a + (b - a) * w


def _source_coords(n: Node, mode: str, out_len: int, in_len: int, scale: float) -> np.ndarray:
    """Where each output position samples the input, by ``coordinate_transformation_mode``."""
    x = np.arange(out_len, dtype=np.float64)
    out_w = scale * in_len  # the reference uses the unrounded output length
    if mode == "half_pixel":
        return (x + 0.5) / scale - 0.5
    if mode == "pytorch_half_pixel":
        return (x + 0.5) / scale - 0.5 if out_w != 1 else np.full_like(x, -0.5)
    if mode == "align_corners":
        return x * (in_len - 1) / (out_w - 1) if out_w != 1 else np.zeros_like(x)
    if mode == "asymmetric":
        return x / scale
    if mode == "half_pixel_symmetric":
        adjustment = out_len / (scale * in_len)
        center = in_len / 2
        offset = center * (1 - adjustment)
        return offset + (x + 0.5) / scale - 0.5
    raise n.fail(
        f"coordinate_transformation_mode {mode!r} is not supported; accepted: half_pixel, "
        "pytorch_half_pixel, align_corners, asymmetric, half_pixel_symmetric"
    )


def _nearest(n: Node, coords: np.ndarray, rule: str, in_len: int) -> np.ndarray:
    frac = coords - np.floor(coords)
    if rule == "round_prefer_floor":
        idx = np.where(frac == 0.5, np.floor(coords), np.round(coords))
    elif rule == "round_prefer_ceil":
        idx = np.where(frac == 0.5, np.ceil(coords), np.round(coords))
    elif rule == "floor":
        idx = np.floor(coords)
    elif rule == "ceil":
        idx = np.ceil(coords)
    else:
        raise n.fail(f"nearest_mode {rule!r} is not supported")
    return np.clip(idx, 0, in_len - 1).astype(np.int64)


@handler("Resize", "Upsample")
def _resize(c: Converter, n: Node) -> None:
    x = n.inputs[0]
    shape = c.shape(x)
    rank = len(shape)
    mode = n.gets("mode", "nearest")
    if mode == "bilinear":
        mode = "linear"
    if mode not in ("nearest", "linear"):
        raise n.fail(f"mode {mode!r} is not supported; accepted: nearest, linear")
    legacy = n.op == "Upsample" or n.opset < 11
    axes = list(range(rank))
    sizes = None
    if n.op == "Upsample" and n.opset < 9:
        scales = [float(v) for v in n.attrs.get("scales", [])]
    elif legacy:
        scales = [float(v) for v in c.const(n, 1, "(scales) ").reshape(-1)]
    else:
        if n.geti("antialias", 0):
            raise n.fail("antialias=1 is not supported")
        if n.gets("keep_aspect_ratio_policy", "stretch") != "stretch":
            raise n.fail("keep_aspect_ratio_policy other than stretch is not supported")
        if "axes" in n.attrs:
            axes = [_axis(n, a, rank) for a in n.ints("axes", [])]
        sc = c.opt_const(n, 2)
        sz = c.opt_const(n, 3)
        scales = [] if sc is None or sc.size == 0 else [float(v) for v in sc.reshape(-1)]
        if sz is not None and sz.size:
            sizes = [int(v) for v in sz.reshape(-1)]
    if sizes is None:
        if len(scales) != len(axes) or min(scales, default=0) <= 0:
            raise n.fail(f"scales {scales} do not match {len(axes)} axes")
        outs = [math.floor(shape[a] * s) for a, s in zip(axes, scales, strict=True)]
    else:
        if len(sizes) != len(axes):
            raise n.fail(f"sizes {sizes} do not match {len(axes)} axes")
        outs = sizes
        scales = [o / shape[a] for a, o in zip(axes, outs, strict=True)]
    if legacy:
        coord, rule = "asymmetric", "floor"
        if mode == "nearest" and min(scales) < 1:
            raise n.fail("nearest downsampling before opset 11 differs between runtimes; refused")
    else:
        coord = n.gets("coordinate_transformation_mode", "half_pixel")
        rule = n.gets("nearest_mode", "round_prefer_floor")
    src = x
    moved = [
        (a, o, s) for a, o, s in zip(axes, outs, scales, strict=True) if o != shape[a] or s != 1
    ]
    _no_batch_axis(c, n, [a for a, _, _ in moved], n.op)
    up = _as_upsample(c, n, mode, coord, moved, sizes is not None)
    if up is not None:
        c.module(n, up)
        return
    for k, (a, out_len, scale) in enumerate(moved):
        in_len = shape[a]
        coords = _source_coords(n, coord, out_len, in_len, scale)
        out = n.outputs[0] if k == len(moved) - 1 else f"{n.outputs[0]}#ax{a}"
        base = f"{n.outputs[0]}#{a}"
        if mode == "nearest":
            c.consts[base + "i"] = _nearest(n, coords, rule, in_len)
            c.emit(n, pad_index, [src, base + "i"], outputs=[out], axis=a)
        else:
            i0 = np.floor(coords)
            w = (coords - i0).astype(np.float32)
            c.consts[base + "i0"] = np.clip(i0, 0, in_len - 1).astype(np.int64)
            c.consts[base + "i1"] = np.clip(i0 + 1, 0, in_len - 1).astype(np.int64)
            view = [1] * rank
            view[a] = out_len
            c.consts[base + "w"] = w.reshape(view).astype(_np_dtype(c.dtype(x)))
            names = [src, base + "i0", base + "i1", base + "w"]
            c.emit(n, lerp_axis, names, outputs=[out], axis=a)
        src = out
    if not moved:
        c.emit(n, torch.clone, [x])


def _as_upsample(
    c: Converter, n: Node, mode: str, coord: str, moved: list[tuple[int, int, float]], sized: bool
) -> nn.Module | None:
    """``nn.Upsample`` (one named layer) for bilinear resizing of H and W where torch's
    arithmetic is ONNX's: half-pixel centres, or pytorch_half_pixel with outputs over 1 pixel
    (torch clamps negative source positions to 0, as ONNX's edge rule does)."""
    x = n.inputs[0]
    shape = c.shape(x)
    if mode != "linear" or len(shape) != 4 or c.is_const(x) or not _float_input(c, x):
        return None
    if not moved or any(a not in (2, 3) for a, _, _ in moved):
        return None
    ok = coord == "half_pixel" or (
        coord == "pytorch_half_pixel" and min(o for _, o, _ in moved) > 1
    )
    if not ok:
        return None
    out = {2: shape[2], 3: shape[3]} | {a: o for a, o, _ in moved}
    factor = {2: 1.0, 3: 1.0} | {a: s for a, _, s in moved}
    if sized:
        return nn.Upsample(size=(out[2], out[3]), mode="bilinear", align_corners=False)
    return nn.Upsample(scale_factor=(factor[2], factor[3]), mode="bilinear", align_corners=False)


def _np_dtype(dtype: torch.dtype) -> Any:
    return torch.empty(0, dtype=dtype).numpy().dtype
