"""Incremental inference for occlusion on chain networks (Nakandala, Kumar & Papakonstantinou,
"Incremental and Approximate Inference for Faster Occlusion-based Deep CNN Explanations",
SIGMOD 2019).

A patch changes only the activations inside its receptive-field cone. For a window op with
kernel ``k`` (effective ``k_e = d (k − 1) + 1``), stride ``s`` and padding ``p``, input rows
``[a, b)`` change output rows ``i`` with ``i s − p + k_e > a`` and ``i s − p < b``::

    first = ⌊(a + p − k_e) / s⌋ + 1        last + 1 = ⌈(b + p) / s⌉

(clipped to the map). So each layer of the chain is recomputed only on that region, from the
unoccluded image's activations (computed once) with the changed region pasted in; element-wise
layers (ReLU-like, batch norm in eval mode, dropout in eval mode) just map the patch. The
regions of one batch are given one fixed size (the largest, shifted inside the map at the
borders), so a chunk of windows runs as one batched op per layer. The layers after the last
spatial one (flatten, linear) run on the full, patched activation.

Applies to models whose network is an ``nn.Sequential`` of convs, pools and element-wise
layers followed by any head; :func:`chain_plan` returns ``None`` otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from convlens.model.core import Model

_ELEMENTWISE: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid,
    nn.Hardtanh, nn.Hardswish, nn.Mish, nn.BatchNorm2d, nn.Dropout, nn.Dropout2d, nn.Identity,
)  # fmt: skip


@dataclass(frozen=True)
class Window:
    """A sliding-window op: ``(h, w)`` kernel, stride, padding, dilation."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    pad_value: float

    def effective(self, axis: int) -> int:
        return self.dilation[axis] * (self.kernel[axis] - 1) + 1


def _pair(v: int | tuple[int, ...]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[-1]))


def _window(module: nn.Module) -> Window | None:
    if isinstance(module, nn.Conv2d) and isinstance(module.padding, tuple):
        if module.padding_mode != "zeros":
            return None
        return Window(_pair(module.kernel_size), _pair(module.stride), _pair(module.padding),
                      _pair(module.dilation), 0.0)  # fmt: skip
    if isinstance(module, nn.MaxPool2d) and not module.ceil_mode:
        stride = module.stride or module.kernel_size
        return Window(_pair(module.kernel_size), _pair(stride), _pair(module.padding),
                      _pair(module.dilation), float("-inf"))  # fmt: skip
    if (
        isinstance(module, nn.AvgPool2d)
        and not module.ceil_mode
        and _pair(module.padding) == (0, 0)
    ):
        stride = module.stride or module.kernel_size
        return Window(_pair(module.kernel_size), _pair(stride), (0, 0), (1, 1), 0.0)
    return None


@dataclass
class ChainPlan:
    """The incremental prefix (modules with their window, ``None`` for element-wise) and the
    head that runs on full activations."""

    prefix: list[tuple[nn.Module, Window | None]]
    head: nn.Module


def chain_plan(model: Model) -> ChainPlan | None:
    """Split a sequential network into an incremental prefix and a head, or ``None``."""
    net = model.net
    if not isinstance(net, nn.Sequential) or not model.graph.is_chain:
        return None
    children = list(net.children())
    prefix: list[tuple[nn.Module, Window | None]] = []
    for child in children:
        win = _window(child)
        if win is None and not isinstance(child, _ELEMENTWISE):
            break
        if isinstance(child, nn.BatchNorm2d | nn.Dropout | nn.Dropout2d) and child.training:
            break
        prefix.append((child, win))
    if not any(w is not None for _, w in prefix):
        return None
    return ChainPlan(prefix, nn.Sequential(*children[len(prefix) :]))


class _Patch:
    """Per-row changed regions of one layer: values ``(n, C, Rh, Rw)`` at ``top``/``left``
    ``(n,)``, and the truly affected extents ``[a0, a1)`` per axis (``(n,)`` each)."""

    def __init__(
        self,
        values: torch.Tensor,
        origin: tuple[torch.Tensor, torch.Tensor],
        affected: tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    ) -> None:
        self.values = values
        self.origin = origin
        self.affected = affected


def _gather(
    src: torch.Tensor,
    rows: torch.Tensor,
    top: torch.Tensor,
    left: torch.Tensor,
    size: tuple[int, int],
) -> torch.Tensor:
    """``src[rows[i], :, top[i]:top[i]+h, left[i]:left[i]+w]`` for every ``i`` at once."""
    yi = top[:, None] + torch.arange(size[0])  # (n, h)
    xj = left[:, None] + torch.arange(size[1])  # (n, w)
    out = src[rows[:, None, None], :, yi[:, :, None], xj[:, None, :]]  # (n, h, w, C)
    return out.permute(0, 3, 1, 2)


def _paste(region: torch.Tensor, top: torch.Tensor, left: torch.Tensor, patch: _Patch,
           shift: tuple[int, int]) -> torch.Tensor:  # fmt: skip
    """Write the part of ``patch`` (its origin moved by ``shift``) that falls in ``region``
    (whose top-left is ``top``/``left``)."""
    n, _, h, w = region.shape
    ph, pw = patch.values.shape[-2:]
    pi = top[:, None] + torch.arange(h) - (patch.origin[0][:, None] + shift[0])  # (n, h)
    pj = left[:, None] + torch.arange(w) - (patch.origin[1][:, None] + shift[1])  # (n, w)
    mask = ((pi >= 0) & (pi < ph))[:, :, None] & ((pj >= 0) & (pj < pw))[:, None, :]
    idx = torch.arange(n)[:, None, None]
    vals = patch.values[idx, :, pi.clamp(0, ph - 1)[:, :, None], pj.clamp(0, pw - 1)[:, None, :]]
    return torch.where(mask[:, None], vals.permute(0, 3, 1, 2), region)


def _through_window(
    module: nn.Module, win: Window, base: torch.Tensor, rows: torch.Tensor, patch: _Patch
) -> _Patch:
    """Recompute the region of ``module``'s output that ``patch`` changes."""
    H_in, W_in = base.shape[-2:]
    out_size = [
        (n + 2 * win.padding[ax] - win.effective(ax)) // win.stride[ax] + 1
        for ax, n in enumerate((H_in, W_in))
    ]
    starts, sizes, affected = [], [], []
    for ax in (0, 1):
        a0, a1 = patch.affected[ax]
        k, s, p = win.effective(ax), win.stride[ax], win.padding[ax]
        first = torch.clamp(torch.div(a0 + p - k, s, rounding_mode="floor") + 1, min=0)
        last = torch.clamp(-torch.div(-(a1 + p), s, rounding_mode="floor"), max=out_size[ax])
        size = int((last - first).max())
        starts.append(torch.clamp(first, max=out_size[ax] - size))
        sizes.append(size)
        affected.append((first, last))
    pad = (win.padding[1], win.padding[1], win.padding[0], win.padding[0])
    padded = F.pad(base, pad, value=win.pad_value) if any(pad) else base
    in_size = tuple((sizes[ax] - 1) * win.stride[ax] + win.effective(ax) for ax in (0, 1))
    top, left = starts[0] * win.stride[0], starts[1] * win.stride[1]  # padded coordinates
    region = _gather(padded, rows, top, left, (in_size[0], in_size[1]))
    region = _paste(region, top, left, patch, (win.padding[0], win.padding[1]))
    return _Patch(_apply_unpadded(module, region), (starts[0], starts[1]),
                  (affected[0], affected[1]))  # fmt: skip


def _apply_unpadded(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module`` on an already padded region (padding 0)."""
    if isinstance(module, nn.Conv2d):
        return F.conv2d(x, module.weight, module.bias, module.stride, 0, module.dilation,
                        module.groups)  # fmt: skip
    if isinstance(module, nn.MaxPool2d):
        return F.max_pool2d(x, module.kernel_size, module.stride or module.kernel_size, 0,
                            module.dilation)  # fmt: skip
    assert isinstance(module, nn.AvgPool2d)
    return F.avg_pool2d(x, module.kernel_size, module.stride or module.kernel_size, 0)


class IncrementalRunner:
    """Caches the unoccluded activations of a batch and evaluates occluded copies."""

    def __init__(self, model: Model, plan: ChainPlan, x: torch.Tensor) -> None:
        self.model, self.plan = model, plan
        h = model.normalize(x)
        self.bases = [h]
        for module, _ in plan.prefix:
            h = module(h)
            self.bases.append(h)

    def run(
        self,
        rows: torch.Tensor,
        tops: torch.Tensor,
        lefts: torch.Tensor,
        window: tuple[int, int],
        fill: torch.Tensor,
    ) -> torch.Tensor:
        """Outputs for examples ``rows`` with a ``window`` at ``tops``/``lefts`` set to
        ``fill`` ``(C, 1, 1)`` (pixel units)."""
        n, C = rows.shape[0], self.bases[0].shape[1]
        values = ((fill - self.model.mean[0]) / self.model.std[0]).to(self.bases[0])
        patch = _Patch(
            values.view(1, C, 1, 1).expand(n, C, *window).contiguous(),
            (tops, lefts),
            ((tops, tops + window[0]), (lefts, lefts + window[1])),
        )
        for (module, win), base in zip(self.plan.prefix, self.bases[:-1], strict=True):
            if win is None:
                patch = _Patch(module(patch.values), patch.origin, patch.affected)
            else:
                patch = _through_window(module, win, base, rows, patch)
        last = self.bases[-1]
        full = last[rows]  # (n, C, H, W) copy of the unoccluded activations
        h, w = patch.values.shape[-2:]
        yi = patch.origin[0][:, None] + torch.arange(h)
        xj = patch.origin[1][:, None] + torch.arange(w)
        full[torch.arange(n)[:, None, None], :, yi[:, :, None], xj[:, None, :]] = (
            patch.values.permute(0, 2, 3, 1)
        )
        return self.plan.head(full)
