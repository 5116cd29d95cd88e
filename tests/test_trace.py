"""convlens.trace: tensor encoding, per-layer activations, stats, caps and weights."""

from __future__ import annotations

import base64
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from convlens.errors import ConvlensError, NotFoundError
from convlens.model import Model
from convlens.model.zoo import ResNet
from convlens.trace import (
    TraceOptions,
    build_trace,
    cap_activation,
    decode_tensor,
    encode_tensor,
    kernel_of,
    layer_stats,
    weights_document,
)


def test_encoding_is_little_endian_float32_c_order() -> None:
    t = torch.tensor([[1.5, -2.0, 3.25], [0.0, 1e-3, 7.0]])
    d = encode_tensor(t.t())  # a non-contiguous view must still be sent in C order
    raw = base64.b64decode(d["b64"])
    values = struct.unpack("<6f", raw)
    assert d["shape"] == [3, 2] and d["dtype"] == "float32"
    assert values == pytest.approx([1.5, 0.0, -2.0, 1e-3, 3.25, 7.0])
    np.testing.assert_array_equal(decode_tensor(d), t.t().numpy())


def test_decode_rejects_garbage() -> None:
    with pytest.raises(ConvlensError, match="float32"):
        decode_tensor({"shape": [1], "dtype": "int8", "b64": ""})
    with pytest.raises(ConvlensError, match="not an encoded tensor"):
        decode_tensor({"shape": [3], "dtype": "float32", "b64": "AAAA"})


def _by_hand(model: Model, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Tiny VGG is a plain Sequential: run its modules one by one on the normalized input."""
    h = (x - torch.tensor(model.spec.mean).view(1, -1, 1, 1)) / torch.tensor(model.spec.std).view(
        1, -1, 1, 1
    )
    out = {"input": h}
    with torch.no_grad():
        for name, module in model.net.named_children():
            h = module(h)
            out[name] = h
    return out


def test_trace_activations_equal_a_hand_forward(tiny_vgg_rgb: Model) -> None:
    torch.manual_seed(1)
    x = torch.rand(1, 3, 32, 32)
    doc = build_trace(tiny_vgg_rgb, x, image_id="img", options=TraceOptions(None, None))
    expected = _by_hand(tiny_vgg_rgb, x)
    assert list(doc["activations"]) == tiny_vgg_rgb.graph.names()
    for name, t in expected.items():
        got = decode_tensor(doc["activations"][name])
        assert list(got.shape) == list(tiny_vgg_rgb.graph[name].output_shape)
        np.testing.assert_allclose(got, t[0].numpy(), rtol=1e-5, atol=1e-6)
    logits = expected["output"][0]
    np.testing.assert_allclose(doc["logits"], logits.numpy(), rtol=1e-5, atol=1e-6)
    probs = np.exp(logits.numpy() - logits.numpy().max())
    np.testing.assert_allclose(doc["probabilities"], probs / probs.sum(), rtol=1e-5, atol=1e-7)
    assert doc["predicted"] == int(logits.argmax())
    assert doc["predicted_name"] == tiny_vgg_rgb.classes[doc["predicted"]]
    np.testing.assert_array_equal(decode_tensor(doc["input"]["tensor"]), x[0].numpy())
    assert doc["input"]["processed"].startswith("data:image/png;base64,")
    assert doc["version"] == 1 and doc["image_id"] == "img"
    json.dumps(doc, allow_nan=False)  # plain JSON all the way down


def test_trace_records_functional_layers(functional_net: Model) -> None:
    doc = build_trace(functional_net, torch.rand(1, 3, 16, 16))
    kinds = {lay.name: lay.kind for lay in functional_net.graph}
    assert set(doc["activations"]) == set(kinds)
    assert "add" in kinds.values() and "activation" in kinds.values()


def test_stats_match_numpy() -> None:
    t = torch.randn(4, 5, 6)
    s = layer_stats(t)
    arr = t.numpy().reshape(4, -1)
    assert s["min"] == pytest.approx(arr.min()) and s["max"] == pytest.approx(arr.max())
    np.testing.assert_allclose(s["channel_min"], arr.min(axis=1), rtol=1e-6)
    np.testing.assert_allclose(s["channel_max"], arr.max(axis=1), rtol=1e-6)
    v = layer_stats(torch.tensor([3.0, -1.0]))
    assert (v["min"], v["max"], v["channel_min"], v["channel_max"]) == (-1.0, 3.0, [], [])


def test_non_finite_stats_become_null() -> None:
    s = layer_stats(torch.tensor([[[1.0, float("inf")]], [[float("nan"), 0.0]]]))
    assert s["channel_max"][0] is None
    json.dumps(s, allow_nan=False)


def test_caps_cut_channels_and_average_pool() -> None:
    t = torch.arange(6 * 8 * 8, dtype=torch.float32).view(6, 8, 8)
    out, info = cap_activation(t, max_channels=2, max_size=4)
    # 8x8 -> 4x4 is exact 2x2 block averaging
    blocks = t[:2].numpy().reshape(2, 4, 2, 4, 2).mean(axis=(2, 4))
    np.testing.assert_allclose(out.numpy(), blocks)
    assert info == {"channels": 2, "of_channels": 6, "size": [4, 4], "of_size": [8, 8]}
    same, none = cap_activation(t, max_channels=6, max_size=8)
    assert same is t and none is None
    vec, vinfo = cap_activation(torch.rand(100), max_channels=2, max_size=2)
    assert vec.shape == (100,) and vinfo is None


def test_capped_trace_keeps_true_stats(tiny_vgg_rgb: Model) -> None:
    x = torch.rand(1, 3, 32, 32)
    full = build_trace(tiny_vgg_rgb, x, options=TraceOptions(None, None))
    capped = build_trace(tiny_vgg_rgb, x, options=TraceOptions(max_channels=3, max_size=10))
    assert capped["stats"] == full["stats"]
    assert decode_tensor(capped["activations"]["conv_1_1"]).shape == (3, 10, 10)
    assert capped["caps"]["conv_1_1"]["of_size"] == [30, 30]
    assert "output" not in capped["caps"]
    assert full["caps"] == {}


def test_layer_subset_in_graph_order_and_unknown_layer(tiny_vgg_rgb: Model) -> None:
    x = torch.rand(1, 3, 32, 32)
    doc = build_trace(tiny_vgg_rgb, x, options=TraceOptions(layers=["output", "conv_1_1"]))
    assert list(doc["activations"]) == ["conv_1_1", "output"]
    with pytest.raises(NotFoundError, match="conv_1_3"):
        build_trace(tiny_vgg_rgb, x, options=TraceOptions(layers=["conv_1_3"]))
    with pytest.raises(ConvlensError, match="one image"):
        build_trace(tiny_vgg_rgb, torch.rand(2, 3, 32, 32))
    with pytest.raises(ConvlensError, match="max_channels"):
        TraceOptions(max_channels=0)


def test_weights_and_kernels(small_resnet: Model) -> None:
    net = small_resnet.net
    assert isinstance(net, ResNet)
    conv = net.get_submodule("layer1.0.conv1")
    assert isinstance(conv, torch.nn.Conv2d)
    doc = weights_document(small_resnet, "layer1.0.conv1")
    np.testing.assert_array_equal(decode_tensor(doc["weight"]), conv.weight.detach().numpy())
    assert doc["bias"] is None  # ResNet convs have no bias
    fc = weights_document(small_resnet, "fc")
    np.testing.assert_array_equal(decode_tensor(fc["bias"]), net.fc.bias.detach().numpy())
    with pytest.raises(ConvlensError, match="no weights"):
        weights_document(small_resnet, "maxpool")
    k = kernel_of(small_resnet, "layer1.0.conv1", 3)
    assert k is not None
    np.testing.assert_array_equal(decode_tensor(k), conv.weight[3].detach().numpy())
    assert kernel_of(small_resnet, "fc", 0) is None
    assert kernel_of(small_resnet, "layer1.0.conv1", 10_000) is None


def test_trace_of_a_branching_net_pools_large_maps(small_resnet: Model) -> None:
    x = torch.rand(1, 3, 64, 64)
    doc = build_trace(small_resnet, x, options=TraceOptions(max_channels=4, max_size=16))
    conv1 = decode_tensor(doc["activations"]["conv1"])
    assert conv1.shape == (4, 16, 16)
    with torch.no_grad():
        ref = small_resnet.net.get_submodule("conv1")(small_resnet.normalize(x))[0, :4]
    np.testing.assert_allclose(conv1, F.adaptive_avg_pool2d(ref, 16).numpy(), atol=1e-5)


def test_default_caps_fit_the_budget(small_resnet: Model) -> None:
    from convlens.trace import CAP_LADDER, default_caps, trace_numbers

    full = trace_numbers(small_resnet, None, None)
    assert default_caps(small_resnet, budget=full) == CAP_LADDER[0]  # nothing to cut
    budget = trace_numbers(small_resnet, 16, 24)
    channels, size = default_caps(small_resnet, budget=budget)
    rung = CAP_LADDER.index((channels, size))
    assert 0 < rung <= CAP_LADDER.index((16, 24))
    assert trace_numbers(small_resnet, channels, size) <= budget
    assert trace_numbers(small_resnet, *CAP_LADDER[rung - 1]) > budget  # the richest that fits
    doc = build_trace(small_resnet, torch.rand(1, 3, 64, 64), options=TraceOptions(channels, size))
    sent = sum(decode_tensor(t).size for t in doc["activations"].values())
    assert sent == trace_numbers(small_resnet, channels, size)


class Branchy(torch.nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it, so hooks record the layers."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 3, 3)
        self.relu = torch.nn.ReLU()
        self.fc = torch.nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu(self.conv(x))
        if h.sum() > 0:
            h = h * 2
        return self.fc(h.mean(dim=(2, 3)))


def test_trace_of_an_untraceable_model() -> None:
    from convlens.io.spec import InputSpec

    torch.manual_seed(0)
    model = Model(Branchy().eval(), InputSpec(1, 8, 8), name="branchy")
    assert model.graph.traced is None
    x = torch.rand(1, 1, 8, 8)
    doc = build_trace(model, x)
    assert list(doc["activations"]) == ["input", "conv", "relu", "fc"]
    with torch.no_grad():
        net = model.net
        assert isinstance(net, Branchy)
        relu = net.relu(net.conv(x))[0]
    np.testing.assert_allclose(decode_tensor(doc["activations"]["relu"]), relu.numpy(), atol=1e-6)
    np.testing.assert_allclose(doc["logits"], model(x)[0].detach().numpy(), atol=1e-6)


# ----------------------------------------------------------------------------- the documents


def test_documents_build_without_a_web_server() -> None:
    """convlens.trace works where FastAPI is missing (a notebook, an HTML export)."""
    code = (
        "import sys; sys.modules['fastapi'] = sys.modules['starlette'] = None\n"
        "import torch\n"
        "from convlens.model.zoo import build\n"
        "from convlens import trace\n"
        "from convlens.trace import schema\n"
        "m = build('tiny-vgg:in_channels=3,input_size=16', seed=0)\n"
        "x = torch.rand(1, 3, 16, 16)\n"
        "schema.ModelDoc.model_validate(trace.model_document(m))\n"
        "schema.Trace.model_validate(trace.trace_document(m, x))\n"
        "schema.Explanation.model_validate(trace.explanation_document(m, x, 'saliency', 1))\n"
        "schema.Unit.model_validate(trace.unit_document(m, 'conv_1_1', 0))\n"
        "schema.Weights.model_validate(trace.weights_document(m, 'conv_1_1'))\n"
        "assert 'convlens.web' not in sys.modules\n"
    )
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr[-2000:]


def test_explanation_document_equals_autograd(tiny_vgg_rgb: Model) -> None:
    from convlens.trace import explanation_document

    x = torch.rand(1, 3, tiny_vgg_rgb.spec.height, tiny_vgg_rgb.spec.width)
    doc = explanation_document(tiny_vgg_rgb, x, "saliency", 2)
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(tiny_vgg_rgb(xg)[0, 2], xg)
    np.testing.assert_allclose(
        decode_tensor(doc["map"]), grad[0].abs().amax(0).numpy(), rtol=1e-4, atol=1e-7
    )
    assert (doc["target"], doc["target_name"]) == (2, tiny_vgg_rgb.classes[2])


def test_unit_document_checks_and_sends_the_kernel(small_resnet: Model) -> None:
    from convlens.trace import unit_document

    conv = next(lay for lay in small_resnet.graph if lay.kind == "conv")
    doc = unit_document(small_resnet, conv.name, 1)
    assert conv.module is not None
    module = small_resnet.net.get_submodule(conv.module)
    assert isinstance(module, torch.nn.Conv2d)
    weight = module.weight[1]
    np.testing.assert_array_equal(decode_tensor(doc["kernel"]), weight.detach().numpy())
    with pytest.raises(ConvlensError, match="out of range"):
        unit_document(small_resnet, conv.name, 10_000)
    with pytest.raises(NotFoundError):
        unit_document(small_resnet, "no-such-layer", 0)


def test_api_docs_tables_are_generated_from_the_schemas() -> None:
    from convlens.trace import schema, schema_docs

    text = schema_docs.DOC.read_text(encoding="utf-8")
    assert schema_docs.render(text) == text, "run: python -m convlens.trace.schema_docs"
    for doc in schema.DOCUMENTS:  # every document has its generated block
        assert f"<!-- schema: {doc.__name__} -->" in text


# ----------------------------------------------------------------------------- quantized maps


def test_quantized_trace_is_within_half_a_step_and_a_quarter_of_the_size(
    small_resnet: Model,
) -> None:
    from convlens.trace import trace_document

    x = torch.rand(1, *small_resnet.spec.shape)
    exact = trace_document(small_resnet, x, options=TraceOptions(None, None))
    small = trace_document(small_resnet, x, options=TraceOptions(None, None, encoding="uint8"))
    for name, t in exact["activations"].items():
        q = small["activations"][name]
        values = decode_tensor(t)
        if values.ndim != 3:  # vectors (the logits among them) stay exact
            assert q == t
            continue
        assert q["dtype"] == "uint8" and q["shape"] == t["shape"]
        per_channel = values.reshape(values.shape[0], -1)
        np.testing.assert_allclose(q["offset"], per_channel.min(1), rtol=1e-6)
        step = (per_channel.max(1) - per_channel.min(1)) / 255
        error = np.abs(decode_tensor(q) - values).reshape(values.shape[0], -1).max(1)
        assert (error <= step / 2 + 1e-6 * (1 + np.abs(per_channel).max(1))).all(), name
        assert abs(len(q["b64"]) / len(t["b64"]) - 0.25) < 0.01  # one byte a number, not four


def test_quantized_non_finite_and_constant_channels() -> None:
    from convlens.trace import encode_quantized

    t = torch.tensor([[[1.0, float("nan")], [float("inf"), 3.0]], [[2.0, 2.0], [2.0, 2.0]]])
    q = encode_quantized(t)
    out = decode_tensor(q)
    assert out[0, 0, 0] == 1.0 and out[0, 1, 1] == pytest.approx(3.0)
    assert out[0, 0, 1] == 1.0 and out[0, 1, 0] == 1.0  # not representable: the minimum
    assert q["scale"][1] == 0.0 and (out[1] == 2.0).all()


def test_channel_document_is_the_exact_layer_output(small_resnet: Model) -> None:
    from convlens.trace import channel_document

    x = torch.rand(1, *small_resnet.spec.shape)
    conv = next(lay for lay in small_resnet.graph if lay.kind == "conv")
    doc = channel_document(small_resnet, x, conv.name, 2)
    assert conv.module is not None
    with torch.no_grad():  # the first conv by hand, on the normalized input
        expected = small_resnet.net.get_submodule(conv.module)(small_resnet.normalize(x))[0, 2]
    np.testing.assert_allclose(decode_tensor(doc["map"]), expected.numpy(), rtol=1e-5, atol=1e-6)
    assert doc["map"]["dtype"] == "float32"
    with pytest.raises(ConvlensError, match="out of range"):
        channel_document(small_resnet, x, conv.name, 10_000)
    with pytest.raises(ConvlensError, match="no maps"):
        channel_document(small_resnet, x, small_resnet.graph.names()[-1], 0)


def test_the_front_end_decodes_quantized_maps_like_python(tmp_path: Path) -> None:
    """api.js's decodeTensor (in node) against decode_tensor, on the server's own encoding."""
    import shutil
    import subprocess

    from convlens.trace import encode_quantized

    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    t = torch.randn(3, 5, 7) * torch.tensor([1.0, 100.0, 0.01])[:, None, None]
    q = encode_quantized(t)
    api = Path(__file__).resolve().parents[1] / "src/convlens/web/static/js/api.js"
    script = tmp_path / "decode.mjs"
    script.write_text(
        f"import {{ decodeTensor }} from {json.dumps(api.as_uri())};\n"
        f"const t = decodeTensor({json.dumps(q)});\n"
        "console.log(JSON.stringify(Array.from(t.data)));\n"
    )
    run = subprocess.run([node, str(script)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    np.testing.assert_allclose(
        np.asarray(json.loads(run.stdout), dtype=np.float32).reshape(3, 5, 7),
        decode_tensor(q),
        rtol=1e-6,
        atol=1e-6,
    )


def test_quantized_input_of_an_8_bit_image_is_exact(tiny_vgg_rgb: Model) -> None:
    from convlens.trace import trace_document

    q = torch.randint(0, 256, (1, 3, tiny_vgg_rgb.spec.height, tiny_vgg_rgb.spec.width))
    x = q.float() / 255
    doc = trace_document(tiny_vgg_rgb, x, options=TraceOptions(encoding="uint8"))
    assert doc["input"]["tensor"]["dtype"] == "uint8"
    np.testing.assert_allclose(decode_tensor(doc["input"]["tensor"]), x[0].numpy(), atol=1e-7)
