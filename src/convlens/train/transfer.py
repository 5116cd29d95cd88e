"""Transfer learning: reuse a trained network's body for new classes.

*Feature extraction* freezes every parameter except the classifier head's, so only the head
learns (the body is a fixed feature extractor). *Fine-tuning* trains every layer, the body at
a lower learning rate (``lr × body_lr_scale``) so the pretrained features move slowly
(Yosinski et al., "How transferable are features in deep neural networks?", NeurIPS 2014).

>>> from convlens.model import build
>>> m = build("tiny-vgg:in_channels=1,input_size=28")
>>> head_name(m.net)
'output'
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from convlens.errors import ConvlensError
from convlens.model.checkpoint import load_state_dict_into
from convlens.model.core import Model
from convlens.model.zoo import ZOO, build

TRANSFER_MODES = ("full", "feature-extraction", "finetune")


def head_name(net: nn.Module) -> str:
    """The classifier head: the last module (in definition order) owning parameters."""
    last = ""
    for name, module in net.named_modules():
        if name and any(True for _ in module.parameters(recurse=False)):
            last = name
    if not last:
        raise ConvlensError("the model has no parameters to train")
    return last


def head_parameters(net: nn.Module) -> list[nn.Parameter]:
    return list(net.get_submodule(head_name(net)).parameters())


def freeze_body(net: nn.Module) -> list[str]:
    """Turn off gradients everywhere but the head; returns the frozen parameter names."""
    head = head_name(net)
    frozen = []
    for name, p in net.named_parameters():
        if not (name == head or name.startswith(head + ".")):
            p.requires_grad_(False)
            frozen.append(name)
    return frozen


def param_groups(
    net: nn.Module, mode: str, lr: float, body_lr_scale: float = 0.1
) -> list[dict[str, Any]]:
    """Optimizer parameter groups for ``mode`` (one of :data:`TRANSFER_MODES`)."""
    if mode not in TRANSFER_MODES:
        raise ConvlensError(
            f"unknown training mode {mode!r}; accepted: {', '.join(TRANSFER_MODES)}"
        )
    if mode == "full":
        return [{"params": [p for p in net.parameters() if p.requires_grad], "lr": lr}]
    head = {id(p) for p in head_parameters(net)}
    body = [p for p in net.parameters() if id(p) not in head]
    head_params = [p for p in net.parameters() if id(p) in head]
    if mode == "feature-extraction":
        freeze_body(net)
        return [{"params": head_params, "lr": lr}]
    if body_lr_scale <= 0:
        raise ConvlensError(f"body learning-rate scale must be > 0, got {body_lr_scale}")
    return [{"params": body, "lr": lr * body_lr_scale}, {"params": head_params, "lr": lr}]


def frozen_norm_layers_eval(net: nn.Module) -> None:
    """Keep batch-norm statistics of a frozen body fixed (they would drift in train mode)."""
    for module in net.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not any(
            p.requires_grad for p in module.parameters()
        ):
            module.eval()


def with_classes(model: Model, classes: Sequence[str]) -> Model:
    """``model`` with a new, freshly initialised head for ``classes`` (same body weights).

    Only zoo-built models (those with ``model.arch``) can be rebuilt this way.
    """
    classes = list(classes)
    if classes == model.classes:
        return model
    if model.arch is None or "num_classes" not in _defaults(model.arch["name"]):
        raise ConvlensError(
            f"model {model.name!r} has {len(model.classes)} outputs but the data set has "
            f"{len(classes)} classes, and only zoo architectures can get a new head"
        )
    args = dict(model.arch.get("args", {})) | {"num_classes": len(classes)}
    fresh = build(model.arch["name"], classes, **args)
    own = fresh.net.state_dict()
    head = head_name(fresh.net)
    body = {
        k: v
        for k, v in model.net.state_dict().items()
        if not k.startswith(head + ".") and k in own and v.shape == own[k].shape
    }
    load_state_dict_into(fresh, own | body, "the pretrained body")
    return Model(
        fresh.net, model.spec, classes, name=model.name, arch=fresh.arch, outputs=model.outputs
    )


def _defaults(name: str) -> dict[str, Any]:
    return ZOO.get(name).defaults


def trainable_count(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


__all__ = [
    "TRANSFER_MODES",
    "freeze_body",
    "frozen_norm_layers_eval",
    "head_name",
    "param_groups",
    "trainable_count",
    "with_classes",
]
