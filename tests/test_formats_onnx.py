"""ONNX: exported zoo models load back with the same logits; hand-built graphs match numpy."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from convlens.errors import ConvlensError
from convlens.model import build, load_model
from convlens.model.load import detect_format

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from convlens.model.formats.onnx_format import convert_onnx  # noqa: E402


@pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based ONNX export")
@pytest.mark.parametrize("arch", ["tiny-vgg:input_size=32", "resnet18:width=8,num_classes=5"])
def test_exported_zoo_model_round_trips(tmp_path: Path, arch: str) -> None:
    original = build(arch, seed=0).eval()
    path = tmp_path / "net.onnx"
    x = torch.rand(3, *original.spec.shape, generator=torch.Generator().manual_seed(0))
    torch.onnx.export(original.net, (x[:1],), str(path), dynamo=False, input_names=["input"])
    assert detect_format(str(path)) == "onnx"
    spec = {"mean": original.spec.mean, "std": original.spec.std}
    loaded = load_model(path, input_spec=spec, classes=original.classes)
    assert loaded.spec == original.spec
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), original(x), atol=1e-5, rtol=0)
    names = {lay.name for lay in loaded.graph}
    assert ("conv_1_1" in names) if arch.startswith("tiny") else ("layer1.0.conv1" in names)


def _mlp_head_model() -> tuple[Any, dict[str, np.ndarray]]:  # (onnx.ModelProto, ...)
    """Conv (asymmetric pads) → LeakyRelu → GlobalAveragePool → Flatten → MatMul + Add → Softmax."""
    rng = np.random.default_rng(0)
    w = {
        "k": rng.normal(size=(4, 3, 3, 3)).astype(np.float32),
        "m": rng.normal(size=(4, 3)).astype(np.float32),
        "b": rng.normal(size=(3,)).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "k"], ["c"], name="/conv/Conv", pads=[0, 0, 1, 1],
                         strides=[2, 2]),
        helper.make_node("LeakyRelu", ["c"], ["r"], name="/act/LeakyRelu", alpha=0.1),
        helper.make_node("GlobalAveragePool", ["r"], ["g"], name="/gap/GlobalAveragePool"),
        helper.make_node("Flatten", ["g"], ["f"], name="/flat/Flatten"),
        helper.make_node("MatMul", ["f", "m"], ["mm"], name="/fc/MatMul"),
        helper.make_node("Add", ["mm", "b"], ["logits"], name="/fc/Add"),
        helper.make_node("Softmax", ["logits"], ["p"], name="/softmax/Softmax", axis=1),
    ]  # fmt: skip
    graph = helper.make_graph(
        nodes,
        "hand",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("p", TensorProto.FLOAT, [1, 3])],
        [numpy_helper.from_array(v, k) for k, v in w.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), w


def _np_reference(x: np.ndarray, w: dict[str, np.ndarray]) -> np.ndarray:
    xp = np.pad(x, ((0, 0), (0, 0), (0, 1), (0, 1)))  # pads end = 1: bottom and right
    out = np.zeros((x.shape[0], 4, 4, 4))
    for i in range(4):
        for j in range(4):
            patch = xp[:, :, 2 * i : 2 * i + 3, 2 * j : 2 * j + 3]
            out[:, :, i, j] = np.einsum("ncij,fcij->nf", patch, w["k"])
    out = np.where(out > 0, out, 0.1 * out).mean(axis=(2, 3))
    z = out @ w["m"] + w["b"]
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_hand_built_graph_matches_numpy(tmp_path: Path) -> None:
    proto, w = _mlp_head_model()
    path = tmp_path / "hand.onnx"
    onnx.save(proto, str(path))
    assert detect_format(str(path)) == "onnx"
    x = np.random.default_rng(1).random((3, 3, 8, 8)).astype(np.float32)
    net, shape = convert_onnx(proto)
    assert shape == (1, 3, 8, 8)
    names = [n for n, _ in net.named_children()]
    assert names[:3] == ["conv_pad", "conv", "act"] and "fc" in names
    assert "softmax" not in names  # the final softmax is split off: the net gives logits
    model = load_model(path)
    assert model.outputs == "logits"
    got = model.probabilities(torch.from_numpy(x)).double().numpy()
    np.testing.assert_allclose(got, _np_reference(x, w), atol=1e-5)


def test_unsupported_operator_is_named(tmp_path: Path) -> None:
    proto, _ = _mlp_head_model()
    proto.graph.node[1].op_type = "Einsum"
    path = tmp_path / "odd.onnx"
    onnx.save(proto, str(path))
    with pytest.raises(ConvlensError, match=r"ONNX node 1 \(/act/LeakyRelu, Einsum\).*'Einsum'"):
        load_model(path)


def test_class_names_from_metadata_then_sidecar_then_flag(tmp_path: Path) -> None:
    proto, _ = _mlp_head_model()
    helper.set_model_props(proto, {"classes": '["cat", "dog", "fox"]'})
    path = tmp_path / "hand.onnx"
    onnx.save(proto, str(path))
    assert load_model(path).classes == ["cat", "dog", "fox"]
    (tmp_path / "hand.convlens.json").write_text('{"classes": ["a", "b", "c"]}')
    assert load_model(path).classes == ["a", "b", "c"]
    assert load_model(path, classes=["x", "y", "z"]).classes == ["x", "y", "z"]


class _ViewNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.fc = torch.nn.Linear(4 * 6 * 6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x))
        return self.fc(h.view(h.size(0), -1))


@pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based ONNX export")
def test_dynamic_batch_shape_arithmetic_is_folded(tmp_path: Path) -> None:
    """``view(x.size(0), -1)`` with a dynamic batch exports as Shape→Gather→…→Reshape."""
    net = _ViewNet().eval()
    path = tmp_path / "view.onnx"
    torch.onnx.export(
        net, (torch.zeros(1, 3, 8, 8),), str(path), dynamo=False,
        input_names=["input"], dynamic_axes={"input": {0: "batch"}},
    )  # fmt: skip
    assert "Shape" in {n.op_type for n in onnx.load(str(path)).graph.node}
    model = load_model(path)
    x = torch.rand(5, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(model(x), net(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER"])
def test_nhwc_input_and_auto_pad(tmp_path: Path, auto_pad: str) -> None:
    """A TensorFlow-style export: NHWC input transposed first, convolution with auto_pad."""
    rng = np.random.default_rng(2)
    k = rng.normal(size=(4, 3, 3, 3)).astype(np.float32)
    fc = rng.normal(size=(3, 4)).astype(np.float32)  # Gemm with transB=1: (out, in)
    nodes = [
        helper.make_node("Transpose", ["x"], ["t"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["t", "k"], ["c"], name="conv", strides=[2, 2], auto_pad=auto_pad),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc"], ["y"], name="dense", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "nhwc",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8, 8, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
        [numpy_helper.from_array(k, "k"), numpy_helper.from_array(fc, "fc")],
    )  # fmt: skip
    path = tmp_path / "nhwc.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    model = load_model(path)
    assert model.spec.shape == (3, 8, 8)
    x = np.random.default_rng(3).random((2, 3, 8, 8)).astype(np.float32)
    # TensorFlow's rule: 8 → 4 with stride 2 pads one pixel, at the end (UPPER) or start (LOWER).
    pad = (0, 1) if auto_pad == "SAME_UPPER" else (1, 0)
    xp = np.pad(x, ((0, 0), (0, 0), pad, pad))
    out = np.zeros((2, 4, 4, 4))
    for i in range(4):
        for j in range(4):
            out[:, :, i, j] = np.einsum(
                "ncij,fcij->nf", xp[:, :, 2 * i : 2 * i + 3, 2 * j : 2 * j + 3], k
            )
    want = np.maximum(out, 0).mean(axis=(2, 3)) @ fc.T
    with torch.no_grad():
        got = model(torch.from_numpy(x)).double().numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize(("op", "strides"), [("MaxPool", 2), ("AveragePool", 2), ("MaxPool", 1)])
def test_same_upper_pooling(tmp_path: Path, op: str, strides: int) -> None:
    """SAME_UPPER pools pad one pixel at the end; averages count real pixels only."""
    node = helper.make_node(op, ["x"], ["p"], name="pool", kernel_shape=[2, 2],
                            strides=[strides, strides], auto_pad="SAME_UPPER")  # fmt: skip
    flat = helper.make_node("Flatten", ["p"], ["y"], name="flatten")
    graph = helper.make_graph(
        [node, flat], "pool",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 7, 7])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, None])],
    )  # fmt: skip
    path = tmp_path / "pool.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    x = np.random.default_rng(4).normal(size=(2, 1, 7, 7)).astype(np.float32)
    fill = -np.inf if op == "MaxPool" else np.nan
    xp = np.pad(x, ((0, 0), (0, 0), (0, 1), (0, 1)), constant_values=fill)
    out_size = -(-7 // strides)
    want = np.empty((2, 1, out_size, out_size))
    for i in range(out_size):
        for j in range(out_size):
            win = xp[:, :, i * strides : i * strides + 2, j * strides : j * strides + 2]
            want[:, :, i, j] = (
                win.max(axis=(2, 3)) if op == "MaxPool" else np.nanmean(win, axis=(2, 3))
            )
    net, _ = convert_onnx(onnx.load(str(path)))
    with torch.no_grad():
        got = net.eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want.reshape(2, -1), atol=1e-6)


# ------------------------------------------------ real exports of the CNN families


class _Basic(torch.nn.Module):
    """A ResNet basic block (He et al. 2016) with an optional 1×1 projection shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        nn = torch.nn
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        return torch.relu(h + (self.down(x) if self.down is not None else x))


class _ResNetLike(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        nn = torch.nn
        self.conv1 = nn.Conv2d(3, 8, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = nn.Sequential(_Basic(8, 8, 1), _Basic(8, 16, 2))
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pool(torch.relu(self.bn1(self.conv1(x))))
        h = torch.nn.functional.adaptive_avg_pool2d(self.layer1(h), 1)
        return self.fc(torch.flatten(h, 1))


class _Inverted(torch.nn.Module):
    """MobileNetV2's inverted residual (Sandler et al. 2018): expand, depthwise, project."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int = 4) -> None:
        super().__init__()
        nn = torch.nn
        mid = cin * expand
        self.block = nn.Sequential(
            nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU6(),
            nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False), nn.BatchNorm2d(mid),
            nn.ReLU6(), nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout),
        )  # fmt: skip
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.residual else self.block(x)


class _MobileNetLike(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        nn = torch.nn
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU6(),
            _Inverted(8, 8, 1), _Inverted(8, 16, 2), _Inverted(16, 16, 1),
            nn.Conv2d(16, 32, 1), nn.Hardswish(),
        )  # fmt: skip
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(32, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean((2, 3)))


class _InceptionLike(torch.nn.Module):
    """An Inception module (Szegedy et al. 2015), a channel shuffle (ShuffleNet, Zhang et al.
    2018) through dynamic view/transpose, and an upsampling: concat and shape arithmetic."""

    def __init__(self) -> None:
        super().__init__()
        nn = torch.nn
        # (no LocalResponseNorm: torch exports it as a 3-D average pool, which is refused)
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1), nn.ReLU())
        self.b1 = nn.Conv2d(8, 4, 1)
        self.b3 = nn.Sequential(nn.Conv2d(8, 4, 1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1))
        self.b5 = nn.Sequential(nn.Conv2d(8, 2, 1), nn.ReLU(), nn.Conv2d(2, 4, 5, padding=2))
        self.bp = nn.Sequential(nn.MaxPool2d(3, 1, 1), nn.Conv2d(8, 4, 1))
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.head = nn.Conv2d(16, 6, 3, 2)
        self.fc = nn.Linear(6 * 13 * 13, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        h = torch.cat([self.b1(h), self.b3(h), self.b5(h), self.bp(h)], 1)
        n, c, hh, ww = h.shape
        h = h.view(n, 4, c // 4, hh, ww).transpose(1, 2).reshape(n, c, hh, ww)
        h = torch.nn.functional.avg_pool2d(torch.relu(h), 2, ceil_mode=True)
        h = torch.relu(self.head(self.up(h)))
        return self.fc(h.view(h.size(0), -1))


FAMILIES = {"resnet": _ResNetLike, "mobilenetv2": _MobileNetLike, "inception": _InceptionLike}


def export(family: str, exporter: str, folder: Path) -> tuple[Path, torch.nn.Module]:
    """The family's network (seeded, with non-trivial BN statistics) exported to ONNX."""
    torch.manual_seed(0)
    net = FAMILIES[family]()
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            assert m.running_mean is not None and m.running_var is not None
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    net.eval()
    path = folder / f"{family}-{exporter}.onnx"
    if path.is_file():
        return path, net
    x = torch.rand(1, 3, 28, 28)
    if exporter == "legacy":
        torch.onnx.export(
            net, (x,), str(path), dynamo=False, input_names=["input"],
            dynamic_axes={"input": {0: "batch"}},
        )  # fmt: skip
    else:
        pytest.importorskip("onnxscript")
        # the dynamo exporter stores weights in a side file unless told not to; such files
        # are refused (see test_external_data_is_refused)
        torch.onnx.export(net, (x,), str(path), dynamo=True, verbose=False, external_data=False)
    return path, net


@pytest.fixture(scope="session")
def export_dir() -> Path:
    """Exports are cached per torch version (the exporter is the writer under test)."""
    root = Path(os.environ.get("CONVLENS_TEST_CACHE", Path(__file__).parent / ".cache"))
    folder = root / "onnx-exports" / torch.__version__.replace("+", "_")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_exported_families_match_onnxruntime(export_dir: Path, family: str, exporter: str) -> None:
    ort = pytest.importorskip("onnxruntime")
    path, net = export(family, exporter, export_dir)
    model = load_model(path)
    assert model.spec.shape == (3, 28, 28)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    batch = 3 if exporter == "legacy" else 1  # the dynamo export fixes the batch at 1
    x = torch.rand(batch, 3, 28, 28, generator=torch.Generator().manual_seed(1))
    want = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        got = model(x).numpy()
        again = model(torch.cat([x, x]))  # any batch size runs, whatever the export fixed
        ref = net(x).numpy()
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(again.numpy(), np.concatenate([got, got]), atol=1e-5)
    convs = [lay for lay in model.graph if lay.kind == "conv"]
    assert len(convs) >= 4


FIXTURES = Path(__file__).parent / "fixtures" / "onnx"


def test_real_paddleocr_direction_classifier_matches_onnxruntime() -> None:
    """A published model (PaddleOCR's MobileNetV3-style text-direction classifier, exported
    by Paddle2ONNX; see tests/fixtures/onnx/README.md) against onnxruntime."""
    ort = pytest.importorskip("onnxruntime")
    path = FIXTURES / "ch_ppocr_mobile_v2.0_cls_infer.onnx"
    model = load_model(path, input_spec={"height": 48, "width": 192}, classes=["0", "180"])
    assert model.spec.shape == (3, 48, 192) and model.outputs == "logits"
    x = np.random.default_rng(0).uniform(-1, 1, (4, 3, 48, 192)).astype(np.float32)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    want = sess.run(None, {"x": x})[0]  # the file ends in a softmax: probabilities
    with torch.no_grad():
        got = torch.softmax(model(torch.from_numpy(x)), 1).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert sum(lay.kind == "conv" for lay in model.graph) == 53


def test_paddle_model_needs_an_input_size() -> None:
    with pytest.raises(ConvlensError, match=r"unknown dimensions.*--input-size"):
        load_model(FIXTURES / "ch_ppocr_mobile_v2.0_cls_infer.onnx")


# ------------------------------------------------------------- hostile and odd files


def _save(tmp_path: Path, proto: Any, name: str = "m.onnx") -> Path:
    path = tmp_path / name
    path.write_bytes(proto.SerializeToString())
    return path


def test_external_data_is_refused(tmp_path: Path) -> None:
    """Weights in a side file (onnx's own writer) would let a file name any local path."""
    proto, _ = _mlp_head_model()
    path = tmp_path / "ext.onnx"
    onnx.save_model(proto, str(path), save_as_external_data=True, size_threshold=0,
                    location="weights.bin")  # fmt: skip
    assert (tmp_path / "weights.bin").is_file()
    with pytest.raises(ConvlensError, match="initializer 'k' is stored in an external file"):
        load_model(path)


def test_declared_shape_must_match_the_data(tmp_path: Path) -> None:
    proto, _ = _mlp_head_model()
    init = proto.graph.initializer[0]
    init.raw_data = init.raw_data[:-4]  # one float short
    with pytest.raises(ConvlensError, match=r"initializer 'k' declares shape \[4, 3, 3, 3\].*"
                       r"432 bytes.*428 bytes"):  # fmt: skip
        load_model(_save(tmp_path, proto))


def test_huge_declared_shapes_are_refused_before_allocation(tmp_path: Path) -> None:
    proto, _ = _mlp_head_model()
    init = proto.graph.initializer[0]
    del init.dims[:]
    init.dims.extend([10**6, 10**7])
    with pytest.raises(ConvlensError, match="over the budget"):
        load_model(_save(tmp_path, proto))
    # a ConstantOfShape asking for 10^12 values: refused before numpy allocates
    nodes = [
        helper.make_node("Constant", [], ["s"], value=numpy_helper.from_array(
            np.array([10**6, 10**6], np.int64))),
        helper.make_node("ConstantOfShape", ["s"], ["z"], name="big"),
        helper.make_node("Add", ["x", "z"], ["y"]),
    ]  # fmt: skip
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )  # fmt: skip
    big = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(ConvlensError, match=r"node 1 \(ConstantOfShape\).*over the budget"):
        load_model(_save(tmp_path, big))


def test_only_regular_files_are_read(tmp_path: Path) -> None:
    from convlens.model.formats.onnx_format import read_onnx

    fifo = tmp_path / "pipe.onnx"
    os.mkfifo(fifo)
    with pytest.raises(ConvlensError, match="not a regular file"):
        read_onnx(fifo)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\xff" * 64)
    with pytest.raises(ConvlensError, match=r"cannot read .* as an ONNX model"):
        load_model(junk)


def _one_node_model(
    node: Any, x_shape: list[int], opset: int = 17, inits: dict[str, np.ndarray] | None = None
) -> Any:
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v, k) for k, v in (inits or {}).items()],
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


@pytest.mark.parametrize(
    ("node", "shape", "inits", "match"),
    [
        (helper.make_node("Conv", ["x", "w"], ["y"], name="c1d"), [1, 3, 8],
         {"w": np.ones((2, 3, 3), np.float32)}, r"node 0 \(c1d, Conv\): only 2-D convolutions"),
        (helper.make_node("MaxPool", ["x"], ["y"], name="p3d", kernel_shape=[2, 2, 2]),
         [1, 3, 4, 4, 4], {}, r"node 0 \(p3d, MaxPool\): only 2-D pools"),
        (helper.make_node("RandomNormalLike", ["x"], ["y"], name="noise"), [1, 3, 4, 4], {},
         r"node 0 \(noise, RandomNormalLike\): random operators are not supported"),
        (helper.make_node("Conv", ["x", "w"], ["y"], name="grp", group=2), [1, 3, 8, 8],
         {"w": np.ones((4, 2, 3, 3), np.float32)}, r"node 0 \(grp, Conv\): does not compute"),
        (helper.make_node("AveragePool", ["x"], ["y"], name="dil", kernel_shape=[2, 2],
                          dilations=[2, 2]), [1, 3, 8, 8], {}, r"dilations \[2, 2\] is not"),
        (helper.make_node("Relu", ["nowhere"], ["y"], name="r"), [1, 3, 4, 4], {},
         r"node 0 \(r, Relu\): input 0 \('nowhere'\) is not computed"),
    ],
)  # fmt: skip
def test_unconvertible_nodes_are_refused_by_name_and_position(
    node: Any, shape: list[int], inits: dict[str, np.ndarray], match: str
) -> None:
    from convlens.model.formats.onnx_format import convert_graph

    with pytest.raises(ConvlensError, match=match):
        convert_graph(_one_node_model(node, shape, inits=inits))


def test_old_opsets_are_refused() -> None:
    from convlens.model.formats.onnx_format import convert_graph

    node = helper.make_node("Relu", ["x"], ["y"])
    with pytest.raises(ConvlensError, match="opset 6; accepted: opsets 7 to"):
        convert_graph(_one_node_model(node, [1, 3], opset=6))


def test_softmax_before_opset_13_coerces_to_2d() -> None:
    """Softmax-1..12 normalises over all axes from ``axis`` on; 13+ over ``axis`` alone."""
    from convlens.model.formats.onnx_format import convert_graph

    x = np.random.default_rng(0).normal(size=(2, 3, 4)).astype(np.float32)
    for opset, want_axes in ((11, (1, 2)), (13, (1,))):
        node = helper.make_node("Softmax", ["x"], ["y"], axis=1)
        net = convert_graph(_one_node_model(node, [2, 3, 4], opset=opset)).net
        e = np.exp(x - x.max(axis=want_axes, keepdims=True))
        want = e / e.sum(axis=want_axes, keepdims=True)
        np.testing.assert_allclose(net(torch.from_numpy(x)).numpy(), want, atol=1e-6)


def test_squeezenet_style_output_is_a_class_vector(tmp_path: Path) -> None:
    """Conv → GlobalAveragePool → Softmax gives (N, C, 1, 1): read as C class scores."""
    w = np.random.default_rng(0).normal(size=(5, 3, 1, 1)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="classifier"),
        helper.make_node("GlobalAveragePool", ["c"], ["g"], name="pool"),
        helper.make_node("Softmax", ["g"], ["y"], name="prob", axis=1),
    ]
    graph = helper.make_graph(
        nodes, "sq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5, 1, 1])],
        [numpy_helper.from_array(w, "w")],
    )  # fmt: skip
    path = _save(tmp_path, helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))
    model = load_model(path)
    x = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        got = model(x)
    want = np.einsum("nchw,kc->nk", x.numpy(), w[:, :, 0, 0]) / 64  # a 1×1 conv, then the mean
    assert got.shape == (2, 5) and model.outputs == "logits"
    np.testing.assert_allclose(got.numpy(), want, atol=1e-5)
