"""The model-parameter randomization test (Adebayo et al., "Sanity Checks for Saliency Maps",
NeurIPS 2018).

An explanation that describes the model must change when the model's weights are destroyed.
Cascading randomization re-initializes the layers with weights one at a time, from the output
towards the input, recomputes the explanation after each step (for the same target classes)
and compares it with the original by Spearman rank correlation, of ``|map|`` and of the
signed map. A method whose similarity stays near 1 while the network is being wiped out
(as the paper found for guided backpropagation) is not explaining the model.

>>> from convlens.model.zoo import build
>>> m = build("tiny-vgg:input_size=32", seed=0)
>>> r = randomization_check(m, torch.rand(2, 3, 32, 32), "saliency")
>>> r.layers[0], tuple(r.spearman_abs.shape)
('output', (5, 2))
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from convlens.errors import ConvlensError
from convlens.model.core import Model

from .api import explain
from .base import Attribution
from .targets import TargetSpec


@dataclass
class SanityResult:
    """``layers[i]`` is the i-th layer randomized (cumulatively, top first); rows of
    ``spearman_abs`` / ``spearman`` ``(steps, B)`` compare the map after step ``i`` with the
    original; ``maps`` holds the heat maps ``(B, H, W)``, the original first."""

    method: str
    layers: list[str]
    spearman_abs: torch.Tensor
    spearman: torch.Tensor
    maps: list[torch.Tensor]


def average_ranks(values: torch.Tensor) -> torch.Tensor:
    """Ranks (0-based) of a 1-D tensor, ties sharing their average rank."""
    uniq, inverse, counts = torch.unique(values, return_inverse=True, return_counts=True)
    del uniq
    start = counts.cumsum(0) - counts
    return (start + (counts - 1) / 2.0).double()[inverse]


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman's ρ between rows of ``a`` and ``b`` (``(B, ...)`` each), ``(B,)``; 0 when a
    row is constant."""
    out = []
    for x, y in zip(a.flatten(1), b.flatten(1), strict=True):
        rx, ry = average_ranks(x), average_ranks(y)
        rx, ry = rx - rx.mean(), ry - ry.mean()
        denom = (rx.square().sum() * ry.square().sum()).sqrt()
        out.append((rx * ry).sum() / denom if denom > 0 else torch.zeros((), dtype=rx.dtype))
    return torch.stack(out).float()


def weighted_layers(model: Model) -> list[str]:
    """Names of the conv and linear layers, from the output back to the input."""
    return [
        lay.name
        for lay in reversed(model.graph.layers)
        if lay.kind in ("conv", "linear") and lay.module is not None and lay.call == 1
    ]


def randomize_(module: nn.Module, seed: int) -> None:
    """Re-initialize ``module``'s own parameters (PyTorch's default initialization)."""
    torch.manual_seed(seed)
    reset = getattr(module, "reset_parameters", None)
    if callable(reset):
        reset()
    else:
        with torch.no_grad():
            for p in module.parameters(recurse=False):
                p.normal_(0, 0.05)


def randomization_check(
    model: Model,
    images: torch.Tensor,
    method: str = "grad-cam",
    target: TargetSpec = None,
    layer: str | None = None,
    seed: int = 0,
    **params: Any,
) -> SanityResult:
    """Cascading randomization of ``model``'s weighted layers (on a copy; the caller's model is
    not touched), explaining ``images`` with ``method`` after every step."""
    original = explain(model, images, method, target, layer, **params)
    fixed: TargetSpec = original.targets if original.targets is not None else target
    victim = copy.deepcopy(model)
    names = weighted_layers(victim)
    if not names:
        raise ConvlensError("the model has no conv or linear layer to randomize")
    maps = [original.heat()]
    rho_abs, rho = [], []
    for i, name in enumerate(names):
        randomize_(victim.layer(name), seed + i)
        a: Attribution = explain(victim, images, method, fixed, layer, **params)
        heat = a.heat()
        maps.append(heat)
        rho_abs.append(spearman(maps[0].abs(), heat.abs()))
        rho.append(spearman(maps[0], heat))
    return SanityResult(method, names, torch.stack(rho_abs), torch.stack(rho), maps)
