"""Transfer learning: reuse a trained network's body for new classes.

Two recipes (Yosinski et al., "How transferable are features in deep neural networks?",
NeurIPS 2014; the Keras course's chapter on pretrained convnets):

* ``features`` (*feature extraction*): the body is frozen (eval mode, no gradients) and only a
  new head learns. The body's outputs do not change, so :mod:`convlens.train.features`
  computes them once and later epochs cost only the head.
* ``finetune``: the top ``unfreeze`` blocks of the body (:mod:`convlens.model.blocks`) learn at
  ``lr × body_lr_scale`` beside the head at ``lr``; the rest stays frozen, its batch-norm
  layers in eval mode so their running statistics stay those of the original training.

The model being trained is the body cut at its last spatial or pooled layer plus a new head
(:mod:`convlens.model.headed`). Without a new head, the older variants remain: a zoo model's
last layer replaced (:func:`with_classes`) and trained alone (``feature-extraction``) or with
the whole body at a lower rate (``finetune`` without ``unfreeze``).

>>> from convlens.model import build
>>> m = build("tiny-vgg:in_channels=1,input_size=28")
>>> head_name(m.net)
'output'
>>> class_mapping(["cat", "dog"], ["dog", "cat"])
[1, 0]
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from convlens.data.base import ImageDataset
from convlens.errors import ConvlensError
from convlens.model.checkpoint import load_state_dict_into
from convlens.model.core import Model
from convlens.model.headed import TRANSFER_ARCH, HeadSpec, TransferNet, attach_head, cut_layer
from convlens.model.zoo import ZOO, build

# "feature-extraction" is the older name of "features" (kept for saved runs and the API).
TRANSFER_MODES = ("full", "features", "feature-extraction", "finetune")
FROZEN_BODY_MODES = ("features", "feature-extraction")


def head_name(net: nn.Module) -> str:
    """The classifier head: ``head`` of a transfer net, else the last module (in definition
    order) owning parameters."""
    if isinstance(net, TransferNet):
        return "head"
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


def unfrozen_blocks(net: TransferNet, unfreeze: int) -> list[tuple[str, list[str]]]:
    """The top ``unfreeze`` blocks of the body; a one-line error when there are fewer."""
    found = net.blocks
    if not 0 <= unfreeze <= len(found):
        names = ", ".join(name for name, _ in found)
        raise ConvlensError(
            f"--unfreeze {unfreeze}: the body has {len(found)} blocks ({names}); "
            f"accepted: 0..{len(found)}"
        )
    return found[len(found) - unfreeze :] if unfreeze else []


def param_groups(
    net: nn.Module,
    mode: str,
    lr: float,
    body_lr_scale: float = 0.1,
    unfreeze: int | None = None,
) -> list[dict[str, Any]]:
    """Optimizer parameter groups for ``mode`` (one of :data:`TRANSFER_MODES`); freezes
    (``requires_grad = False``) what the mode does not train."""
    if mode not in TRANSFER_MODES:
        raise ConvlensError(
            f"unknown training mode {mode!r}; accepted: {', '.join(TRANSFER_MODES)}"
        )
    if mode == "full":
        return [{"params": [p for p in net.parameters() if p.requires_grad], "lr": lr}]
    head = {id(p) for p in head_parameters(net)}
    head_params = [p for p in net.parameters() if id(p) in head]
    if mode in FROZEN_BODY_MODES:
        freeze_body(net)
        return [{"params": head_params, "lr": lr}]
    if body_lr_scale <= 0:
        raise ConvlensError(f"body learning-rate scale must be > 0, got {body_lr_scale}")
    if isinstance(net, TransferNet) and unfreeze is not None:
        freeze_body(net)
        params = dict(net.named_parameters())
        top = [params[n] for _, names in unfrozen_blocks(net, unfreeze) for n in names]
        for p in top:
            p.requires_grad_(True)
        groups = [{"params": top, "lr": lr * body_lr_scale}] if top else []
        return [*groups, {"params": head_params, "lr": lr}]
    body = [p for p in net.parameters() if id(p) not in head]
    return [{"params": body, "lr": lr * body_lr_scale}, {"params": head_params, "lr": lr}]


def frozen_norm_layers_eval(net: nn.Module) -> None:
    """Keep what is frozen in eval mode: batch-norm layers whose parameters do not learn
    (their statistics would drift in train mode), and a frozen transfer body as a whole."""
    if isinstance(net, TransferNet) and not any(p.requires_grad for p in net.body.parameters()):
        net.body.eval()
    for module in net.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not any(
            p.requires_grad for p in module.parameters()
        ):
            module.eval()


# ------------------------------------------------------------------ classes


def _preview(names: Sequence[str], n: int = 4) -> str:
    shown = ", ".join(repr(c) for c in names[:n])
    return shown + (", ..." if len(names) > n else "")


def class_mapping(model_classes: Sequence[str], data_classes: Sequence[str]) -> list[int] | None:
    """For each data-set class, the model output of the same name; ``None`` when the lists
    are equal. A one-line error when the names differ (a new head is needed then)."""
    model_classes, data_classes = list(model_classes), list(data_classes)
    if model_classes == data_classes:
        return None
    if sorted(model_classes) == sorted(data_classes) and len(set(data_classes)) == len(
        data_classes
    ):
        return [model_classes.index(c) for c in data_classes]
    missing = [c for c in data_classes if c not in model_classes]
    what = (
        f"{len(missing)} of them are not the model's ({_preview(missing, 3)})"
        if missing
        else f"the model has {len(model_classes) - len(data_classes)} more"
    )
    raise ConvlensError(
        f"the model predicts {len(model_classes)} classes ({_preview(model_classes)}) but the "
        f"data set has {len(data_classes)} ({_preview(data_classes)}): {what}; fit a new head "
        "with --mode features or --mode finetune"
    )


class LabelMapped(ImageDataset):
    """``data`` with labels renumbered to the model's outputs (``mapping[data label]``)."""

    def __init__(self, data: ImageDataset, mapping: list[int], classes: list[str]) -> None:
        self.data, self.mapping = data, torch.tensor(mapping, dtype=torch.long)
        self.name, self.shape, self.classes = data.name, data.shape, list(classes)

    def __len__(self) -> int:
        return len(self.data)

    def get(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.data.get(indices)
        return x, self.mapping[y]


def check_classes(data: ImageDataset) -> None:
    """A data set to learn from needs two classes, each with images (folder data sets)."""
    if len(data.classes) < 2:
        raise ConvlensError(
            f"data set {data.name!r} has {len(data.classes)} class ({_preview(data.classes)}); "
            "a classifier needs at least 2 (one subfolder per class)"
        )
    items = getattr(data, "items", None)
    if items is not None:
        counts = [0] * len(data.classes)
        for _, label in items:
            counts[label] += 1
        empty = [c for c, n in zip(data.classes, counts, strict=True) if n == 0]
        if empty:
            raise ConvlensError(
                f"data set {data.name!r} has no images in class {_preview(empty, 3)}; every class "
                "folder needs at least one image (remove empty folders)"
            )


# ------------------------------------------------------------------ building the model


def arch_text(arch: dict[str, Any]) -> str:
    """``{"name": "resnet18", "args": {...}}`` → ``"resnet18:num_classes=1000,..."``.

    >>> arch_text({"name": "tiny-vgg", "args": {"width": 4, "padding": 1}})
    'tiny-vgg:width=4,padding=1'
    """
    args = ",".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}"
                    for k, v in arch.get("args", {}).items())  # fmt: skip
    return f"{arch['name']}:{args}" if args else str(arch["name"])


def new_head(
    model: Model,
    classes: Sequence[str],
    head: HeadSpec,
    source: str,
    fmt: str,
    out: str | os.PathLike[str],
) -> Model:
    """``model`` cut at its last spatial layer, with ``head`` for ``classes``.

    A zoo-built body (zoo name, pretrained weights, checkpoint) is recorded by its
    architecture; any other model file is copied into ``out/body/`` so the checkpoint is
    whole on its own.
    """
    from convlens.model.headed import copy_body_files

    if model.arch is not None and model.arch["name"] == TRANSFER_ARCH:
        where: dict[str, Any] = {}
    elif model.arch is not None:
        where = {"body": arch_text(model.arch), "body_format": "zoo"}
    else:
        cut_layer(model)  # refuse a model without a layer to cut at before copying anything
        body = copy_body_files(source, fmt, out)
        # CNN Explainer's named download is a TF.js model: the copy loads as one.
        where = {"body": body, "body_format": "tfjs" if fmt == "cnn-explainer" else fmt}
    return attach_head(model, list(classes), head, where)


def with_classes(model: Model, classes: Sequence[str]) -> Model:
    """``model`` with a new, freshly initialised last layer for ``classes`` (same body weights).

    Only zoo-built models (those with ``model.arch``) can be rebuilt this way; the cut at the
    last spatial layer (:func:`new_head`) works for every model.
    """
    classes = list(classes)
    if classes == model.classes:
        return model
    if model.arch is None or "num_classes" not in _defaults(model.arch["name"]):
        raise ConvlensError(
            f"model {model.name!r} predicts {len(model.classes)} classes "
            f"({_preview(model.classes)}), not the data set's ({_preview(classes)}), and only "
            "zoo architectures can get a new last layer with --freeze/--finetune; cut it and fit "
            "a new head with --mode features or --mode finetune"
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
    return ZOO.get(name).defaults if name in ZOO else {}


def trainable_count(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


__all__ = [
    "TRANSFER_MODES",
    "LabelMapped",
    "arch_text",
    "check_classes",
    "class_mapping",
    "freeze_body",
    "frozen_norm_layers_eval",
    "head_name",
    "new_head",
    "param_groups",
    "trainable_count",
    "unfrozen_blocks",
    "with_classes",
]
