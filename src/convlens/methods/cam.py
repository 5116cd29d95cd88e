"""Class activation maps: a weighted sum of a spatial layer's feature maps ``A_k``.

All of them read the activations ``A`` ``(B, K, h, w)`` of one layer (default: the last
spatial layer of ``model.graph``), combine them into a map at the layer's resolution
(``layer_values``) and upsample it to the image (``values``, bilinear by default).
With ``g = ∂S/∂A``:

- CAM (Zhou et al., CVPR 2016), for a global-average-pooled linear head with weights ``W``:
  ``M = Σ_k W_ck A_k``;
- Grad-CAM (Selvaraju et al., ICCV 2017): ``α_k = 1/(hw) Σ_ij g_kij``,
  ``M = ReLU(Σ_k α_k A_k)``;
- Grad-CAM++ (Chattopadhay et al., WACV 2018), with the exponential-score closed form:
  ``a_kij = g² / (2 g² + Σ_ab A_kab · g³)``, ``α_k = Σ_ij a_kij ReLU(g_kij)``,
  ``M = ReLU(Σ_k α_k A_k)``;
- LayerCAM (Jiang et al., TIP 2021): ``M = ReLU(Σ_k ReLU(g_k) ⊙ A_k)``;
- Score-CAM (Wang et al., CVPR-W 2020): ``α_k = softmax(f(x ⊙ H_k))_c`` with ``H_k`` the
  min-max normalized, upsampled ``A_k``; no gradient at all;
- guided Grad-CAM: guided backpropagation times the upsampled Grad-CAM map.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from torch import nn

from convlens.errors import ConvlensError
from convlens.model.core import Model
from convlens.model.graph import Layer

from .base import (
    Attribution,
    Bound,
    Family,
    Method,
    Resolution,
    chunks,
    forward_with_layer,
    register,
    spatial_layer,
    upsample,
)
from .rules import RULE_NODE_PREFIX, backward_rule, describe_changes
from .targets import Target, TargetSpec, resolve_target

Interp = Literal["bilinear", "nearest"]


class CamMethod(Method):
    """Reads one spatial layer; subclasses turn ``(A, ∂S/∂A)`` into a layer-resolution map."""

    family: ClassVar[Family] = "cam"
    needs_layer = True
    resolution: ClassVar[Resolution] = "layer"

    def __init__(self, model: Model, layer: str | None = None, interpolate: Interp = "bilinear"):
        super().__init__(model)
        self.layer: Layer = spatial_layer(model, layer)
        if interpolate not in ("bilinear", "nearest"):
            raise ConvlensError(f"interpolate must be bilinear or nearest; got {interpolate!r}")
        self.interpolate: Interp = interpolate

    def params(self) -> dict[str, Any]:
        return {"layer": self.layer.name, "interpolate": self.interpolate}

    def layer_and_gradient(
        self, x: torch.Tensor, target: TargetSpec
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Target]:
        """``(A, ∂S/∂A, S, target)`` from one forward and one backward pass."""
        with torch.enable_grad():
            xr = x.detach().requires_grad_(True)  # keeps A attached even with frozen weights
            out, act = forward_with_layer(self.model, xr, self.layer)
            tgt = resolve_target(self.model, target, out)
            score = tgt.score(out)
            (grad,) = torch.autograd.grad(score.sum(), act)
        return act.detach(), grad, score.detach(), tgt

    def attribute(self, x: torch.Tensor, target: TargetSpec) -> Attribution:
        act, grad, score, tgt = self.layer_and_gradient(x, target)
        cam = self.combine(act, grad)  # (B, 1, h, w)
        return self.finish(x, cam, score, tgt)

    def combine(self, act: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def finish(
        self, x: torch.Tensor, cam: torch.Tensor, score: torch.Tensor, tgt: Target, **kw: Any
    ) -> Attribution:
        values = upsample(cam, (x.shape[-2], x.shape[-1]), self.interpolate)
        return self.result(values, score, tgt, layer=self.layer.name, layer_values=cam, **kw)


def weighted_sum(weights: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
    """``Σ_k w_k A_k``: ``(B, K)`` weights and ``(B, K, h, w)`` maps to ``(B, 1, h, w)``."""
    return torch.einsum("bk,bkhw->bhw", weights, act).unsqueeze(1)


@register
class GradCAM(CamMethod):
    """Grad-CAM (Selvaraju et al., ICCV 2017): ``ReLU(Σ_k mean_ij(∂S/∂A_kij) A_k)``.

    >>> from convlens.model.zoo import build
    >>> m = build("tiny-vgg:input_size=32")
    >>> a = GradCAM(m)(torch.rand(2, 3, 32, 32))
    >>> a.layer, tuple(a.layer_values.shape), tuple(a.values.shape)
    ('max_pool_2', (2, 1, 5, 5), (2, 1, 32, 32))
    """

    name = "grad-cam"
    title = "Grad-CAM"
    paper = "Selvaraju et al. 2017, Grad-CAM"

    def combine(self, act: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        return weighted_sum(grad.mean(dim=(2, 3)), act).relu()


@register
class GradCAMPlusPlus(CamMethod):
    """Grad-CAM++ (Chattopadhay et al., WACV 2018), the closed form for ``exp(S)``:
    ``α_k = Σ_ij ReLU(g_kij) · g²/(2g² + Σ_ab A_kab g³)`` (0 where ``g = 0``)."""

    name = "grad-cam++"
    title = "Grad-CAM++"
    paper = "Chattopadhay et al. 2018, Grad-CAM++"

    def combine(self, act: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        g2 = grad.square()
        denom = 2 * g2 + act.sum(dim=(2, 3), keepdim=True) * g2 * grad
        a = torch.where(grad != 0, g2 / (denom + 1e-6), torch.zeros_like(grad))
        weights = (a * grad.relu()).sum(dim=(2, 3))
        return weighted_sum(weights, act).relu()


@register
class LayerCAM(CamMethod):
    """LayerCAM (Jiang et al., IEEE TIP 2021): ``ReLU(Σ_k ReLU(∂S/∂A_k) ⊙ A_k)``, a weight
    per location, so it also works at shallow layers."""

    name = "layer-cam"
    title = "LayerCAM"
    paper = "Jiang et al. 2021, LayerCAM"

    def combine(self, act: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        return (grad.relu() * act).sum(dim=1, keepdim=True).relu()


def gap_classifier(model: Model, layer: Layer) -> nn.Linear:
    """The linear layer that reads ``layer`` through global average pooling (CAM's head)."""
    graph = model.graph
    current = layer
    pooled = False
    while True:
        nxt = graph.consumers(current.name)
        if len(nxt) != 1:
            break
        current = nxt[0]
        mod = model.net.get_submodule(current.module) if current.module else None
        if current.kind == "adaptive_pool" and current.output_shape[-2:] in ((1, 1), ()):
            pooled = (
                not isinstance(mod, nn.AdaptiveMaxPool2d) and current.op != "adaptive_max_pool2d"
            )
        elif current.kind in ("flatten", "dropout"):
            continue
        elif current.kind == "linear" and isinstance(mod, nn.Linear) and pooled:
            return mod
        else:
            break
    raise ConvlensError(
        f"CAM needs layer {layer.name!r} to feed a global average pooling and then one linear "
        "classifier (as in ResNet); this model's head is different. Use grad-cam, which works "
        "for any head (and equals CAM up to a constant factor on such heads)."
    )


@register
class CAM(CamMethod):
    """Class activation mapping (Zhou et al., CVPR 2016): ``M_c = Σ_k W_ck A_k``, read from
    the weights ``W`` of the linear classifier after global average pooling. Signed; no
    gradient is needed. Targets must be classes."""

    name = "cam"
    title = "CAM"
    paper = "Zhou et al. 2016, Learning Deep Features for Discriminative Localization"
    uses_gradients = False
    signed = True

    def __init__(self, model: Model, layer: str | None = None, interpolate: Interp = "bilinear"):
        super().__init__(model, layer, interpolate)
        self.fc = gap_classifier(model, self.layer)

    def attribute(self, x: torch.Tensor, target: TargetSpec) -> Attribution:
        with torch.inference_mode():
            out, act = forward_with_layer(self.model, x, self.layer)
        tgt = resolve_target(self.model, target, out)
        if tgt.indices is None:
            raise ConvlensError("CAM explains a class; give a class index or name as target")
        weights = self.fc.weight.detach()[tgt.indices]  # (B, K)
        cam = weighted_sum(weights, act.detach())
        return self.finish(x, cam.clone(), tgt.score(out).clone(), tgt)


@register
class GuidedGradCAM(CamMethod):
    """Guided Grad-CAM (Selvaraju et al., ICCV 2017): guided backpropagation ``⊙`` the
    Grad-CAM map upsampled to the image. Per channel, signed."""

    name = "guided-grad-cam"
    title = "Guided Grad-CAM"
    paper = "Selvaraju et al. 2017, Grad-CAM"
    resolution = "input"
    signed = True

    def attribute(self, x: torch.Tensor, target: TargetSpec) -> Attribution:
        # One forward pass under the guided rule. Grad-CAM needs the plain ∂S/∂A, which the
        # same backward pass gives whenever no rule-changed activation lies between the layer
        # and the output (a GAP + linear head, as in ResNet): the rule then only acts below
        # A, and one backward yields both. Otherwise (ReLUs in the classifier, as in VGG)
        # Grad-CAM gets its own plain pass.
        with torch.enable_grad():
            xr = x.detach().requires_grad_(True)
            with backward_rule(self.model, "guided") as changed:
                out, act = forward_with_layer(self.model, xr, self.layer)
            notes = describe_changes("guided", changed, self.model)
            tgt = resolve_target(self.model, target, out)
            score = tgt.score(out)
            if rule_between(score, act):
                (guided,) = torch.autograd.grad(score.sum(), xr)
                again = tgt.classes if tgt.classes is not None else target
                act, grad, score, tgt = self.layer_and_gradient(x, again)
            else:
                guided, grad = torch.autograd.grad(score.sum(), [xr, act])
        cam = weighted_sum(grad.mean(dim=(2, 3)), act.detach()).relu()
        up = upsample(cam, (x.shape[-2], x.shape[-1]), self.interpolate)
        return self.result(
            guided * up, score.detach(), tgt, layer=self.layer.name, layer_values=cam,
            notes=notes,
        )  # fmt: skip


def rule_between(out: torch.Tensor, layer: torch.Tensor) -> bool:
    """Whether a backward-rule activation (:mod:`convlens.methods.rules`) lies on a path of
    the autograd graph from ``out`` back to ``layer`` (walked iteratively, each node once)."""
    stop = layer.grad_fn
    reaches: dict[Any, bool] = {}  # node -> a path from it reaches ``layer``
    found = False
    stack: list[tuple[Any, bool]] = [(out.grad_fn, False)]
    while stack:
        fn, children_done = stack.pop()
        if fn is None or (not children_done and fn in reaches):
            continue
        if fn is stop:
            reaches[fn] = True
            continue
        children = [c for c, _ in fn.next_functions if c is not None]
        if not children_done:
            reaches[fn] = False
            stack.append((fn, True))
            stack.extend((c, False) for c in children if c not in reaches)
            continue
        reaches[fn] = any(reaches.get(c, False) for c in children)
        found = found or (reaches[fn] and type(fn).__name__.startswith(RULE_NODE_PREFIX))
    return found


Weighting = Literal["probability", "channel-softmax"]


@register
class ScoreCAM(CamMethod):
    """Score-CAM (Wang et al., CVPR workshops 2020): each channel's weight is the target's
    score on the image masked by that channel.

    ``H_k = norm(up(A_k))`` (min-max to ``[0, 1]``), ``α_k = p_c(x ⊙ H_k)`` (the target's
    probability; ``weighting="channel-softmax"`` instead takes ``softmax_k`` of the logits,
    as pytorch-grad-cam does), ``M = ReLU(Σ_k α_k A_k)``. ``K`` forward passes per image,
    ``chunk_size`` masked images per pass, under ``torch.inference_mode()``.
    """

    name = "score-cam"
    title = "Score-CAM"
    paper = "Wang et al. 2020, Score-CAM"
    family = "perturbation"
    uses_gradients = False
    bounds: ClassVar[dict[str, Bound]] = {"chunk_size": Bound(1, 1024, integer=True)}

    def __init__(
        self,
        model: Model,
        layer: str | None = None,
        interpolate: Interp = "bilinear",
        weighting: Weighting = "probability",
        chunk_size: int = 64,
    ) -> None:
        super().__init__(model, layer, interpolate)
        if weighting not in ("probability", "channel-softmax"):
            raise ConvlensError(
                f"weighting must be probability or channel-softmax; got {weighting!r}"
            )
        if chunk_size < 1:
            raise ConvlensError(f"chunk_size must be at least 1; got {chunk_size}")
        self.weighting: Weighting = weighting
        self.chunk_size = chunk_size

    def params(self) -> dict[str, Any]:
        return super().params() | {"weighting": self.weighting, "chunk_size": self.chunk_size}

    @torch.inference_mode()
    def attribute(self, x: torch.Tensor, target: TargetSpec) -> Attribution:
        out, act = forward_with_layer(self.model, x, self.layer)
        act = act.clone()
        tgt = resolve_target(self.model, target, out)
        B, K = act.shape[:2]
        masks = upsample(act, (x.shape[-2], x.shape[-1]), "bilinear")  # (B, K, H, W)
        lo = masks.amin(dim=(2, 3), keepdim=True)
        hi = masks.amax(dim=(2, 3), keepdim=True)
        masks = torch.where(hi > lo, (masks - lo) / (hi - lo), torch.zeros_like(masks))
        masks = masks.flatten(0, 1).unsqueeze(1)  # (B*K, 1, H, W), row r is example r // K
        example = torch.arange(B, device=x.device).repeat_interleave(K)
        scores = torch.empty(B * K, device=x.device)
        for r0, r1 in chunks(B * K, self.chunk_size):
            rows = example[r0:r1]
            o = self.model(x[rows] * masks[r0:r1])
            scores[r0:r1] = (
                tgt.score(o, rows) if self.weighting == "channel-softmax"
                else tgt.probability(o, rows)
            )  # fmt: skip
        scores = scores.view(B, K)
        weights = scores.softmax(dim=1) if self.weighting == "channel-softmax" else scores
        cam = weighted_sum(weights, act).relu()
        return self.finish(x, cam, tgt.score(out).clone(), tgt, extra={"weights": weights})
