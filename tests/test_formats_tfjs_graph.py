"""TF.js graph models written by tensorflowjs_converter, checked against TF.js itself.

The fixtures (``tests/fixtures/tfjs/graph-*``) come from ``make_graph_models.py`` (Keras →
SavedModel → ``tensorflowjs_converter``); the reference outputs come from TF.js in node when
it is installed, else from the ``.reference.npz`` files TF.js wrote (see ``tfjs_reference.py``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from convlens.errors import ConvlensError
from convlens.model import Model, load_model
from convlens.model.formats import tfjs_graph
from convlens.model.load import detect_format
from tfjs_reference import (
    FIXTURES,
    JS,
    node_ready,
    reference,
    run_tfjs,
    sample_inputs,
    why_no_node,
)

# name → whether the file ends in a softmax (convlens drops it and applies it in probabilities)
GRAPH_FIXTURES = {
    "graph-mobilenet-v2": True,
    "graph-resnet-like": True,
    "graph-inception-like": False,
    "graph-raw-ops": False,
    "graph-keras2-swish": True,  # tf_keras SavedModel: swish, uneven SAME average pooling
    # Keras ResNet50's first block at Keras's initial values: TF's remapper fuses the residual
    # add into a conv, a _FusedConv2D whose "bias" is a live tensor
    "graph-resnet50-block": True,
}
TOLERANCE = 1e-4


def model_output(model: Model, x_nhwc: np.ndarray, softmax: bool) -> np.ndarray:
    """The model on what TF.js was given: raw NHWC values ``x`` (0..255 pixels for a model
    whose leading Rescaling went into its input spec, so convlens's pixels are ``x / 255``)."""
    x = torch.from_numpy(x_nhwc).permute(0, 3, 1, 2).contiguous()
    if any(m != 0 for m in model.spec.mean) or any(s != 1 for s in model.spec.std):
        x = x / 255
    with torch.no_grad():
        y = model.probabilities(x) if softmax else model.net(model.normalize(x))
    return y.double().numpy()


@pytest.fixture(scope="module", params=sorted(GRAPH_FIXTURES))
def graph_fixture(request: pytest.FixtureRequest) -> tuple[str, Model]:
    name = request.param
    return name, load_model(FIXTURES / name)


def test_graph_models_match_tfjs(graph_fixture: tuple[str, Model]) -> None:
    name, model = graph_fixture
    c, h, w = model.spec.shape
    x, want, source = reference(FIXTURES / name, (h, w, c))
    got = model_output(model, x, GRAPH_FIXTURES[name])
    diff = float(np.abs(got - want).max())
    print(f"{name}: max |Δ| = {diff:.2e} vs {source}")
    assert diff < TOLERANCE, (name, diff, source)
    assert want.std() > 1e-3  # the outputs differ across classes: the check can fail


def test_graph_model_contract(graph_fixture: tuple[str, Model]) -> None:
    name, model = graph_fixture
    assert detect_format(str(FIXTURES / name)) == "tfjs-graph"
    assert detect_format(str(FIXTURES / name / "model.json")) == "tfjs-graph"
    assert model.outputs == "logits" and model.name == name
    if name == "graph-resnet-like":  # Rescaling(1/127.5, offset=-1) on 0..255 pixels
        np.testing.assert_allclose(model.spec.mean + model.spec.std, [0.5] * 6, rtol=1e-6)
        assert "conv2d_1" in dict(model.net.named_children())
    else:
        assert model.spec.mean == (0.0, 0.0, 0.0) and model.spec.std == (1.0, 1.0, 1.0)
    # A batch gives each image what it gives alone (Reshape targets keep the batch free).
    c, h, w = model.spec.shape
    x = torch.rand(3, c, h, w, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        batch = model.net(x)
        single = torch.cat([model.net(x[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(batch, single, atol=1e-5, rtol=1e-5)
    assert model.graph.output.output_shape[0] == len(model.classes)


def test_mobilenet_structure_and_names() -> None:
    model = load_model(FIXTURES / "graph-mobilenet-v2")
    modules = dict(model.net.named_modules())
    # Fused conv nodes are named after their Keras layer, the fused activation after its node.
    assert isinstance(modules["Conv1_1"], nn.Conv2d) and modules["Conv1_1"].stride == (2, 2)
    assert isinstance(modules["Conv1_relu_1_Relu6"], nn.ReLU6)
    dw = modules["expanded_conv_depthwise_1"]
    assert isinstance(dw, nn.Conv2d) and dw.groups == dw.in_channels == 16
    assert isinstance(modules["predictions_1"], nn.Linear)
    assert modules["predictions_1"].out_features == 10
    # Uneven SAME padding of a stride-2 conv on an even size: one pixel after, none before.
    assert modules["Conv1_1_pad"].padding == (0, 1, 0, 1)
    # MobileNetV2: a stem conv, 17 inverted residual blocks (expand 1×1 but in the first,
    # depthwise 3×3, project 1×1) and a last 1×1 conv to 1280 channels.
    convs = [m for m in modules.values() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 1 + 16 + 17 + 17 + 1
    assert sum(m.groups > 1 for m in convs) == 17 and convs[-1].out_channels == 1280
    assert not model.training and not model.net.training


def test_float16_and_uint8_weights_dequantize_as_tfjs() -> None:
    """MobileNetV2 is stored as float16, ResNet-like as uint8 (q · scale + min)."""
    doc = json.loads((FIXTURES / "graph-resnet-like" / "model.json").read_text())
    entry = doc["weightsManifest"][0]["weights"][0]
    assert entry["quantization"]["dtype"] == "uint8"
    raw = np.fromfile(FIXTURES / "graph-resnet-like" / "group1-shard1of1.bin", np.uint8)
    count = int(np.prod(entry["shape"]))
    q = entry["quantization"]
    want = raw[:count].astype(np.float32) * np.float32(q["scale"]) + np.float32(q["min"])
    from convlens.model.formats.tfjs import read_weights

    got = dict(read_weights(FIXTURES / "graph-resnet-like", doc["weightsManifest"]))
    np.testing.assert_array_equal(got[entry["name"]].reshape(-1), want)
    doc16 = json.loads((FIXTURES / "graph-mobilenet-v2" / "model.json").read_text())
    e16 = doc16["weightsManifest"][0]["weights"][0]
    assert e16["quantization"]["dtype"] == "float16"
    half = np.fromfile(FIXTURES / "graph-mobilenet-v2" / "group1-shard1of1.bin", "<f2")
    got16 = dict(read_weights(FIXTURES / "graph-mobilenet-v2", doc16["weightsManifest"]))
    n16 = int(np.prod(e16["shape"]))
    np.testing.assert_array_equal(got16[e16["name"]].reshape(-1), half[:n16].astype(np.float32))


# ------------------------------------------------------------------ op coverage

# Ops the converter handles that no fixture written by tensorflowjs_converter 4.22 contains
# (grappler fuses or folds them away). Those in UNFUSED (below) are checked against TF.js on
# a rewritten fixture; these are converted but not checked against TF.js.
UNEXERCISED = {"ExpandDims", "FusedBatchNorm", "FusedBatchNormV2", "Prod"}


def fixture_ops() -> dict[str, set[str]]:
    ops: dict[str, set[str]] = {}
    for name in GRAPH_FIXTURES:
        doc = json.loads((FIXTURES / name / "model.json").read_text())
        for node in doc["modelTopology"]["node"]:
            ops.setdefault(node["op"], set()).add(name)
    return ops


def test_every_converted_op_is_checked_against_tfjs_or_listed() -> None:
    ops = fixture_ops()
    covered = set(tfjs_graph.HANDLERS) - UNEXERCISED - UNFUSED
    missing = sorted(op for op in covered if op not in ops)
    assert not missing, f"ops with a converter but no fixture: {missing}"
    assert not ((UNEXERCISED | UNFUSED) & set(ops)), "listed as unexercised but in a fixture"
    assert set(ops) <= set(tfjs_graph.HANDLERS)
    # The op families the brief names are all among the checked ones.
    for op in ("Conv2D", "DepthwiseConv2dNative", "_FusedConv2D", "FusedDepthwiseConv2dNative",
               "MatMul", "_FusedMatMul", "MaxPool", "AvgPool", "Mean", "ConcatV2", "Pad",
               "MirrorPad", "Reshape", "Squeeze", "Softmax", "AddN", "Sub", "Mul", "RealDiv",
               "Maximum", "Minimum", "Prelu", "LeakyRelu", "Elu", "Selu", "Shape",
               "StridedSlice", "Pack", "PadV2", "Max"):  # fmt: skip
        assert op in ops, op


def test_fused_activations_seen_in_fixtures() -> None:
    """The fused-op lists in the fixtures: BiasAdd with and without an activation."""
    seen: set[tuple[str, ...]] = set()
    for name in GRAPH_FIXTURES:
        doc = json.loads((FIXTURES / name / "model.json").read_text())
        for node in doc["modelTopology"]["node"]:
            if "fused_ops" in node.get("attr", {}):
                n = tfjs_graph._Node(node, 0)
                seen.add(tuple(n.strings("fused_ops")))
    assert {("BiasAdd",), ("BiasAdd", "Relu"), ("BiasAdd", "Relu6")} <= seen


# ------------------------------------------------------------------ refusals


def copy_fixture(name: str, dest: Path) -> Path:
    folder = dest / name
    shutil.copytree(FIXTURES / name, folder)
    return folder


def edit_graph(folder: Path, edit: Any) -> None:
    doc = json.loads((folder / "model.json").read_text())
    edit(doc)
    (folder / "model.json").write_text(json.dumps(doc))


def find_node(doc: dict[str, Any], op: str) -> tuple[int, dict[str, Any]]:
    for i, node in enumerate(doc["modelTopology"]["node"]):
        if node["op"] == op:
            return i, node
    raise AssertionError(op)


def test_unsupported_op_names_op_node_and_position(tmp_path: Path) -> None:
    folder = copy_fixture("graph-inception-like", tmp_path)
    where: dict[str, Any] = {}

    def edit(doc: dict[str, Any]) -> None:
        i, node = find_node(doc, "Tanh")
        node["op"] = "Erf"
        where.update(index=i, name=node["name"])

    edit_graph(folder, edit)
    with pytest.raises(ConvlensError) as e:
        load_model(folder)
    msg = str(e.value)
    assert f"node {where['index']} ({where['name']!r}, Erf)" in msg and "'Erf'" in msg
    assert "\n" not in msg


@pytest.mark.parametrize(
    ("op", "attr", "value", "match"),
    [
        ("Conv2D", "data_format", "TkNIVw==", "data_format NCHW is not supported"),
        ("MirrorPad", "mode", "U1lNTUVUUklD", "MirrorPad mode SYMMETRIC"),
        ("Conv2D", "padding", "U09NRQ==", "padding 'SOME' is not supported"),
        ("AvgPool", "ksize", None, r"ksize \[2, 3\] are not"),
    ],
)
def test_refused_attributes(tmp_path: Path, op: str, attr: str, value: Any, match: str) -> None:
    folder = copy_fixture("graph-inception-like", tmp_path)

    def edit(doc: dict[str, Any]) -> None:
        node = find_node(doc, op)[1]
        node["attr"][attr] = {"s": value} if value else {"list": {"i": ["2", "3"]}}

    edit_graph(folder, edit)
    with pytest.raises(ConvlensError, match=match):
        load_model(folder)


def test_two_outputs_and_missing_inputs_are_refused(tmp_path: Path) -> None:
    folder = copy_fixture("graph-raw-ops", tmp_path)

    def two_outputs(doc: dict[str, Any]) -> None:
        doc["signature"]["outputs"]["extra"] = {"name": "PartitionedCall/Mean:0"}

    edit_graph(folder, two_outputs)
    with pytest.raises(ConvlensError, match="has 2 outputs"):
        load_model(folder)
    shutil.rmtree(folder)
    folder = copy_fixture("graph-raw-ops", tmp_path)

    def dangling(doc: dict[str, Any]) -> None:
        find_node(doc, "Selu")[1]["input"] = ["nowhere:0"]

    edit_graph(folder, dangling)
    with pytest.raises(ConvlensError, match="node 'nowhere' that does not exist"):
        load_model(folder)


def test_cycle_is_refused(tmp_path: Path) -> None:
    folder = copy_fixture("graph-raw-ops", tmp_path)

    def cycle(doc: dict[str, Any]) -> None:
        find_node(doc, "Selu")[1]["input"] = ["PartitionedCall/PadV2"]

    edit_graph(folder, cycle)
    with pytest.raises(ConvlensError, match="cycle"):
        load_model(folder)


def test_live_tfjs_agrees_with_committed_references() -> None:
    if not node_ready():
        pytest.skip(why_no_node())
    x = np.zeros((1, 12, 12, 3), np.float32)
    y = run_tfjs(FIXTURES / "graph-raw-ops", x)
    model = load_model(FIXTURES / "graph-raw-ops")
    np.testing.assert_allclose(model_output(model, x, False), y, atol=TOLERANCE)


# ------------------------------------------------------------------ published models

HUMAN_MODELS = JS / "node_modules" / "@vladmandic" / "human" / "models"
# file → (input H, W, C; whether it ends in a softmax). From @vladmandic/human 3.3.6 (MIT),
# an npm test dependency: its graph models are TF.js converter output, not ours.
PUBLISHED = {
    "emotion": ((64, 64, 1), True),  # 7 facial expressions, no signature in its model.json
    "liveness": ((32, 32, 3), True),
    "antispoof": ((128, 128, 3), False),  # one sigmoid score
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_graph_models_match_tfjs(name: str) -> None:
    if not node_ready():
        pytest.skip(why_no_node())
    source = HUMAN_MODELS / f"{name}.json"
    if not source.is_file():
        pytest.skip(f"{source} is missing (run `npm ci --prefix {JS}`)")
    model = load_model(source)
    hwc, softmax = PUBLISHED[name]
    c, h, w = model.spec.shape
    assert (h, w, c) == hwc
    x = sample_inputs(name, hwc)
    want = run_tfjs(source, x)
    got = model_output(model, x, softmax)
    diff = float(np.abs(got - want).max())
    print(f"@vladmandic/human {name}: max |Δ| = {diff:.2e} vs TF.js in node")
    assert diff < TOLERANCE and want.std() > 1e-4


# ------------------------------------------------------------------ end to end


def test_cli_summary_and_explain_on_a_graph_mobilenet(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from PIL import Image

    from convlens.cli import main

    source = str(FIXTURES / "graph-mobilenet-v2")
    assert main(["summary", source]) == 0
    out = capsys.readouterr().out
    assert "graph-mobilenet-v2: input 3×32×32, 10 classes" in out
    assert "Conv1_1" in out and "predictions_1" in out
    image = tmp_path / "stripes.png"
    pixels = np.zeros((48, 48, 3), np.uint8)
    pixels[:, ::6] = (255, 200, 40)
    Image.fromarray(pixels).save(image)
    out_dir = tmp_path / "out"
    code = main(
        ["explain", str(image), "-m", source, "--method", "grad-cam,saliency",
         "--out", str(out_dir)]
    )  # fmt: skip
    assert code == 0, capsys.readouterr()
    written = sorted(p.name for p in out_dir.iterdir())
    assert written == ["stripes.explain.png", "stripes.grad-cam.png", "stripes.saliency.png"]
    # Grad-CAM found a spatial layer (the receptive fields survive the uneven SAME pads).
    model = load_model(source)
    assert len(model.graph.spatial()) > 100
    assert model.graph["out_relu_1_Relu6"].rf is not None
    # 491 px: MobileNetV2's receptive field as Araujo et al. (Distill 2019) tabulate it.
    assert model.graph["out_relu_1_Relu6"].rf.size == (491, 491)


def test_cli_refuses_a_hostile_graph_model_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from convlens.cli import main

    folder = copy_fixture("graph-raw-ops", tmp_path)
    edit_graph(folder, lambda d: d["weightsManifest"][0]["weights"][0].update(shape=[10**9, 9]))
    assert main(["summary", str(folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert "declares shape (1000000000, 9)" in err and "\n" not in err
    assert "Traceback" not in err


# ------------------------------------------------------------------ ops the optimiser removes

B64 = {"NHWC": "TkhXQw=="}
F32 = {"type": "DT_FLOAT"}


def add_const(doc: dict[str, Any], folder: Path, name: str, value: np.ndarray) -> None:
    """A float32 Const node whose value is appended to the (single) shard and manifest."""
    doc["modelTopology"]["node"].insert(0, {"name": name, "op": "Const", "attr": {"dtype": F32}})
    doc["weightsManifest"][0]["weights"].append(
        {"name": name, "shape": list(value.shape), "dtype": "float32"}
    )
    with (folder / "group1-shard1of1.bin").open("ab") as f:
        f.write(value.astype("<f4").tobytes())


def unfuse_ops(doc: dict[str, Any], folder: Path) -> None:
    """Rewrite graph-raw-ops with ops TF's optimiser would have fused or folded away:
    the first conv's fused BiasAdd as a separate BiasAdd, a standalone FusedBatchNormV3 whose
    variance and scale come through Sqrt and Rsqrt, Cast and StopGradient in the chain,
    Div for RealDiv, and a constant through Neg twice."""
    nodes = {n["name"]: n for n in doc["modelTopology"]["node"]}
    p = "PartitionedCall/"
    fused = nodes[p + "BiasAdd"]
    conv = {"name": p + "Conv2D", "op": "Conv2D", "input": fused["input"][:2], "attr": {
        k: fused["attr"][k] for k in ("data_format", "strides", "padding", "dilations", "T")
    }}  # fmt: skip
    fused.update(op="BiasAdd", input=[p + "Conv2D", fused["input"][2]], attr={"T": F32})
    doc["modelTopology"]["node"].append(conv)
    rng = np.random.default_rng(5)
    scale, offset = rng.uniform(0.5, 1.5, 6), rng.normal(0, 0.2, 6)
    mean, var = rng.normal(0, 0.2, 6), rng.uniform(0.5, 1.5, 6)
    add_const(doc, folder, "bn/scale_inv_sq", 1 / scale**2)
    add_const(doc, folder, "bn/offset", offset)
    add_const(doc, folder, "bn/mean", mean)
    add_const(doc, folder, "bn/var_sq", var**2)
    doc["modelTopology"]["node"] += [
        {"name": "bn/scale", "op": "Rsqrt", "input": ["bn/scale_inv_sq"], "attr": {"T": F32}},
        {"name": "bn/var", "op": "Sqrt", "input": ["bn/var_sq"], "attr": {"T": F32}},
        {"name": "bn", "op": "FusedBatchNormV3",
         "input": [p + "Selu", "bn/scale", "bn/offset", "bn/mean", "bn/var"],
         "attr": {"epsilon": {"f": 0.001}, "data_format": {"s": B64["NHWC"]},
                  "is_training": {"b": False}, "T": F32, "U": F32}},
        {"name": "cast", "op": "Cast", "input": [p + "LeakyRelu"],
         "attr": {"SrcT": F32, "DstT": F32}},
        {"name": "stop", "op": "StopGradient", "input": ["cast"], "attr": {"T": F32}},
        {"name": "neg1", "op": "Neg", "input": [p + "sub/y"], "attr": {"T": F32}},
        {"name": "neg2", "op": "Neg", "input": ["neg1"], "attr": {"T": F32}},
    ]  # fmt: skip
    nodes[p + "PadV2"]["input"][0] = "bn"
    nodes[p + "sub"]["input"] = ["stop", "neg2"]
    nodes[p + "truediv"]["op"] = "Div"


UNFUSED = {"BiasAdd", "FusedBatchNormV3", "Rsqrt", "Sqrt", "Cast", "StopGradient", "Neg", "Div"}


def test_ops_the_optimiser_removes_match_tfjs(tmp_path: Path) -> None:
    if not node_ready():
        pytest.skip(why_no_node())
    folder = copy_fixture("graph-raw-ops", tmp_path)
    doc = json.loads((folder / "model.json").read_text())
    unfuse_ops(doc, folder)
    (folder / "model.json").write_text(json.dumps(doc))
    assert {n["op"] for n in doc["modelTopology"]["node"]} >= UNFUSED
    model = load_model(folder)
    x = sample_inputs("unfused", (12, 12, 3))
    want = run_tfjs(folder, x)
    diff = float(np.abs(model_output(model, x, False) - want).max())
    print(f"unfused graph-raw-ops: max |Δ| = {diff:.2e} vs TF.js in node")
    assert diff < TOLERANCE and want.std() > 1e-3
    # The BiasAdd became the conv's bias; the batch norm a BatchNorm2d.
    modules = dict(model.net.named_modules())
    assert modules["PartitionedCall_Conv2D"].bias is not None
    assert isinstance(modules["bn"], nn.BatchNorm2d)


def test_huge_activation_is_refused_before_it_is_computed(tmp_path: Path) -> None:
    folder = copy_fixture("graph-raw-ops", tmp_path)

    def big_input(doc: dict[str, Any]) -> None:
        dims = find_node(doc, "Placeholder")[1]["attr"]["shape"]["shape"]["dim"]
        dims[1]["size"] = dims[2]["size"] = "8000"

    edit_graph(folder, big_input)
    # the first conv: 6 channels × (8000 + 2 SAME-padding pixels)² before striding
    with pytest.raises(ConvlensError, match=r"output would hold up to 384192024 values"):
        load_model(folder)


def test_any_size_input_needs_and_takes_an_input_size(tmp_path: Path) -> None:
    folder = copy_fixture("graph-raw-ops", tmp_path)

    def any_size(doc: dict[str, Any]) -> None:
        dims = find_node(doc, "Placeholder")[1]["attr"]["shape"]["shape"]["dim"]
        dims[1]["size"] = dims[2]["size"] = "-1"

    edit_graph(folder, any_size)
    with pytest.raises(ConvlensError, match="--input-size"):
        load_model(folder)
    model = load_model(folder, input_spec={"size": 12})
    assert model.spec.shape == (3, 12, 12)
    x, want, _ = reference(FIXTURES / "graph-raw-ops", (12, 12, 3))  # same weights and ops
    assert float(np.abs(model_output(model, x, False) - want).max()) < TOLERANCE
