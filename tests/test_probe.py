"""Capturing activations and gradients: agreement with autograd, and no trace left behind."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from convlens.errors import ConvlensError
from convlens.io.spec import InputSpec
from convlens.model import Model
from convlens.probe import capture, record_all


def hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_activation_and_gradient_match_autograd(tiny_vgg: Model) -> None:
    x = torch.rand(3, 1, 28, 28)
    with capture(tiny_vgg, ["conv_2_1"], gradients=True) as cap:
        out = tiny_vgg(x)
        out[:, 4].sum().backward()
    # independent: run the layers by hand and differentiate with torch.autograd.grad
    net = tiny_vgg.net
    assert isinstance(net, nn.Sequential)
    h = net[:5](x)  # up to max_pool_1
    a = net.get_submodule("conv_2_1")(h)
    score = net[6:](a)[:, 4].sum()
    (g,) = torch.autograd.grad(score, a)
    assert torch.allclose(cap.activations["conv_2_1"], a, atol=1e-6)
    assert torch.allclose(cap.gradients["conv_2_1"], g, atol=1e-6)


def test_inplace_relu_downstream_does_not_corrupt_capture() -> None:
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(36, 2))
    model = Model(net, InputSpec(1, 5, 5))
    x = torch.randn(2, 1, 5, 5)
    with capture(model, ["0"]) as cap:
        model(x)
    expected = net[0](x)
    assert (expected < 0).any()  # the ReLU would have zeroed these in place
    assert torch.allclose(cap["0"], expected)


def test_repeated_module_calls_are_separate_layers() -> None:
    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)
            self.fc = nn.Linear(3 * 4 * 4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.conv(self.conv(x)).flatten(1))

    torch.manual_seed(0)
    shared = Shared()
    model = Model(shared, InputSpec(3, 4, 4))
    assert [lay.name for lay in model.graph if lay.kind == "conv"] == ["conv", "conv#2"]
    assert model.graph["conv#2"].params == 0  # counted once, at the first call
    x = torch.rand(2, 3, 4, 4)
    with capture(model, ["conv", "conv#2"]) as cap:
        model(x)
    once = shared.conv(x)
    assert torch.allclose(cap["conv"], once)
    assert torch.allclose(cap["conv#2"], shared.conv(once))


def test_hooks_removed_and_modes_restored_after_exception(small_resnet: Model) -> None:
    small_resnet.train()
    before = hook_count(small_resnet)
    with pytest.raises(RuntimeError, match="boom"), capture(small_resnet, ["layer2.0.conv1"]):
        assert not small_resnet.training
        raise RuntimeError("boom")
    assert hook_count(small_resnet) == before
    assert small_resnet.training and small_resnet.net.get_submodule("bn1").training


def test_functional_layer_cannot_be_hooked_but_is_recorded(functional_net: Model) -> None:
    relu = next(lay for lay in functional_net.graph if lay.kind == "activation")
    with pytest.raises(ConvlensError, match="functional"), capture(functional_net, [relu.name]):
        pass
    x = torch.rand(2, 3, 16, 16)
    acts, out = record_all(functional_net, x)
    assert set(acts) == set(functional_net.graph.names())
    h = torch.relu(functional_net.net.get_submodule("conv1")(functional_net.normalize(x)))
    assert torch.allclose(acts[relu.name], h, atol=1e-6)
    assert torch.allclose(out, functional_net(x), atol=1e-6)


def test_record_all_keeps_the_output_before_an_inplace_relu() -> None:
    # regression: record_all handed its stored copy on, so ReLU(inplace=True) rewrote the record
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(72, 3))
    model = Model(net, InputSpec(1, 8, 8))
    x = torch.rand(1, 1, 8, 8)
    acts, out = record_all(model, x)
    with torch.no_grad():
        conv = net[0](x)
        assert conv.min() < 0  # so the check below can fail
        torch.testing.assert_close(acts["0"], conv)
        torch.testing.assert_close(acts["1"], conv.relu())
        torch.testing.assert_close(out, net(x))
