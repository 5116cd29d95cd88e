"""PyTorch formats: torch.export programs, TorchScript and state dicts round-trip exactly."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

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
        assert net.bn.running_mean is not None and net.bn.running_var is not None
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


# ------------------------------------------------------------------ the ATen operator set

A = torch.ops.aten


class _Fn(torch.nn.Module):
    """A module whose forward is ``fn(self, x)``; ``parts`` become its submodules/buffers."""

    def __init__(self, fn: Any, **parts: Any) -> None:
        super().__init__()
        self.fn = fn
        for k, v in parts.items():
            if isinstance(v, torch.nn.Module):
                self.add_module(k, v)
            else:
                self.register_buffer(k, v)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self, x)


def _rand(*shape: int) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(sum(shape))) + 0.5


F_ = torch.nn.functional
# name → (module, example input shape (batch 1), the ATen operators it must produce)
OP_CASES: dict[str, tuple[Any, tuple[int, ...]]] = {
    "prelu": (lambda: torch.nn.PReLU(3, 0.1), (1, 3, 4, 4)),
    "prelu_kernel": (
        lambda: _Fn(lambda m, x: A._prelu_kernel(x, m.w), w=_rand(1, 3, 1, 1)),
        (1, 3, 4, 4),
    ),
    "permute_transpose": (
        lambda: _Fn(
            lambda m, x: x.permute(0, 2, 3, 1).contiguous().transpose(1, 2).reshape(x.shape[0], -1)
        ),
        (1, 3, 4, 5),
    ),
    "view_mid": (
        lambda: _Fn(
            lambda m, x: torch.relu(x.view(x.shape[0], 6, 2, 4)).reshape(x.shape[0], 3, 4, 4)
        ),
        (1, 3, 4, 4),
    ),
    "view_copy_unsafe": (
        lambda: _Fn(
            lambda m, x: A._unsafe_view(A.view_copy(x, [x.shape[0], 48]), [x.shape[0], 3, 16])
        ),
        (1, 3, 4, 4),
    ),
    "activations": (
        lambda: _Fn(
            lambda m, x: (
                F_.hardswish(x)
                + F_.hardsigmoid(x)
                + F_.silu(x)
                + F_.gelu(x)
                + F_.gelu(x, approximate="tanh")
                + F_.elu(x, 0.7)
                + F_.leaky_relu(x, 0.2)
                + torch.tanh(x)
                + torch.sigmoid(x)
                + F_.mish(x)
                + F_.softplus(x, 2.0, 5.0)
                + F_.selu(x)
                + F_.relu6(x)
                + F_.hardtanh(x, -0.5, 0.5)
            )
        ),
        (1, 2, 3, 3),
    ),
    "in_place": (
        lambda: _Fn(
            lambda m, x: A.leaky_relu_(
                A.selu_(
                    A.elu_(
                        A.gelu_(
                            A.mish_(
                                A.tanh_(
                                    A.sigmoid_(
                                        A.silu_(
                                            A.hardsigmoid_(
                                                A.hardswish_(
                                                    A.hardtanh_(
                                                        A.relu6_(
                                                            A.relu_(x.clone() - 0.9).contiguous()
                                                        ),
                                                        0.0,
                                                        0.5,
                                                    )
                                                )
                                            )
                                        )
                                    )
                                )
                            )
                        )
                    )
                ),
                0.1,
            )
        ),
        (1, 2, 3, 3),
    ),
    "in_place_arith": (
        lambda: _Fn(
            lambda m, x: A.div_(
                A.mul_(
                    A.sub_(A.add_(A.clamp_(A.dropout_(x.clone(), 0.5, False), 0.6, 1.2), x), m.c), x
                ),
                3.0,
            ),
            c=_rand(1, 2, 1, 1),
        ),
        (1, 2, 3, 3),
    ),
    "arith_tensors": (
        lambda: _Fn(
            lambda m, x: (
                x * m.c
                - x / m.c
                + 2.0 * x
                - x / 3.0
                + (1.0 - x)
                + (2.0 / x)
                + torch.add(x, x, alpha=0.5)
                + torch.sub(x, m.c, alpha=2)
                + torch.div(x, m.c, rounding_mode="floor")
                + m.c / x
                + m.c
                - x
            ),
            c=_rand(1, 2, 1, 1),
        ),
        (1, 2, 3, 3),
    ),
    "arith_computed": (
        lambda: _Fn(
            lambda m, x: (
                x * torch.sigmoid(x)
                - x / (x + 1.0)
                + torch.div(x * 4.0, x + 1, rounding_mode="trunc")
            )
        ),
        (1, 2, 3, 3),
    ),
    "unary": (
        lambda: _Fn(
            lambda m, x: A.neg(x) + A.abs(x) + A.exp(x) + A.sqrt(x) + A.rsqrt(x) + A.reciprocal(x)
        ),
        (1, 2, 3, 3),
    ),
    "mean_dims": (
        lambda: _Fn(
            lambda m, x: (
                x.mean(dim=(2, 3))
                + x.mean(dim=(-1, -2), keepdim=True).flatten(1)
                + x.mean(1).flatten(1)[:, :2]
            )
        ),
        (1, 2, 3, 2),
    ),
    "cat_chunk_split": (
        lambda: _Fn(
            lambda m, x: torch.cat(
                [
                    *x.chunk(2, 1)[::-1],
                    *torch.split(x, [1, 3], 1),
                    *torch.split(x, 2, 1),
                    *A.unsafe_split(x, 2, 1),
                ],
                1,
            )
        ),
        (1, 4, 3, 3),
    ),
    "concat_aliases": (
        lambda: _Fn(
            lambda m, x: A.concatenate(
                [A.concat([A.alias(x), A.detach(x)], 1), x * A.lift_fresh_copy(m.c)], 1
            ),
            c=_rand(1, 2, 1, 1),
        ),
        (1, 2, 3, 3),
    ),
    "pads": (
        lambda: _Fn(
            lambda m, x: (
                F_.pad(x, (1, 2, 0, 1))
                + F_.pad(x, (1, 2, 0, 1), value=0.5)
                + F_.pad(x, (1, 2, 0, 1), mode="reflect")
                + F_.pad(x, (1, 2, 0, 1), mode="replicate")
                + F_.pad(x, (1, 2, 0, 1), mode="circular")
                + A.constant_pad_nd(x, [1, 2, 0, 1], 0.25)
                + A.reflection_pad2d(x, [1, 2, 0, 1])
                + A.replication_pad2d(x, [1, 2, 0, 1])
            )
        ),
        (1, 2, 4, 4),
    ),
    "pad_last_dim": (lambda: _Fn(lambda m, x: F_.pad(x, (1, 1))), (1, 2, 4, 4)),
    "upsample": (
        lambda: _Fn(
            lambda m, x: (
                F_.interpolate(x, scale_factor=2)
                + F_.interpolate(x, size=(8, 8), mode="bilinear")
                + F_.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
                + F_.interpolate(x, size=(8, 8), mode="nearest-exact")
                + F_.interpolate(x, scale_factor=2.0, mode="bicubic")
            )
        ),
        (1, 2, 4, 4),
    ),
    "upsample_uneven": (
        lambda: _Fn(lambda m, x: F_.interpolate(x, scale_factor=(2.0, 2.5), mode="bilinear")),
        (1, 2, 4, 4),
    ),
    "upsample_module": (
        lambda: torch.nn.Sequential(
            torch.nn.Upsample(scale_factor=1.5), torch.nn.UpsamplingBilinear2d(size=(7, 5))
        ),
        (1, 2, 4, 4),
    ),
    "layer_norm": (
        lambda: torch.nn.Sequential(
            torch.nn.LayerNorm([2, 3, 3]), torch.nn.LayerNorm(3, elementwise_affine=False)
        ),
        (1, 2, 3, 3),
    ),
    "batch_norms": (
        lambda: _Fn(
            lambda m, x: (
                A._native_batch_norm_legit_no_training(x, m.w, m.b, m.m, m.v, 0.1, 1e-3)[0]
                + m.bn(x)
            ),
            w=_rand(2),
            b=_rand(2),
            m=_rand(2),
            v=_rand(2),
            bn=torch.nn.BatchNorm2d(2).eval(),
        ),
        (1, 2, 3, 3),
    ),
    "conv_transpose": (
        lambda: torch.nn.Sequential(
            torch.nn.ConvTranspose2d(2, 3, 3, stride=2, padding=1, output_padding=1),
            torch.nn.ConvTranspose2d(3, 4, 2, stride=2, groups=1, dilation=2),
        ),
        (1, 2, 4, 4),
    ),
    "convolution_direct": (
        lambda: _Fn(
            lambda m, x: (
                A._convolution(
                    x,
                    m.w,
                    m.b,
                    [1, 1],
                    [1, 1],
                    [1, 1],
                    False,
                    [0, 0],
                    1,
                    False,
                    False,
                    False,
                    False,
                )
                + A.convolution(x, m.w, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1)
                + A.convolution(x, m.wt, None, [1, 1], [1, 1], [1, 1], True, [0, 0], 1)
            ),
            w=_rand(2, 2, 3, 3),
            wt=_rand(2, 2, 3, 3),
            b=_rand(2),
        ),
        (1, 2, 4, 4),
    ),
    "conv_variants": (
        lambda: torch.nn.Sequential(
            torch.nn.Conv2d(2, 4, 3, padding="same", dilation=2),
            torch.nn.Conv2d(4, 4, 3, stride=2, groups=2),
        ),
        (1, 2, 6, 6),
    ),
    "clamps": (
        lambda: _Fn(
            lambda m, x: (
                torch.clamp(x, 0.6, 1.2)
                + torch.clamp(x, min=0.0)
                + torch.clamp(x, max=0.9)
                + torch.clamp(x, 0.0, 6.0)
                + A.clip(x, 0.7, 0.8)
                + A.clamp_min(x, 0.8)
                + A.clamp_max(x, 0.7)
            )
        ),
        (1, 2, 3, 3),
    ),
    "softmaxes": (
        lambda: _Fn(
            lambda m, x: (
                F_.softmax(x, 1)
                + F_.log_softmax(x, 1)
                + A._softmax(x, -1, False)
                + A._log_softmax(x, 2, False)
            )
        ),
        (1, 2, 3, 3),
    ),
    "pools": (
        lambda: _Fn(
            lambda m, x: torch.cat(
                [
                    p.flatten(1)
                    for p in (
                        F_.avg_pool2d(x, 3, 2, 1, ceil_mode=True, count_include_pad=False),
                        F_.avg_pool2d(x, 3, 2, 1, divisor_override=2),
                        F_.max_pool2d(x, 3, 2, 1, dilation=2, ceil_mode=True),
                        F_.max_pool2d(x, 3, 2, 1, return_indices=True)[0],
                        F_.adaptive_max_pool2d(x, 3),
                        A._adaptive_avg_pool2d(x, [3, 3]),
                        F_.adaptive_avg_pool2d(x, (3, 2)),
                    )
                ],
                1,
            )
        ),
        (1, 2, 7, 6),
    ),
    "dropouts_linear": (
        lambda: _Fn(
            lambda m, x: m.fc(
                F_.dropout(
                    A.feature_dropout(A.alpha_dropout(x.flatten(1), 0.5, False), 0.5, False),
                    0.3,
                    training=False,
                )
            ),
            fc=torch.nn.Linear(18, 4),
        ),
        (1, 2, 3, 3),
    ),
    "slice_select_squeeze": (
        lambda: _Fn(
            lambda m, x: torch.cat(
                [
                    x[:, 1:3, ::2].flatten(1),
                    x[:, :2, 1:].mean(2, keepdim=True).unsqueeze(2).squeeze(2).flatten(1),
                    x[:, 0].unsqueeze(1).flatten(1),
                    x[:, :, -2].flatten(1),
                ],
                1,
            )
        ),
        (1, 4, 5, 3),
    ),
    "constant_folding": (
        lambda: _Fn(
            lambda m, x: (
                x * m.g.view(1, -1, 1, 1) + torch.ones(2, 1, 1) * 0.5 + torch.tensor(2.0) * 3
            ),
            g=_rand(2),
        ),
        (1, 2, 3, 3),
    ),
}


_PROGRAMS: dict[str, tuple[Any, Path]] = {}


@pytest.fixture(scope="module")
def op_programs(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """``get(name)``: the case exported at batch 1 and saved with torch.export.save, once."""
    folder = tmp_path_factory.mktemp("ops")

    def get(name: str) -> tuple[Any, Path]:
        if name not in _PROGRAMS:
            make, shape = OP_CASES[name]
            torch.manual_seed(0)
            net = make().eval()
            path = folder / f"{name}.pt2"
            torch.export.save(torch.export.export(net, (_rand(*shape),)), path)
            _PROGRAMS[name] = (net, path)
        return _PROGRAMS[name]

    return get


@pytest.mark.parametrize("case", sorted(OP_CASES))
def test_aten_op_matches_pytorch(case: str, op_programs: Any) -> None:
    from convlens.model.formats.aten_ops import program_to_module
    from convlens.model.formats.pt2_archive import read_pt2

    net, path = op_programs(case)
    converted, shape = program_to_module(read_pt2(str(path)))
    assert shape == OP_CASES[case][1]
    x = _rand(3, *OP_CASES[case][1][1:])  # batch 3: the batch dimension stays free
    with torch.no_grad():
        torch.testing.assert_close(converted(x), net(x), atol=1e-5, rtol=1e-5)


def test_every_converter_is_exercised(op_programs: Any) -> None:
    from convlens.model.formats.aten_ops import HANDLERS, aten_name
    from convlens.model.formats.pt2_archive import read_pt2

    seen: set[str] = set()
    for case in OP_CASES:
        _, path = op_programs(case)
        seen |= {aten_name(n.target) for n in read_pt2(str(path)).graph.nodes}
    # Produced only by other routes: TorchScript conversion and dynamic-shape exports.
    elsewhere = {
        "sym_size",
        "_assert_scalar",
        "sym_constrain_range_for_size",
        "_assert_tensor_metadata",
        "lift_fresh",
        "split_with_sizes_copy",
    }
    missing = sorted(set(HANDLERS) - seen - elsewhere)
    assert not missing, f"converters no test case exercises: {missing}"


# ------------------------------------------------------------------ whole architectures


@pytest.fixture(scope="module")
def arch_files(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """``get(name, kind)``: the original module and its file (``pt2`` or ``script``/``trace``)."""
    from torch_archs import make

    folder = tmp_path_factory.mktemp("archs")
    cache: dict[tuple[str, str], tuple[torch.nn.Module, Path]] = {}

    def get(name: str, kind: str) -> tuple[torch.nn.Module, Path]:
        if (name, kind) not in cache:
            net = make(name)
            example = torch.zeros(1, 3, 32, 32)
            if kind == "pt2":
                path = folder / f"{name}.pt2"
                torch.export.save(torch.export.export(net, (example,)), path)
            else:
                path = folder / f"{name}.{kind}.pt"
                script = (
                    torch.jit.script(net) if kind == "script" else torch.jit.trace(net, example)
                )
                script.save(str(path))
            cache[name, kind] = (net, path)
        return cache[name, kind]

    return get


ARCH_NAMES = ["resnet", "mobilenetv3", "inception", "shufflenet", "unet"]


def _same_as(net: torch.nn.Module, loaded: Model) -> None:
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(loaded.net(x), net(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ARCH_NAMES)
def test_exported_architecture_matches(name: str, arch_files: Any) -> None:
    net, path = arch_files(name, "pt2")
    loaded = load_model(path)
    _same_as(net, loaded)
    assert loaded.spec.shape == (3, 32, 32)
    # The original module paths are layer names: views can address the blocks.
    names = {layer.name for layer in loaded.graph}
    first = {
        "resnet": "layer1.0.conv1",
        "mobilenetv3": "blocks.0.se.fc1",
        "inception": "mixed.b3.1.0",
        "shufflenet": "stage.1.branch.1",
        "unet": "up",
    }
    assert first[name] in names, sorted(names)[:20]


def test_dynamic_batch_export_matches(tmp_path: Path) -> None:
    """A program exported with a symbolic batch (sympy sizes in the file) loads the same."""
    from torch_archs import make

    net = make("shufflenet")
    batch = torch.export.Dim("batch", min=1, max=64)
    ep = torch.export.export(net, (torch.zeros(2, 3, 32, 32),), dynamic_shapes={"x": {0: batch}})
    torch.export.save(ep, tmp_path / "dyn.pt2")
    loaded = load_model(tmp_path / "dyn.pt2")
    assert loaded.spec.shape == (3, 32, 32)
    _same_as(net, loaded)


@pytest.mark.slow
@pytest.mark.parametrize("name", ARCH_NAMES)
def test_torchscript_architecture_matches(name: str, arch_files: Any) -> None:
    # Tracing freezes ShuffleNet's channel arithmetic into scalar ops the converter cannot
    # follow; scripting keeps it symbolic. The others are traced.
    kind = "script" if name in ("shufflenet", "unet") else "trace"
    net, path = arch_files(name, kind)
    loaded = load_model(path, trust_pickle=True, input_spec={"size": 32, "channels": 3})
    _same_as(net, loaded)


@pytest.mark.slow
def test_unconvertible_torchscript_is_one_quiet_line(
    arch_files: Any, capfd: pytest.CaptureFixture[str]
) -> None:
    _, path = arch_files("shufflenet", "trace")
    capfd.readouterr()
    with pytest.raises(ConvlensError) as info:
        load_model(path, trust_pickle=True, input_spec={"size": 32, "channels": 3})
    out, err = capfd.readouterr()
    assert "\n" not in str(info.value)
    assert "torch.export" in str(info.value)
    assert out == "" and err == "", (out + err)[:500]


@pytest.mark.parametrize(
    ("module", "match"),
    [
        (lambda x: torch.cumsum(x, 2).flatten(1), r"operation \d+ \(cumsum: aten.cumsum"),
        (lambda x: torch.cat([x, x], 0).flatten(1), "batch dimension"),
        (lambda x: x.permute(1, 0, 2, 3).flatten(1), "moves the batch dimension"),
        (lambda x: torch.nn.functional.dropout(x, 0.5, training=True).flatten(1), "training"),
        (lambda x: x.reshape(-1, 2).sum(1, keepdim=True), "batch dimension"),
    ],
)
def test_unsupported_or_batch_mixing_ops_are_refused(
    module: Any, match: str, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "odd.pt2"
    torch.export.save(
        torch.export.export(_Fn(lambda m, x: module(x)), (torch.rand(1, 2, 4, 4),)), path
    )
    capfd.readouterr()
    with pytest.raises(ConvlensError, match=match) as info:
        load_model(path)
    assert "\n" not in str(info.value)
    out, err = capfd.readouterr()
    assert out == "" and err == ""


@pytest.mark.slow
def test_cli_summary_and_explain_on_exported_mobilenet(
    arch_files: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from PIL import Image

    from convlens.cli import main

    _, path = arch_files("mobilenetv3", "pt2")
    assert main(["summary", str(path)]) == 0
    out = capsys.readouterr().out
    assert "blocks.0.se.gate" in out and "Hardsigmoid" in out
    image = tmp_path / "img.png"
    Image.fromarray((torch.rand(40, 48, 3) * 255).byte().numpy()).save(image)
    args = ["explain", str(image), "-m", str(path), "--method", "grad-cam,saliency"]
    assert main([*args, "--out", str(tmp_path / "out")]) == 0
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == ["img.explain.png", "img.grad-cam.png", "img.saliency.png"], written
