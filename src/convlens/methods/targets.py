"""What an explanation explains: one score per example, picked from the model's output.

A target is given as

- ``None``: the predicted class of each example (the arg-max of the output);
- an ``int`` or a class name: the same class for every example;
- a sequence (or 1-D tensor) of ints or names: one class per example;
- a callable ``f(output) -> (N,)``: any score of the output rows, so regression and
  multi-label heads work too (``lambda out: out[:, 3] + out[:, 5]``).

The score explained for a class ``c`` is the logit ``z_c``. For a model whose output is already
probabilities (``model.outputs == "probabilities"``, e.g. a Keras softmax head) it is
``log p_c``, which equals the logit up to a per-example constant, so gradients are not crushed
by the saturating softmax.

>>> import torch
>>> from convlens.model.zoo import build
>>> m = build("tiny-vgg:input_size=32")
>>> t = resolve_target(m, 3, torch.zeros(2, 10))
>>> t.indices.tolist()
[3, 3]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from convlens.errors import ConvlensError
from convlens.model.core import Model

ScoreFn = Callable[[torch.Tensor], torch.Tensor]
TargetSpec = int | str | Sequence[int | str] | torch.Tensor | ScoreFn | None


@dataclass(frozen=True)
class Target:
    """Resolved targets for a batch of ``B`` examples: class ``indices`` or a score ``fn``."""

    indices: torch.Tensor | None  # (B,) long
    fn: ScoreFn | None
    log_output: bool  # the model outputs probabilities: the score is log p

    @property
    def classes(self) -> list[int] | None:
        return None if self.indices is None else [int(i) for i in self.indices]

    def logits(self, out: torch.Tensor) -> torch.Tensor:
        """The output as logits (log-probabilities for a probability head)."""
        return out.clamp_min(1e-30).log() if self.log_output else out

    def score(self, out: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """The explained score ``(N,)`` of each output row; ``rows[n]`` is row n's example."""
        if self.fn is not None:
            return _call_score_fn(self.fn, out)
        assert self.indices is not None
        idx = self.indices if rows is None else self.indices[rows]
        return self.logits(out).gather(1, idx.to(out.device).view(-1, 1)).squeeze(1)

    def probability(self, out: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """The target's probability ``(N,)`` (the callable's value for a callable target)."""
        if self.fn is not None:
            return _call_score_fn(self.fn, out)
        assert self.indices is not None
        idx = self.indices if rows is None else self.indices[rows]
        probs = out if self.log_output else out.softmax(dim=1)
        return probs.gather(1, idx.to(out.device).view(-1, 1)).squeeze(1)


def _call_score_fn(fn: ScoreFn, out: torch.Tensor) -> torch.Tensor:
    score = fn(out)
    if not isinstance(score, torch.Tensor) or score.shape != (out.shape[0],):
        got = tuple(score.shape) if isinstance(score, torch.Tensor) else type(score).__name__
        raise ConvlensError(
            f"a target callable must return one score per example, shape ({out.shape[0]},); "
            f"got {got}"
        )
    return score


def resolve_target(model: Model, spec: TargetSpec, out: torch.Tensor) -> Target:
    """Turn what the user gave into a :class:`Target` for the batch whose output is ``out``."""
    log_output = model.outputs == "probabilities"
    batch = out.shape[0]
    if callable(spec) and not isinstance(spec, torch.Tensor):
        _call_score_fn(spec, out.detach())
        return Target(None, spec, log_output)
    if spec is None:
        return Target(out.detach().argmax(dim=1), None, log_output)
    if isinstance(spec, torch.Tensor):
        if spec.dim() > 1 or spec.is_floating_point():
            raise ConvlensError(
                f"a target tensor must hold class indices, shape () or ({batch},); "
                f"got {spec.dtype} of shape {tuple(spec.shape)}"
            )
        spec = int(spec) if spec.dim() == 0 else [int(v) for v in spec.tolist()]
    if isinstance(spec, int | str):
        idx = model.class_index(spec)
        return Target(torch.full((batch,), idx, dtype=torch.long), None, log_output)
    items = list(spec)
    if len(items) != batch:
        raise ConvlensError(
            f"{len(items)} targets given for a batch of {batch} images; give one target per "
            "image, a single class for all, or None for the predicted classes"
        )
    indices = torch.tensor([model.class_index(v) for v in items], dtype=torch.long)
    return Target(indices, None, log_output)
