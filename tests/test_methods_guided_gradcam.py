"""Guided Grad-CAM from one forward pass equals guided backpropagation times the upsampled
Grad-CAM map, each computed on its own."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import convlens
from convlens.io.spec import InputSpec
from convlens.methods.base import upsample
from convlens.model import Model, build


def reference(model: Model, x: torch.Tensor, target: list[int]) -> torch.Tensor:
    guided = convlens.explain(model, x, "guided-backprop", target=target).values
    cam = convlens.explain(model, x, "grad-cam", target=target).layer_values
    assert cam is not None
    return guided * upsample(cam, (x.shape[-2], x.shape[-1]))


def forward_calls(model: Model) -> list[int]:
    calls = [0]
    model.net.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def relu_head() -> Model:
    """ReLUs between the explained layer and the output: the guided gradient at the layer is
    not Grad-CAM's plain one."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 6, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 8, 3), nn.ReLU(),
        nn.Flatten(), nn.Linear(8 * 5 * 5, 16), nn.ReLU(), nn.Linear(16, 4),
    )  # fmt: skip
    return Model(net.eval(), InputSpec(3, 16, 16), name="relu-head")


@pytest.mark.parametrize("which", ["resnet", "tiny-vgg", "relu-head"])
def test_equals_guided_backprop_times_grad_cam(which: str) -> None:
    model = {
        "resnet": lambda: build("resnet18:width=8,input_size=48,num_classes=5", seed=0).eval(),
        "tiny-vgg": lambda: build("tiny-vgg:input_size=32", seed=0).eval(),
        "relu-head": relu_head,
    }[which]()
    size = model.spec.height
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    calls = forward_calls(model)
    a = convlens.explain(model, x, "guided-grad-cam", target=[1, 2])
    # one forward pass unless the head has ReLUs of its own
    assert calls[0] == (2 if which == "relu-head" else 1)
    torch.testing.assert_close(a.values, reference(model, x, [1, 2]), atol=1e-6, rtol=1e-5)
    assert a.notes and a.notes[0].startswith("guided rule applied to")
