"""PyTorch formats: torch.export programs, TorchScript and state dicts round-trip exactly."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from convlens.errors import ConvlensError
from convlens.io.spec import InputSpec
from convlens.model import Model, build, load_model
from convlens.model.load import detect_format
from convlens.probe import capture

ARCHS = ["tiny-vgg:input_size=32", "resnet18:width=8,num_classes=5"]


class TinyRes(torch.nn.Module):
    """One residual block: batch norm, an in-place ReLU, an addition, global pooling."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 6, 3, stride=2, padding=1, bias=False)
        self.bn = torch.nn.BatchNorm2d(6)
        self.relu = torch.nn.ReLU(inplace=True)
        self.conv = torch.nn.Conv2d(6, 6, 3, padding=1)
        self.pool = torch.nn.AdaptiveAvgPool2d(1)
        self.fc = torch.nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu(self.bn(self.stem(x)))
        h = torch.relu(self.conv(h) + h)
        return self.fc(torch.flatten(self.pool(h), 1))


def tiny_res() -> Model:
    torch.manual_seed(0)
    net = TinyRes().eval()
    with torch.no_grad():  # non-trivial running statistics
        net.bn.running_mean.uniform_(-0.5, 0.5)
        net.bn.running_var.uniform_(0.5, 2.0)
    return Model(net, InputSpec(3, 16, 16, (0.4,), (0.3,)), name="tiny-res")


class Opaque:
    """Something only a full unpickle can rebuild."""


def _spec(m: Model) -> dict[str, object]:
    s = m.spec
    return {
        "channels": s.channels,
        "height": s.height,
        "width": s.width,
        "mean": s.mean,
        "std": s.std,
    }


@pytest.fixture(scope="module", params=["tiny-vgg", "tiny-res"])
def original(request: pytest.FixtureRequest) -> Model:
    """A zoo chain and a small DAG (exporting ResNet-18 works too but takes seconds)."""
    return build(ARCHS[0], seed=0).eval() if request.param == "tiny-vgg" else tiny_res()


def _check_same(a: Model, b: Model) -> None:
    x = torch.rand(3, *a.spec.shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(b(x), a(x), atol=1e-5, rtol=0)
    assert b.graph.output.output_shape == a.graph.output.output_shape


def test_export_round_trip(original: Model, tmp_path: Path) -> None:
    path = tmp_path / "net.pt2"
    ep = torch.export.export(original.net, (torch.zeros(1, *original.spec.shape),))
    torch.export.save(ep, path)
    assert detect_format(str(path)) == "torch-export"
    loaded = load_model(path, classes=original.classes)
    # The spec comes from the program: the example input's shape (mean/std are not in it).
    assert loaded.spec.shape == original.spec.shape
    x = torch.rand(3, *original.spec.shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(loaded.net(x), original.net(x), atol=1e-5, rtol=0)
    names = {lay.name for lay in loaded.graph}
    # The original module paths survive as layer names.
    assert {"conv_1_1", "max_pool_2"} <= names or {"stem", "bn", "conv", "fc"} <= names
    # Modules are ordinary torch modules again: probes see the same activations by name.
    layer = "conv_2_1" if "conv_2_1" in names else "bn"
    with torch.no_grad(), capture(original, [layer]) as a, capture(loaded, [layer]) as b:
        original.net(x), loaded.net(x)
    torch.testing.assert_close(b[layer], a[layer], atol=1e-5, rtol=0)


def test_torchscript_round_trip(original: Model, tmp_path: Path) -> None:
    path = tmp_path / "net.pt"
    torch.jit.trace(original.net, torch.zeros(1, *original.spec.shape)).save(str(path))
    assert detect_format(str(path)) == "torchscript"
    with pytest.raises(ConvlensError, match="--trust-pickle"):
        load_model(path, input_spec=_spec(original))
    with pytest.raises(ConvlensError, match="--input-size"):
        load_model(path, trust_pickle=True)
    loaded = load_model(path, input_spec=_spec(original), trust_pickle=True)
    _check_same(original, loaded)


def test_state_dict_round_trips(tmp_path: Path) -> None:
    original = build(ARCHS[0], seed=0).eval()
    state = {k: v.contiguous() for k, v in original.net.state_dict().items()}
    arch = original.arch
    assert arch is not None
    spec = ",".join(f"{k}={v}" for k, v in arch["args"].items())
    save_file(state, tmp_path / "w.safetensors")
    torch.save(state, tmp_path / "w.pt")
    for name in ("w.safetensors", "w.pt"):
        loaded = load_model(tmp_path / name, arch=f"{arch['name']}:{spec}")
        _check_same(original, loaded)


def test_pickled_module_needs_trust(tmp_path: Path) -> None:
    model = build(ARCHS[0], seed=0)
    torch.save(model.net, tmp_path / "whole.pt")
    with pytest.raises(ConvlensError, match="--trust-pickle"):
        load_model(tmp_path / "whole.pt", arch=ARCHS[0])
    loaded = load_model(tmp_path / "whole.pt", arch=ARCHS[0], trust_pickle=True)
    _check_same(model.eval(), loaded)


def test_pt2_sample_inputs_are_never_unpickled(tmp_path: Path) -> None:
    """torch.export.load falls back to a full unpickle of the sample inputs; convlens skips them."""
    model = build(ARCHS[0], seed=0).eval()
    clean = tmp_path / "clean.pt2"
    torch.export.save(torch.export.export(model.net, (torch.zeros(1, 3, 32, 32),)), clean)
    evil = tmp_path / "evil.pt2"
    buf = io.BytesIO()
    torch.save(Opaque(), buf)
    with zipfile.ZipFile(clean) as src, zipfile.ZipFile(evil, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if "/sample_inputs/" in item.filename:
                data = buf.getvalue()
            dst.writestr(item, data)
    _check_same(model, load_model(evil))


def test_unsupported_op_is_named(tmp_path: Path) -> None:
    class Odd(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.flatten(torch.cumsum(x, dim=2), 1)

    path = tmp_path / "odd.pt2"
    torch.export.save(torch.export.export(Odd(), (torch.zeros(1, 1, 4, 4),)), path)
    with pytest.raises(ConvlensError, match=r"operation \d+ \(cumsum.*not supported"):
        load_model(path)
