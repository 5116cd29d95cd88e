"""The :class:`Model`: the object that every other part of convlens takes."""

from __future__ import annotations

import html
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from convlens.device import resolve_device
from convlens.errors import ConvlensError, unknown_name
from convlens.io.image import load_image
from convlens.io.spec import InputSpec
from convlens.model.graph import LayerGraph, build_graph

OutputKind = Literal["logits", "probabilities"]


@dataclass(frozen=True)
class Sample:
    """An example image shipped with a model, with its true class index (if known)."""

    path: Path
    label: int | None = None


class Model(nn.Module):
    """A network with everything needed to show it: input spec, class names, layer graph.

    ``forward`` takes images as floats ``(B, C, H, W)`` in ``[0, 1]`` and applies the spec's
    mean and std itself, so every method works in plain pixel units. Layer names are those of
    ``model.graph`` (the wrapped network's own module names).

    ``outputs`` says whether the network ends in logits (the usual case) or already in
    probabilities (a Keras model with a softmax fused into its last layer).

    >>> from convlens.model.zoo import build
    >>> m = build("tiny-vgg")
    >>> m.graph["conv_1_1"].output_shape
    (10, 62, 62)
    """

    def __init__(
        self,
        net: nn.Module,
        spec: InputSpec,
        classes: Sequence[str] | None = None,
        *,
        name: str = "model",
        arch: dict[str, Any] | None = None,
        outputs: OutputKind = "logits",
        samples: Sequence[Sample] = (),
    ) -> None:
        super().__init__()
        self.net = net
        self.spec = spec
        self.name = name
        self.arch = arch  # {"name": zoo name, "args": {...}} when built from the zoo
        self.outputs: OutputKind = outputs
        self.samples = list(samples)
        mean = torch.tensor(spec.mean, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(spec.std, dtype=torch.float32).view(1, -1, 1, 1)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)
        n_out = self.num_outputs
        if classes is None:
            classes = [f"class {i}" for i in range(n_out)]
        if len(classes) != n_out:
            raise ConvlensError(
                f"{len(classes)} class names given but the model has {n_out} outputs"
            )
        self.classes = list(classes)
        # The wrapper takes the network's mode: a loader hands over an eval-mode net, and
        # ``probabilities`` restores ``self.training``, which would otherwise put it (and its
        # batch norms) back into training mode after the first call.
        self.train(net.training)

    # -------------------------------------------------------------- running

    def check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.spec.channels:
            raise ConvlensError(
                f"model {self.name!r} takes images of shape (B, {self.spec.channels}, H, W); "
                f"got {tuple(x.shape)}"
            )

    mean: torch.Tensor
    std: torch.Tensor

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    @property
    def device(self) -> torch.device:
        """Where the network's weights are (see :meth:`to`)."""
        return self.mean.device

    def to(self, *args: Any, **kwargs: Any) -> Model:
        """``nn.Module.to``, also taking convlens's device names: ``model.to("auto")`` picks
        CUDA, then MPS, then the CPU; a device this machine lacks is refused in one line."""
        if args and isinstance(args[0], str | torch.device):
            args = (resolve_device(args[0]), *args[1:])
        if isinstance(kwargs.get("device"), str | torch.device):
            kwargs["device"] = resolve_device(kwargs["device"])
        return super().to(*args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        # Inputs arrive from decoders and data sets on the CPU; the copy is differentiable, so
        # gradients with respect to the caller's CPU tensor still flow back to it.
        if x.device != self.mean.device:
            x = x.to(self.mean.device, non_blocking=True)
        return self.net(self.normalize(x))

    @torch.inference_mode()
    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities ``(B, classes)`` for images in ``[0, 1]``."""
        was_training = self.training
        self.eval()
        try:
            out = self(x)
        finally:
            self.train(was_training)
        return out if self.outputs == "probabilities" else out.softmax(dim=1)

    def load_image(self, source: str | os.PathLike[str] | bytes) -> torch.Tensor:
        """Decode an image and fit it to this model's input: ``(1, C, H, W)``."""
        return load_image(source, self.spec)

    def __getstate__(self) -> dict[str, Any]:
        """Pickled (e.g. shipped to a Ray worker) without the cached layer graph, which may
        hold an fx trace that does not pickle; it is rebuilt on first use."""
        state = dict(self.__dict__)
        state.pop("graph", None)
        return state

    # -------------------------------------------------------------- structure

    @cached_property
    def graph(self) -> LayerGraph:
        return build_graph(self.net, self.spec.shape)

    @property
    def num_outputs(self) -> int:
        shape = self.graph.output.output_shape
        if len(shape) != 1:
            raise ConvlensError(
                f"the model's output has shape {shape} per example; convlens expects a vector of "
                "class scores (add a flatten or pooling before the classifier)"
            )
        return shape[0]

    def layer(self, name: str) -> nn.Module:
        """The module computing layer ``name`` (a name from ``model.graph``)."""
        lay = self.graph[name]
        if lay.module is None:
            raise ConvlensError(f"layer {name!r} is a functional call ({lay.op}), not a module")
        return self.net.get_submodule(lay.module)

    def class_index(self, target: int | str) -> int:
        """A class given by index or by name."""
        # isascii: "²".isdigit() is true, yet int("²") fails; such a string is a (bad) name.
        if isinstance(target, str) and not (target.isascii() and target.lstrip("-").isdigit()):
            if target not in self.classes:
                raise unknown_name("class", target, self.classes)
            return self.classes.index(target)
        idx = int(target)
        if not 0 <= idx < len(self.classes):
            raise ConvlensError(f"class index {idx} is out of range 0..{len(self.classes) - 1}")
        return idx

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "arch": self.arch,
            "input_spec": self.spec.to_dict(),
            "classes": self.classes,
            "outputs": self.outputs,
        }

    def _repr_html_(self) -> str:
        """The layer table, for notebooks (Jupyter calls this to display a Model)."""
        graph = self.graph
        head = ("layer", "type", "output", "params", "MACs", "receptive field")
        rows = []
        for lay in graph:
            rf = (
                ""
                if lay.rf is None
                else "global"
                if lay.rf.is_global
                else "×".join(map(str, lay.rf.size))
            )
            cells = (lay.name + (" ⚠ does not tile" if lay.tiling else ""), lay.op,
                     "×".join(map(str, lay.output_shape)), f"{lay.params:,}" if lay.params else "",
                     f"{lay.macs:,}" if lay.macs else "", rf)  # fmt: skip
            rows.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
        title = html.escape(
            f"{self.name}: input {'×'.join(map(str, self.spec.shape))}, {len(self.classes)} "
            f"classes, {graph.total_params:,} parameters, {graph.total_macs:,} MACs per image"
        )
        return (
            f"<table><caption>{title}</caption><thead><tr>"
            + "".join(f"<th>{h}</th>" for h in head)
            + "</tr></thead><tbody>"
            + "".join(rows)
            + "</tbody></table>"
        )

    def extra_repr(self) -> str:
        return f"name={self.name!r}, input={self.spec.shape}, classes={len(self.classes)}"
