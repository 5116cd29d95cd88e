"""Adversarial examples: how small a change of the pixels changes the prediction.

- FGSM (Goodfellow, Shlens and Szegedy, "Explaining and Harnessing Adversarial Examples", ICLR
  2015): one step of size ε along the sign of the loss gradient,
  ``x' = clip(x + ε · sign(∇ₓ L(x, y)))``; targeted: ``x' = clip(x − ε · sign(∇ₓ L(x, t)))``.
- PGD (Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks", ICLR
  2018): from a random point of the ε-ball, repeat a step of size α (the gradient's sign for
  L∞, the gradient over its L2 norm for L2) and project back onto the ball and onto ``[0, 1]``.

Budgets are in pixel units (images are in ``[0, 1]``; the model normalizes inside), so
``eps=8/255`` means no pixel moves by more than 8 grey levels under L∞.

>>> from convlens.model.zoo import build
>>> m = build("tiny-vgg:in_channels=1,input_size=28", seed=0).eval()
>>> x = torch.rand(2, 1, 28, 28)
>>> r = fgsm(m, x, eps=0.05)
>>> bool((r.adversarial - x).abs().max() <= 0.05 + 1e-6)
True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from PIL import Image

from convlens.errors import ConvlensError
from convlens.io.figure import caption, grid
from convlens.model.core import Model
from convlens.probe import preserved_modes

Norm = Literal["linf", "l2"]
Labels = int | str | Sequence[int | str] | torch.Tensor


@dataclass
class AdversarialResult:
    """The perturbed images, the perturbation and the probabilities before and after.

    ``labels`` are the classes attacked (true or predicted); ``target`` the classes aimed at
    (``None`` when untargeted).
    """

    original: torch.Tensor
    adversarial: torch.Tensor
    before: torch.Tensor  # (B, classes) probabilities on the original
    after: torch.Tensor  # (B, classes) probabilities on the adversarial
    labels: torch.Tensor
    target: torch.Tensor | None
    eps: float
    norm: str

    @property
    def perturbation(self) -> torch.Tensor:
        return self.adversarial - self.original

    @property
    def pred_before(self) -> torch.Tensor:
        return self.before.argmax(1)

    @property
    def pred_after(self) -> torch.Tensor:
        return self.after.argmax(1)

    @property
    def success(self) -> torch.Tensor:
        """Per image: the prediction moved off the label (or onto the target)."""
        if self.target is not None:
            return self.pred_after == self.target
        return self.pred_after != self.labels

    def amplified(self) -> torch.Tensor:
        """The perturbation for display: 0.5 gray is zero, the largest change reaches 0 or 1."""
        return amplify(self.perturbation)

    def figure(self, classes: Sequence[str], cell_size: int = 128) -> Image.Image:
        """Per image a row: original, amplified perturbation, adversarial, with predictions."""
        cells: list[torch.Tensor] = []
        labels: list[str] = []
        gain = 0.5 / self.perturbation.abs().flatten(1).amax(1).clamp(min=1e-12)
        for i in range(self.original.shape[0]):
            kb, ka = int(self.pred_before[i]), int(self.pred_after[i])
            cells += [self.original[i], self.amplified()[i], self.adversarial[i]]
            labels += [
                f"{classes[kb]} ({float(self.before[i, kb]):.2f})",
                f"perturbation x{float(gain[i]):.0f}",
                f"{classes[ka]} ({float(self.after[i, ka]):.2f})",
            ]
        body = grid(cells, 3, labels, cell_size=cell_size)
        kind = "targeted" if self.target is not None else "untargeted"
        return caption(body, f"{kind} attack, {self.norm} budget eps = {self.eps:.4g}", size=13)


def amplify(delta: torch.Tensor) -> torch.Tensor:
    """Map a perturbation to ``[0, 1]``: ``0.5 + δ / (2 max|δ|)`` per image."""
    peak = delta.abs().flatten(1).amax(1).clamp(min=1e-12).view(-1, 1, 1, 1)
    return (0.5 + delta / (2 * peak)).clamp(0, 1)


def _labels(model: Model, value: Labels | None, x: torch.Tensor) -> torch.Tensor:
    b = x.shape[0]
    if value is None:
        return model.probabilities(x).argmax(1)
    if isinstance(value, torch.Tensor):
        items: list[int | str] = [int(v) for v in value.flatten().tolist()]
    elif isinstance(value, int | str):
        items = [value]
    else:
        items = list(value)
    idx = torch.tensor([model.class_index(v) for v in items])
    if idx.numel() == 1:
        return idx.expand(b).clone()
    if idx.numel() != b:
        raise ConvlensError(f"{idx.numel()} labels given for {b} images")
    return idx


def _loss(model: Model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy per image, from logits or from a model that ends in probabilities."""
    out = model(x)
    if model.outputs == "probabilities":
        return F.nll_loss(out.clamp(min=1e-12).log(), y, reduction="none")
    return F.cross_entropy(out, y, reduction="none")


def _check(model: Model, x: torch.Tensor, eps: float, norm: str) -> None:
    model.check_input(x)
    if not eps >= 0:  # also catches NaN
        raise ConvlensError(
            f"the budget eps must be >= 0 (in pixel units, images in [0, 1]); got {eps}"
        )
    if norm not in ("linf", "l2"):
        raise ConvlensError(f"unknown norm {norm!r}; accepted: linf, l2")
    if float(x.min()) < 0 or float(x.max()) > 1:
        raise ConvlensError("images must be in [0, 1]")


def _grad(model: Model, x: torch.Tensor, y: torch.Tensor, sign: float) -> torch.Tensor:
    """Gradient of ``sign · loss`` with respect to the images (ascend it to attack)."""
    x = x.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(sign * _loss(model, x, y).sum(), x)
    return g


def _l2_normalize(g: torch.Tensor) -> torch.Tensor:
    return g / g.flatten(1).norm(dim=1).clamp(min=1e-12).view(-1, 1, 1, 1)


def _project(delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    if norm == "linf":
        return delta.clamp(-eps, eps)
    n = delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    return delta * (eps / n.clamp(min=eps)).clamp(max=1.0) if eps > 0 else delta * 0


def _result(
    model: Model, x: torch.Tensor, adv: torch.Tensor, y: torch.Tensor,
    target: torch.Tensor | None, eps: float, norm: str,
) -> AdversarialResult:  # fmt: skip
    before, after = model.probabilities(x), model.probabilities(adv)
    return AdversarialResult(x.detach().clone(), adv.detach(), before, after, y, target, eps, norm)


def fgsm(
    model: Model,
    x: torch.Tensor,
    eps: float,
    *,
    labels: Labels | None = None,
    target: Labels | None = None,
) -> AdversarialResult:
    """One signed-gradient step of size ``eps`` (L∞). ``labels`` default to the predictions."""
    _check(model, x, eps, "linf")
    with preserved_modes(model):
        y = _labels(model, labels, x)
        t = _labels(model, target, x) if target is not None else None
        g = _grad(model, x, t if t is not None else y, -1.0 if t is not None else 1.0)
        adv = (x + eps * g.sign()).clamp(0, 1)
        return _result(model, x, adv, y, t, eps, "linf")


def pgd(
    model: Model,
    x: torch.Tensor,
    eps: float,
    *,
    norm: Norm = "linf",
    steps: int = 20,
    alpha: float | None = None,
    labels: Labels | None = None,
    target: Labels | None = None,
    random_start: bool = True,
    seed: int | None = 0,
) -> AdversarialResult:
    """Projected gradient descent within an L∞ or L2 ball of radius ``eps``.

    ``alpha`` (the step) defaults to ``2.5 · eps / steps``, Madry et al.'s choice.
    """
    _check(model, x, eps, norm)
    if steps < 1:
        raise ConvlensError(f"steps must be at least 1; got {steps}")
    alpha = 2.5 * eps / steps if alpha is None else alpha
    if alpha < 0:
        raise ConvlensError(f"the step alpha must be >= 0; got {alpha}")
    gen = torch.Generator().manual_seed(seed if seed is not None else int(torch.seed() % 2**63))
    with preserved_modes(model):
        y = _labels(model, labels, x)
        t = _labels(model, target, x) if target is not None else None
        aim, sign = (t, -1.0) if t is not None else (y, 1.0)
        delta = torch.zeros_like(x)
        if random_start and eps > 0:
            noise = torch.rand(x.shape, generator=gen) * 2 - 1
            if norm == "l2":  # a random direction, a random radius inside the ball
                noise = _l2_normalize(noise) * torch.rand(x.shape[0], 1, 1, 1, generator=gen)
            delta = _project(noise * eps, eps, norm)
            delta = (x + delta).clamp(0, 1) - x
        for _ in range(steps):
            g = _grad(model, x + delta, aim, sign)
            step = g.sign() if norm == "linf" else _l2_normalize(g)
            delta = _project(delta + alpha * step, eps, norm)
            delta = (x + delta).clamp(0, 1) - x  # stay a valid image
        return _result(model, x, x + delta, y, t, eps, norm)


__all__ = ["AdversarialResult", "amplify", "fgsm", "pgd"]
