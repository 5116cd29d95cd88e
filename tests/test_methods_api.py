"""convlens.explain: targets, batches, bad input, and leaving the caller's things alone."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

import convlens
from convlens.errors import ConvlensError, NotFoundError
from convlens.methods import METHODS
from convlens.methods.targets import TargetSpec
from convlens.model import Model

FAST = {"smoothgrad": {"n_samples": 2}, "integrated-gradients": {"n_steps": 4},
        "occlusion": {"window": 8, "stride": 8}}  # fmt: skip


def params(name: str) -> dict[str, Any]:
    return dict(FAST.get(name, {}))


def test_registry_flags() -> None:
    for name, cls in METHODS.items():
        assert cls.name == name and cls.title and cls.paper
        assert cls.family in ("gradient", "cam", "perturbation")
        assert cls.resolution in ("input", "layer")
    assert METHODS.get("grad-cam").needs_layer and not METHODS.get("saliency").needs_layer
    assert not METHODS.get("occlusion").uses_gradients


def test_unknown_method_lists_the_registry(tiny_vgg: Model) -> None:
    with pytest.raises(NotFoundError) as err:
        convlens.explain(tiny_vgg, torch.rand(1, 1, 28, 28), "gradcam")
    assert "'grad-cam'" in str(err.value) and "occlusion" in str(err.value)


def test_unknown_parameter_lists_accepted(tiny_vgg: Model) -> None:
    with pytest.raises(ConvlensError, match="accepted: window, stride"):
        convlens.explain(tiny_vgg, torch.rand(1, 1, 28, 28), "occlusion", size=3)


@pytest.mark.parametrize("target", [10, -1, "zebra", [1, 2, 3]])
def test_bad_targets(tiny_vgg: Model, target: TargetSpec) -> None:
    with pytest.raises(ConvlensError):
        convlens.explain(tiny_vgg, torch.rand(2, 1, 28, 28), "saliency", target=target)


def test_bad_images(tiny_vgg: Model) -> None:
    with pytest.raises(ConvlensError, match=r"\(B, 1, H, W\)"):
        convlens.explain(tiny_vgg, torch.rand(2, 3, 28, 28), "saliency")
    with pytest.raises(ConvlensError, match="floats"):
        convlens.explain(tiny_vgg, torch.zeros(1, 1, 28, 28, dtype=torch.uint8), "saliency")


@pytest.mark.parametrize("name", METHODS.names())
def test_batch_equals_examples_one_by_one(functional_net: Model, name: str) -> None:
    """Nothing silently explains only the first image, and examples do not mix."""
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    kw = params(name) | ({"noise": 0.0} if name == "smoothgrad" else {})  # noise is per batch
    batch = convlens.explain(functional_net, x, name, target=[4, 3], **kw)
    assert batch.values.shape[0] == 2 and batch.targets == [4, 3]
    for i, t in enumerate([4, 3]):
        one = convlens.explain(functional_net, x[i], name, target=t, **kw)
        torch.testing.assert_close(one.values[0], batch.values[i], atol=1e-5, rtol=1e-4)
        assert torch.isfinite(one.values).all()


def test_callable_target_for_a_regression_head() -> None:
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    model = convlens.load_model(net, input_spec={"channels": 1, "height": 8, "width": 8})
    x = torch.rand(2, 1, 8, 8)
    a = convlens.explain(model, x, "saliency", target=lambda out: out[:, 0] - out[:, 1],
                         reduce="signed")  # fmt: skip
    assert a.targets is None
    xr = x.clone().requires_grad_()
    out = model(xr)
    (out[:, 0] - out[:, 1]).sum().backward()
    torch.testing.assert_close(a.values, xr.grad)
    with pytest.raises(ConvlensError, match="one score per example"):
        convlens.explain(model, x, "saliency", target=lambda out: out)


def test_probability_models_explain_log_probabilities(tiny_vgg: Model) -> None:
    probs = Model(nn.Sequential(tiny_vgg.net, nn.Softmax(dim=1)), tiny_vgg.spec,
                  outputs="probabilities")  # fmt: skip
    x = torch.rand(2, 1, 28, 28)
    a = convlens.explain(probs, x, "saliency", reduce="signed", target=[3, 4])
    xr = x.clone().requires_grad_()
    tiny_vgg(xr).log_softmax(1)[[0, 1], [3, 4]].sum().backward()
    torch.testing.assert_close(a.values, xr.grad, atol=1e-5, rtol=1e-4)
    occ = convlens.explain(probs, x, "occlusion", target=[3, 4], window=7, stride=7)
    ref = convlens.explain(tiny_vgg, x, "occlusion", target=[3, 4], window=7, stride=7)
    torch.testing.assert_close(occ.values, ref.values, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["guided-backprop", "grad-cam", "integrated-gradients"])
def test_caller_state_is_left_alone(small_resnet: Model, name: str) -> None:
    model = small_resnet.train()
    for p in model.net.get_submodule("layer1").parameters():
        p.requires_grad_(False)  # frozen weights
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(2, 3, 64, 64)
    x_before = x.clone()
    convlens.explain(model, x, name, target=1, **params(name))
    assert model.training and all(m.training for m in model.modules())
    assert not x.requires_grad and torch.equal(x, x_before)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert all(p.grad is None for p in model.parameters())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_hooks_are_removed_after_an_exception(small_resnet: Model) -> None:
    def bad(out: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("boom")

    for name in ("guided-backprop", "grad-cam"):
        with pytest.raises(RuntimeError, match="boom"):
            convlens.explain(small_resnet, torch.rand(1, 3, 64, 64), name, target=bad)
        assert all(not m._forward_hooks for m in small_resnet.modules())
        assert torch._C._is_torch_function_mode_enabled() is False


def test_class_names_as_targets(tiny_vgg: Model) -> None:
    a = convlens.explain(tiny_vgg, torch.rand(2, 1, 28, 28), "grad-cam", target="class 3")
    assert a.targets == [3, 3]
