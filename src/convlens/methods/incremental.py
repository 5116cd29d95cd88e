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


Box = tuple[int, int, int, int]  # top, left, bottom, right (exclusive)


def _cone(win: Window, box: Box, out_hw: tuple[int, int]) -> Box:
    """The output rows/columns that input ``box`` changes, clipped to the output map."""
    out = []
    for ax, (a0, a1) in enumerate(((box[0], box[2]), (box[1], box[3]))):
        k, s, p = win.effective(ax), win.stride[ax], win.padding[ax]
        out.append((max(0, (a0 + p - k) // s + 1), min(out_hw[ax], -(-(a1 + p) // s))))
    return (out[0][0], out[1][0], out[0][1], out[1][1])


class IncrementalRunner:
    """Caches the unoccluded activations of a batch and evaluates occluded copies.

    Rows are window-major: row ``i B + b`` is window ``i`` on example ``b``, so every window
    is a plain slice of the cached activations (no gathers with index tensors).
    """

    def __init__(self, model: Model, plan: ChainPlan, x: torch.Tensor) -> None:
        self.model, self.plan = model, plan
        h = model.normalize(x)
        self.bases = [h]
        self.padded: list[torch.Tensor] = []
        for module, win in plan.prefix:
            if win is not None:  # the op's input with its padding, made once
                p = (win.padding[1], win.padding[1], win.padding[0], win.padding[0])
                self.padded.append(F.pad(h, p, value=win.pad_value) if any(p) else h)
            else:
                self.padded.append(h)
            h = module(h)
            self.bases.append(h)

    def run(
        self, corners: list[tuple[int, int]], window: tuple[int, int], fill: torch.Tensor
    ) -> torch.Tensor:
        """Outputs ``(len(corners) B, K)`` with a ``window`` at each ``(top, left)`` of
        ``corners`` set to ``fill`` ``(C, 1, 1)`` (pixel units)."""
        B, C = self.bases[0].shape[:2]
        n = len(corners)
        value = ((fill - self.model.mean[0]) / self.model.std[0]).to(self.bases[0])
        patch = value.view(1, C, 1, 1).expand(n * B, C, *window)
        origins = list(corners)  # where each window's carried patch starts
        boxes: list[Box] = [(t, c, t + window[0], c + window[1]) for t, c in corners]
        for (module, win), padded, base in zip(
            self.plan.prefix, self.padded, self.bases[:-1], strict=True
        ):
            if win is None:
                patch = module(patch)
                continue
            patch, origins, boxes = self._window_op(
                module, win, padded, base, patch, origins, boxes
            )
        full = self.bases[-1].repeat(n, 1, 1, 1)  # (n B, C, H, W), window-major
        h, w = patch.shape[-2:]
        for i, (top, left) in enumerate(origins):
            full[i * B : (i + 1) * B, :, top : top + h, left : left + w] = patch[
                i * B : (i + 1) * B
            ]
        return self.plan.head(full)

    def _window_op(
        self,
        module: nn.Module,
        win: Window,
        padded: torch.Tensor,
        base: torch.Tensor,
        patch: torch.Tensor,
        origins: list[tuple[int, int]],
        boxes: list[Box],
    ) -> tuple[torch.Tensor, list[tuple[int, int]], list[Box]]:
        """Recompute, for every window, the region of ``module``'s output its patch changes."""
        B = base.shape[0]
        H, W = base.shape[-2:]
        out_hw = tuple(
            (n + 2 * win.padding[ax] - win.effective(ax)) // win.stride[ax] + 1
            for ax, n in enumerate((H, W))
        )
        cones = [_cone(win, box, (out_hw[0], out_hw[1])) for box in boxes]
        oh = max(c[2] - c[0] for c in cones)  # one region size for the whole chunk
        ow = max(c[3] - c[1] for c in cones)
        ih = (oh - 1) * win.stride[0] + win.effective(0)
        iw = (ow - 1) * win.stride[1] + win.effective(1)
        ph, pw = patch.shape[-2:]
        regions, starts = [], []
        for i, (cone, (py, px)) in enumerate(zip(cones, origins, strict=True)):
            sy, sx = min(cone[0], out_hw[0] - oh), min(cone[1], out_hw[1] - ow)
            ty, tx = sy * win.stride[0], sx * win.stride[1]  # in padded input coordinates
            region = padded[:, :, ty : ty + ih, tx : tx + iw].clone()
            py, px = py + win.padding[0], px + win.padding[1]
            y0, y1 = max(ty, py), min(ty + ih, py + ph)
            x0, x1 = max(tx, px), min(tx + iw, px + pw)
            if y1 > y0 and x1 > x0:
                region[:, :, y0 - ty : y1 - ty, x0 - tx : x1 - tx] = patch[
                    i * B : (i + 1) * B, :, y0 - py : y1 - py, x0 - px : x1 - px
                ]
            regions.append(region)
            starts.append((sy, sx))
        return _apply_unpadded(module, torch.cat(regions)), starts, cones


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
