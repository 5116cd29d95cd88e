"""Gradient attributions: one or a few backward passes to the input pixels.

All of them differentiate the explained score ``S`` (see :mod:`convlens.methods.targets`)
with respect to the image ``x`` in pixel units ``[0, 1]`` (the model normalizes inside its
forward pass). Only the input gradient is computed (``torch.autograd.grad(..., inputs=x)``),
never the parameters', so frozen weights, inputs without ``requires_grad`` and models in
train mode all work, and the caller's tensors and ``.grad`` fields are left alone.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np
import torch

from convlens.errors import ConvlensError
from convlens.model.core import Model

from .base import Attribution, Bound, Method, chunks, predicted_target, register
from .rules import Rule, backward_rule, describe_changes
from .targets import Target, TargetSpec, resolve_target

CHUNK = Bound(1, 1024, integer=True)  # images per forward/backward pass
SEED = Bound(0, 2**32 - 1, integer=True)


def input_gradient(
    model: Model, x: torch.Tensor, target: Target, rows: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(dS/dx, S)`` for a batch whose row ``n`` belongs to example ``rows[n]``."""
    with torch.enable_grad():
        xr = x.detach().requires_grad_(True)
        score = target.score(model(xr), rows)
        (grad,) = torch.autograd.grad(score.sum(), xr)
    return grad, score.detach()


class GradientMethod(Method):
    """One forward and one backward pass; subclasses turn the gradient into a map."""

    family = "gradient"
    rule: ClassVar[Rule | None] = None

    def attribute(self, x: torch.Tensor, target: TargetSpec) -> Attribution:
        notes: list[str] = []
        with torch.enable_grad():
            xr = x.detach().requires_grad_(True)
            if self.rule is None:
                out = self.model(xr)
            else:
                with backward_rule(self.model, self.rule) as changed:
                    out = self.model(xr)
                notes = describe_changes(self.rule, changed, self.model)
            tgt = resolve_target(self.model, target, out)
            score = tgt.score(out)
            (grad,) = torch.autograd.grad(score.sum(), xr)
        values = self.transform(grad, x)
        return self.result(values, score, tgt, notes=notes)

    def transform(self, grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return grad


Reduce = Literal["max-abs", "abs", "signed"]


@register
class Saliency(GradientMethod):
    """Vanilla gradient saliency (Simonyan, Vedaldi & Zisserman, ICLR 2014 workshop).

    ``M_ij = max_c |∂S/∂x_cij|`` (``reduce="max-abs"``, the paper's map); ``"abs"`` keeps
    ``|∂S/∂x|`` per channel, ``"signed"`` the raw gradient.

    >>> from convlens.model.zoo import build
    >>> m = build("tiny-vgg:input_size=32")
    >>> tuple(Saliency(m)(torch.rand(2, 3, 32, 32)).values.shape)
    (2, 1, 32, 32)
    """

    name = "saliency"
    title = "Saliency (gradient)"
    paper = "Simonyan et al. 2014, Deep Inside Convolutional Networks"

    def __init__(self, model: Model, reduce: Reduce = "max-abs") -> None:
        super().__init__(model)
        if reduce not in ("max-abs", "abs", "signed"):
            raise ConvlensError(f"reduce must be max-abs, abs or signed; got {reduce!r}")
        self.reduce = reduce
        self.signed = reduce == "signed"  # type: ignore[misc]

    def params(self) -> dict[str, Any]:
        return {"reduce": self.reduce}

    def transform(self, grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.reduce == "max-abs":
            return grad.abs().amax(dim=1, keepdim=True)
        return grad.abs() if self.reduce == "abs" else grad


@register
class GradientXInput(GradientMethod):
    """Gradient × input (Shrikumar et al., 2016): ``x ⊙ ∂S/∂x``, per channel, signed.

    With a black image as the reference this is the first-order Taylor term of
    ``S(x) − S(0)``.
    """

    name = "gradient-x-input"
    title = "Gradient x input"
    paper = "Shrikumar et al. 2016, Not Just a Black Box"
    signed = True

    def transform(self, grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return grad * x


@register
class GuidedBackprop(GradientMethod):
    """Guided backpropagation (Springenberg et al., ICLR 2015 workshop, "Striving for
    Simplicity"): the gradient with ``R = [x > 0] · max(g, 0)`` at every ReLU; see
    :mod:`convlens.methods.rules`. Per channel, signed."""

    name = "guided-backprop"
    title = "Guided backpropagation"
    paper = "Springenberg et al. 2015, Striving for Simplicity"
    rule = "guided"
    signed = True


@register
class Deconvnet(GradientMethod):
    """Deconvnet (Zeiler & Fergus, ECCV 2014): the gradient with ``R = max(g, 0)`` at every
    ReLU (the forward pass's switches are ignored). Per channel, signed."""

    name = "deconvnet"
    title = "Deconvnet"
    paper = "Zeiler & Fergus 2014, Visualizing and Understanding Convolutional Networks"
    rule = "deconvnet"
    signed = True


class SampledGradientMethod(Method):
    """Averages gradients over many perturbed copies, evaluated ``chunk_size`` images at a
    time (copies of all examples together, so the batch stays large)."""

    family = "gradient"
    bounds: ClassVar[dict[str, Bound]] = {"chunk_size": CHUNK}

    def __init__(self, model: Model, n_samples: int, chunk_size: int) -> None:
        super().__init__(model)
        if n_samples < 1:
            raise ConvlensError(f"n_samples must be at least 1; got {n_samples}")
        if chunk_size < 1:
            raise ConvlensError(f"chunk_size must be at least 1; got {chunk_size}")
        self.n_samples = n_samples
        self.chunk_size = chunk_size

    def sample_gradients(
        self, x: torch.Tensor, target: Target, make: Any, weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``Σ_s w_s · φ(∂S/∂x at make(s))``; ``make(s0, s1)`` builds samples ``s0..s1`` as
        ``(s1 - s0, B, C, H, W)``; ``φ`` is :meth:`accumulate`."""
        B = x.shape[0]
        per_chunk = max(1, self.chunk_size // B)
        total = torch.zeros_like(x)
        for s0, s1 in chunks(self.n_samples, per_chunk):
            batch = make(s0, s1)  # (k, B, C, H, W)
            k = batch.shape[0]
            rows = torch.arange(B).repeat(k)  # sample-major: row n is example n % B
            grad, _ = input_gradient(self.model, batch.reshape(k * B, *x.shape[1:]), target, rows)
            grad = self.accumulate(grad.view(k, B, *x.shape[1:]))
            if weights is not None:
                grad = grad * weights[s0:s1].view(k, 1, 1, 1, 1).to(grad)
            total += grad.sum(dim=0)
        return total

    def accumulate(self, grads: torch.Tensor) -> torch.Tensor:
        return grads


@register
class SmoothGrad(SampledGradientMethod):
    """SmoothGrad (Smilkov et al., 2017): the gradient averaged over noisy copies.

    ``M = 1/n Σ_s ∂S/∂x (x + ε_s)``, ``ε_s ~ N(0, σ²)``, ``σ = noise · (max x − min x)`` per
    image; ``variant="squared"`` averages ``(∂S/∂x)²`` instead (SmoothGrad-Squared, Hooker et
    al. 2019). ``seed`` makes the noise reproducible; sample ``s`` uses the ``s``-th draw of
    shape ``(B, C, H, W)``.
    """

    name = "smoothgrad"
    title = "SmoothGrad"
    paper = "Smilkov et al. 2017, SmoothGrad: removing noise by adding noise"
    signed = True
    bounds: ClassVar[dict[str, Bound]] = {
        **SampledGradientMethod.bounds,
        "n_samples": Bound(1, 1000, integer=True),
        "noise": Bound(0, 10),
        "seed": SEED,
    }

    def __init__(
        self,
        model: Model,
        n_samples: int = 25,
        noise: float = 0.15,
        variant: Literal["mean", "squared"] = "mean",
        seed: int = 0,
        chunk_size: int = 64,
    ) -> None:
        super().__init__(model, n_samples, chunk_size)
        if variant not in ("mean", "squared"):
            raise ConvlensError(f"variant must be 'mean' or 'squared'; got {variant!r}")
        if noise < 0:
            raise ConvlensError(f"noise must be >= 0 (a fraction of the value range); got {noise}")
        self.noise, self.variant, self.seed = noise, variant, seed
        self.signed = variant == "mean"  # type: ignore[misc]

    def params(self) -> dict[str, Any]:
        return {"n_samples": self.n_samples, "noise": self.noise, "variant": self.variant,
                "seed": self.seed}  # fmt: skip

    def accumulate(self, grads: torch.Tensor) -> torch.Tensor:
        return grads.square() if self.variant == "squared" else grads

    def attribute(self, x: torch.Tensor, target: TargetSpec) -> Attribution:
        tgt, out = predicted_target(self.model, x, target)
        flat = x.flatten(1)
        sigma = self.noise * (flat.amax(1) - flat.amin(1))  # (B,)
        sigma = sigma.view(1, -1, 1, 1, 1)
        gen = torch.Generator().manual_seed(self.seed)

        def make(s0: int, s1: int) -> torch.Tensor:
            # chunks come in order, so drawing here keeps "sample s is the s-th draw" while
            # only one chunk of noise is ever in memory
            draws = [torch.randn(x.shape, generator=gen) for _ in range(s1 - s0)]
            return x.unsqueeze(0) + torch.stack(draws).to(x) * sigma

        values = self.sample_gradients(x, tgt, make) / self.n_samples
        return self.result(values, tgt.score(out), tgt)


Baseline = Literal["black", "white", "mean"] | float | torch.Tensor


def make_baseline(model: Model, x: torch.Tensor, baseline: Baseline) -> torch.Tensor:
    """The reference image ``x'`` ``(B, C, H, W)``: ``"black"`` (zeros), ``"white"`` (ones),
    ``"mean"`` (the data mean, which the model normalizes to zero), a value, or a tensor."""
    if isinstance(baseline, torch.Tensor):
        try:
            return baseline.detach().to(x).expand_as(x).clone()
        except RuntimeError:
            raise ConvlensError(
                f"a baseline tensor must broadcast to the images' shape {tuple(x.shape)}; "
                f"got {tuple(baseline.shape)}"
            ) from None
    if isinstance(baseline, int | float) and not isinstance(baseline, bool):
        return torch.full_like(x, float(baseline))
    if baseline == "black":
        return torch.zeros_like(x)
    if baseline == "white":
        return torch.ones_like(x)
    if baseline == "mean":
        return model.mean.to(x).expand_as(x).clone()
    raise ConvlensError(
        f"unknown baseline {baseline!r}; accepted: 'black', 'white', 'mean', a number or a tensor"
    )


def gauss_legendre(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes (ascending) and weights of ``n``-point Gauss–Legendre quadrature on ``[−1, 1]``.

    Newton's method on ``P_n`` from Tricomi's initial guesses ``cos(π (i − ¼) / (n + ½))``,
    with ``P_n`` and ``P_n'`` from the three-term recurrence evaluated for all nodes at once:
    ``O(n)`` memory and ``O(n²)`` time (numpy's ``leggauss`` builds an ``n × n`` companion
    matrix: ``O(n²)`` memory, ``O(n³)`` time). Weights ``w_i = 2 / ((1 − x_i²) P_n'(x_i)²)``.
    """
    i = np.arange(1, n + 1, dtype=np.float64)
    x = np.cos(np.pi * (i - 0.25) / (n + 0.5))

    def legendre(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        p0, p1 = np.ones_like(x), x.copy()
        for k in range(2, n + 1):
            p0, p1 = p1, ((2 * k - 1) * x * p1 - (k - 1) * p0) / k
        return p1, n * (x * p1 - p0) / (x * x - 1)  # P_n, P_n'

    for _ in range(100):
        p, dp = legendre(x)
        step = p / dp
        x = x - step
        if np.abs(step).max() < 1e-15:
            break
    _, dp = legendre(x)
    w = 2.0 / ((1.0 - x * x) * dp * dp)
    return x[::-1].copy(), w[::-1].copy()


def path_points(n_steps: int, method: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Points ``α`` on ``[0, 1]`` and their weights for the path integral.

    ``gausslegendre`` (Captum's default) maps the Gauss–Legendre nodes from ``[−1, 1]``;
    ``riemann_trapezoid`` uses ``n_steps`` even steps with halved end weights.
    """
    if n_steps < 2:
        raise ConvlensError(f"n_steps must be at least 2; got {n_steps}")
    if method == "gausslegendre":
        nodes, weights = gauss_legendre(n_steps)
        return torch.tensor(0.5 * (nodes + 1)), torch.tensor(0.5 * weights)
    if method == "riemann_trapezoid":
        alphas = torch.linspace(0, 1, n_steps, dtype=torch.float64)
        w = torch.full((n_steps,), 1.0 / (n_steps - 1), dtype=torch.float64)
        w[0] = w[-1] = 0.5 / (n_steps - 1)
        return alphas, w
    raise ConvlensError(
        f"unknown integration method {method!r}; accepted: gausslegendre, riemann_trapezoid"
    )


@register
class IntegratedGradients(SampledGradientMethod):
    """Integrated gradients (Sundararajan, Taly & Yan, ICML 2017).

    ``IG_i = (x_i − x'_i) ∫₀¹ ∂S/∂x_i (x' + α (x − x')) dα``, the integral by Gauss–Legendre
    quadrature (or the trapezoid rule) with ``n_steps`` points. Completeness says
    ``Σ_i IG_i = S(x) − S(x')``; the difference is reported per example as
    ``extra["delta"]`` (it shrinks as ``n_steps`` grows).

    >>> from convlens.model.zoo import build
    >>> m = build("tiny-vgg:input_size=32")
    >>> a = IntegratedGradients(m, n_steps=64)(torch.rand(1, 3, 32, 32))
    >>> bool(a.extra["delta"].abs().max() < 0.05)
    True
    """

    name = "integrated-gradients"
    title = "Integrated gradients"
    paper = "Sundararajan et al. 2017, Axiomatic Attribution for Deep Networks"
    signed = True
    bounds: ClassVar[dict[str, Bound]] = {
        **SampledGradientMethod.bounds,
        "n_steps": Bound(2, 1000, integer=True),
        # pixel units: a value, or one per pixel as a tensor; the names are make_baseline's
        "baseline": Bound(-1000, 1000, choices=("black", "white", "mean")),
    }

    def __init__(
        self,
        model: Model,
        baseline: Baseline = "black",
        n_steps: int = 50,
        integration: str = "gausslegendre",
        chunk_size: int = 64,
    ) -> None:
        super().__init__(model, n_steps, chunk_size)
        self.alphas, self.weights = path_points(n_steps, integration)
        self.baseline, self.integration = baseline, integration

    def params(self) -> dict[str, Any]:
        base = self.baseline if not isinstance(self.baseline, torch.Tensor) else "tensor"
        return {"baseline": base, "n_steps": self.n_samples, "integration": self.integration}

    def attribute(self, x: torch.Tensor, target: TargetSpec) -> Attribution:
        tgt, out = predicted_target(self.model, x, target)
        ref = make_baseline(self.model, x, self.baseline)
        diff = x - ref
        alphas = self.alphas.to(x)  # the images' dtype and device

        def make(s0: int, s1: int) -> torch.Tensor:
            return ref.unsqueeze(0) + alphas[s0:s1].view(-1, 1, 1, 1, 1) * diff.unsqueeze(0)

        values = self.sample_gradients(x, tgt, make, self.weights) * diff
        with torch.inference_mode():
            ref_score = tgt.score(self.model(ref))
        score = tgt.score(out)
        delta = values.flatten(1).sum(1) - (score - ref_score)
        return self.result(values, score, tgt, extra={"delta": delta, "baseline_score": ref_score})
