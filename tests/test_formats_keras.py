"""Keras .h5 and .keras files written with h5py (no TensorFlow) against a numpy reference."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from convlens.errors import ConvlensError
from convlens.model import load_model
from convlens.model.formats.keras import snake_case
from convlens.model.formats.keras_layers import same_padding
from convlens.model.load import detect_format

h5py = pytest.importorskip("h5py")

RNG = np.random.default_rng(0)
# 14 → 7 → 4: the stride-2 conv and the pool both pad "same" asymmetrically (TensorFlow rule).
H = W = 14


def layer(kind: str, name: str, **cfg: Any) -> dict[str, Any]:
    return {"class_name": kind, "config": {"name": name, **cfg}}


def f32(*shape: int) -> np.ndarray:
    return RNG.normal(0, 0.5, shape).astype(np.float32)


# A CNN with same padding, strides, batch norm, a separable conv and global average pooling.
LAYERS = [
    layer("Rescaling", "rescale", scale=1 / 255, offset=0.0),
    layer("Conv2D", "conv1", filters=6, kernel_size=[3, 3], strides=[1, 1], padding="same",
          activation="relu", use_bias=True, dilation_rate=[1, 1], data_format="channels_last"),
    layer("BatchNormalization", "bn1", axis=-1, epsilon=1e-3, center=True, scale=True),
    layer("Conv2D", "conv2", filters=8, kernel_size=[3, 3], strides=[2, 2], padding="same",
          activation="linear", use_bias=False),
    layer("LeakyReLU", "leaky", alpha=0.2),
    layer("MaxPooling2D", "pool", pool_size=[2, 2], strides=[2, 2], padding="same"),
    layer("SeparableConv2D", "sep", filters=7, kernel_size=[3, 3], strides=[1, 1], padding="same",
          depth_multiplier=2, activation="relu", use_bias=True),
    layer("GlobalAveragePooling2D", "gap"),
    layer("Dropout", "drop", rate=0.5),
    layer("Dense", "logits", units=5, activation="softmax", use_bias=True),
]  # fmt: skip
WEIGHTS: dict[str, list[tuple[str, np.ndarray]]] = {
    "conv1": [("kernel", f32(3, 3, 3, 6)), ("bias", f32(6))],
    "bn1": [
        ("gamma", f32(6) + 1),
        ("beta", f32(6)),
        ("moving_mean", f32(6)),
        ("moving_variance", np.abs(f32(6)) + 0.5),
    ],
    "conv2": [("kernel", f32(3, 3, 6, 8))],
    "sep": [
        ("depthwise_kernel", f32(3, 3, 8, 2)),
        ("pointwise_kernel", f32(1, 1, 16, 7)),
        ("bias", f32(7)),
    ],
    "logits": [("kernel", f32(7, 5)), ("bias", f32(5))],
}

# A second one with Flatten feeding Dense, to check the channels-last flatten order.
FLAT_LAYERS = [
    layer("Conv2D", "conv", filters=4, kernel_size=[3, 3], strides=[2, 2], padding="valid",
          activation="tanh"),
    layer("AveragePooling2D", "avg", pool_size=[2, 2], strides=[2, 2], padding="same"),
    layer("Flatten", "flatten"),
    layer("Dense", "fc", units=3, activation="linear"),
]  # fmt: skip
FLAT_WEIGHTS = {
    "conv": [("kernel", f32(3, 3, 3, 4)), ("bias", f32(4))],
    "fc": [("kernel", f32(4 * 4 * 4, 3)), ("bias", f32(3))],
}


# ------------------------------------------------------------------ numpy reference


def np_pad_same(x: np.ndarray, k: int, s: int, value: float) -> np.ndarray:
    (t, b), (left, r) = same_padding(x.shape[1], k, s), same_padding(x.shape[2], k, s)
    return np.pad(x, ((0, 0), (t, b), (left, r), (0, 0)), constant_values=value)


def np_windows(x: np.ndarray, k: int, s: int) -> np.ndarray:
    """(N, H, W, C) → (N, OH, OW, k, k, C) sliding windows."""
    n, h, w, c = x.shape
    oh, ow = (h - k) // s + 1, (w - k) // s + 1
    out = np.empty((n, oh, ow, k, k, c), dtype=x.dtype)
    for i in range(oh):
        for j in range(ow):
            out[:, i, j] = x[:, i * s : i * s + k, j * s : j * s + k]
    return out


def np_conv(x: np.ndarray, k: np.ndarray, s: int, padding: str) -> np.ndarray:
    if padding == "same":
        x = np_pad_same(x, k.shape[0], s, 0.0)
    return np.einsum("nhwijc,ijcf->nhwf", np_windows(x, k.shape[0], s), k)


def np_depthwise(x: np.ndarray, k: np.ndarray) -> np.ndarray:
    x = np_pad_same(x, k.shape[0], 1, 0.0)
    out = np.einsum("nhwijc,ijcm->nhwcm", np_windows(x, k.shape[0], 1), k)
    return out.reshape(*out.shape[:3], -1)  # channel c·mult + m


def np_reference(x255: np.ndarray) -> np.ndarray:
    """The first model in Keras semantics: NHWC pixels in [0, 255] → probabilities."""
    w = {k: dict(v) for k, v in WEIGHTS.items()}
    h = x255.astype(np.float64) / 255
    h = np.maximum(np_conv(h, w["conv1"]["kernel"], 1, "same") + w["conv1"]["bias"], 0)
    bn = w["bn1"]
    h = (h - bn["moving_mean"]) / np.sqrt(bn["moving_variance"] + 1e-3) * bn["gamma"] + bn["beta"]
    h = np_conv(h, w["conv2"]["kernel"], 2, "same")
    h = np.where(h > 0, h, 0.2 * h)
    h = np_windows(np_pad_same(h, 2, 2, -np.inf), 2, 2).max(axis=(3, 4))
    h = np_depthwise(h, w["sep"]["depthwise_kernel"])
    h = np.maximum(h @ w["sep"]["pointwise_kernel"][0, 0] + w["sep"]["bias"], 0)
    h = h.mean(axis=(1, 2))
    z = h @ w["logits"]["kernel"] + w["logits"]["bias"]
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def np_flat_reference(x: np.ndarray) -> np.ndarray:
    w = {k: dict(v) for k, v in FLAT_WEIGHTS.items()}
    h = np.tanh(np_conv(x.astype(np.float64), w["conv"]["kernel"], 2, "valid") + w["conv"]["bias"])
    # Average over real pixels only (TensorFlow's same pooling ignores the padding).
    ones = np.ones_like(h[..., :1])
    sums = np_windows(np_pad_same(h, 2, 2, 0.0), 2, 2).sum(axis=(3, 4))
    counts = np_windows(np_pad_same(ones, 2, 2, 0.0), 2, 2).sum(axis=(3, 4))
    h = sums / counts
    return h.reshape(len(h), -1) @ w["fc"]["kernel"] + w["fc"]["bias"]  # (h, w, c) order


# ------------------------------------------------------------------ writing Keras files


def config(layers: list[dict[str, Any]], shape: tuple[int, int, int]) -> dict[str, Any]:
    first = {**layers[0], "config": {**layers[0]["config"], "batch_input_shape": [None, *shape]}}
    return {
        "class_name": "Sequential",
        "config": {"name": "sequential", "layers": [first, *layers[1:]]},
    }


def write_h5(
    path: Path, cfg: dict[str, Any], weights: dict[str, list[tuple[str, np.ndarray]]]
) -> None:
    """The legacy layout of ``model.save("m.h5")`` in Keras 2."""
    with h5py.File(path, "w") as f:
        f.attrs["model_config"] = json.dumps(cfg)
        f.attrs["keras_version"] = "2.15.0"
        f.attrs["backend"] = "tensorflow"
        g = f.create_group("model_weights")
        names = [lay["config"]["name"] for lay in cfg["config"]["layers"]]
        g.attrs["layer_names"] = [n.encode() for n in names]
        for name in names:
            lg = g.create_group(name)
            pairs = weights.get(name, [])
            lg.attrs["weight_names"] = [f"{name}/{short}:0".encode() for short, _ in pairs]
            for short, arr in pairs:
                lg.create_dataset(f"{name}/{short}:0", data=arr)


def write_keras(
    path: Path, cfg: dict[str, Any], weights: dict[str, list[tuple[str, np.ndarray]]]
) -> None:
    """The Keras 3 ``.keras`` zip: config.json + model.weights.h5, where each layer's
    variables sit at ``layers/<snake_case(class)>[_<n>]/vars/<i>`` as Keras 3 saves them."""
    layers = cfg["config"]["layers"]
    shape = layers[0]["config"].pop("batch_input_shape")
    k3 = {
        "module": "keras",
        "class_name": "Sequential",
        "config": {
            "name": "sequential",
            "layers": [
                {"module": "keras.layers", "class_name": "InputLayer",
                 "config": {"batch_shape": shape, "dtype": "float32", "name": "input_layer"}},
                *({"module": "keras.layers", "registered_name": None, **lay} for lay in layers),
            ],
        },
    }  # fmt: skip
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        top = f.create_group("layers")
        counts: dict[str, int] = {}
        for lay in layers:
            base = snake_case(lay["class_name"])
            n = counts[base] = counts.get(base, -1) + 1
            pairs = weights.get(lay["config"]["name"], [])
            vars_group = top.create_group(base if n == 0 else f"{base}_{n}").create_group("vars")
            for i, (_, arr) in enumerate(pairs):
                vars_group.create_dataset(str(i), data=arr)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("metadata.json", json.dumps({"keras_version": "3.3.3"}))
        z.writestr("config.json", json.dumps(k3))
        z.writestr("model.weights.h5", buf.getvalue())


# ------------------------------------------------------------------ tests


@pytest.mark.parametrize("kind", ["h5", "keras"])
def test_cnn_matches_numpy_reference(tmp_path: Path, kind: str) -> None:
    path = tmp_path / f"cnn.{kind}"
    (write_h5 if kind == "h5" else write_keras)(path, config(LAYERS, (H, W, 3)), WEIGHTS)
    assert detect_format(str(path)) == ("keras-h5" if kind == "h5" else "keras")
    model = load_model(path)
    # The leading Rescaling(1/255) became the input spec: the model takes [0, 1] pixels.
    assert model.spec.shape == (3, H, W) and model.spec.mean == (0.0,) * 3
    assert model.spec.std == pytest.approx((1.0,) * 3)
    assert model.outputs == "logits"  # the final softmax was split off
    names = list(model.net._modules)
    assert names[:4] == ["conv1", "conv1_relu", "bn1", "conv2_pad"]
    assert "logits" in names and "logits_softmax" not in names
    x255 = RNG.integers(0, 256, (4, H, W, 3)).astype(np.float32)
    x = torch.from_numpy(x255 / 255).permute(0, 3, 1, 2).float()
    got = model.probabilities(x).double().numpy()
    np.testing.assert_allclose(got, np_reference(x255), atol=1e-5, rtol=0)


def test_flatten_keeps_keras_order(tmp_path: Path) -> None:
    path = tmp_path / "flat.h5"
    write_h5(path, config(FLAT_LAYERS, (16, 16, 3)), FLAT_WEIGHTS)
    model = load_model(path)
    x = RNG.random((3, 16, 16, 3)).astype(np.float32)
    with torch.no_grad():
        got = model(torch.from_numpy(x).permute(0, 3, 1, 2)).double().numpy()
    np.testing.assert_allclose(got, np_flat_reference(x), atol=1e-5, rtol=0)


def test_shape_mismatch_names_layer_and_shapes(tmp_path: Path) -> None:
    bad = {**WEIGHTS, "conv2": [("kernel", f32(3, 3, 5, 8))]}
    path = tmp_path / "bad.h5"
    write_h5(path, config(LAYERS, (H, W, 3)), bad)
    with pytest.raises(ConvlensError, match=r"'conv2'.*\(3, 3, 5, 8\).*\(3, 3, 6, 8\)"):
        load_model(path)


def test_unsupported_layer_names_type_and_position(tmp_path: Path) -> None:
    layers = [*LAYERS[:3], layer("Lambda", "custom", function="evil"), *LAYERS[3:]]
    path = tmp_path / "lambda.h5"
    write_h5(path, config(layers, (H, W, 3)), WEIGHTS)
    with pytest.raises(ConvlensError, match=r"layer 3 \('custom', Lambda\).*not supported"):
        load_model(path)


def test_stride_one_same_pooling(tmp_path: Path) -> None:
    """Stride 1, even pool: TensorFlow pads one pixel after; max pads with -inf."""
    layers = [layer("MaxPooling2D", "pool", pool_size=[2, 2], strides=[1, 1], padding="same"),
              layer("Flatten", "flatten")]  # fmt: skip
    path = tmp_path / "pool.h5"
    write_h5(path, config(layers, (5, 5, 1)), {})
    model = load_model(path)
    x = RNG.normal(size=(2, 5, 5, 1)).astype(np.float32)
    want = np_windows(np_pad_same(x, 2, 1, -np.inf), 2, 1).max(axis=(3, 4)).reshape(2, -1)
    with torch.no_grad():
        got = model.net(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_weights_only_h5_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "w.h5"
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [b"conv"]
    with pytest.raises(ConvlensError, match="weights only"):
        load_model(path)


def _functional(layers: list[dict[str, Any]], keras3: bool) -> dict[str, Any]:
    """A chain written as a Functional model, in Keras 2 or Keras 3 inbound-node syntax."""
    first = {"name": "img", "batch_input_shape": [None, 16, 16, 3]}
    out = [{"class_name": "InputLayer", "name": "img", "config": first, "inbound_nodes": []}]
    prev = "img"
    for lay in layers:
        name = lay["config"]["name"]
        if keras3:
            hist = {"class_name": "__keras_tensor__", "config": {"keras_history": [prev, 0, 0]}}
            inbound: list[Any] = [{"args": [hist], "kwargs": {}}]
        else:
            inbound = [[[prev, 0, 0, {}]]]
        out.append({**lay, "name": name, "inbound_nodes": inbound})
        prev = name
    return {"class_name": "Functional", "config": {"name": "func", "layers": out,
            "input_layers": [["img", 0, 0]], "output_layers": [[prev, 0, 0]]}}  # fmt: skip


@pytest.mark.parametrize("keras3", [False, True])
def test_chain_functional_model(tmp_path: Path, keras3: bool) -> None:
    path = tmp_path / "func.h5"
    write_h5(path, _functional(FLAT_LAYERS, keras3), FLAT_WEIGHTS)
    model = load_model(path)
    x = RNG.random((2, 16, 16, 3)).astype(np.float32)
    with torch.no_grad():
        got = model(torch.from_numpy(x).permute(0, 3, 1, 2)).double().numpy()
    np.testing.assert_allclose(got, np_flat_reference(x), atol=1e-5, rtol=0)
    assert [n for n, _ in model.net.named_children()] == [
        "conv",
        "conv_tanh",
        "avg",
        "flatten",
        "fc",
    ]


def test_single_input_layer_with_two_inputs_is_refused(tmp_path: Path) -> None:
    cfg = _functional(FLAT_LAYERS, keras3=False)
    cfg["config"]["layers"][3]["inbound_nodes"] = [[["conv", 0, 0, {}], ["avg", 0, 0, {}]]]
    path = tmp_path / "branch.h5"
    write_h5(path, cfg, FLAT_WEIGHTS)
    with pytest.raises(ConvlensError, match=r"layer 3 \('flatten', Flatten\).*one input, got 2"):
        load_model(path)


def test_format_flag_overrides_detection(tmp_path: Path) -> None:
    path = tmp_path / "model.bin"  # a suffix that says nothing (or the wrong thing)
    write_h5(path, config(FLAT_LAYERS, (16, 16, 3)), FLAT_WEIGHTS)
    assert load_model(path, format="keras-h5").spec.shape == (3, 16, 16)
    with pytest.raises(ConvlensError, match=r"unknown model format 'kers'.*keras"):
        load_model(path, format="kers")


# A third model: leading Normalization, dilated depthwise conv, ReLU6, global max pooling,
# Dense → BatchNormalization on a vector → Activation("sigmoid").
MEAN, VAR = np.array([100.0, 120.0, 90.0]), np.array([900.0, 1600.0, 2500.0])
MORE_LAYERS = [
    layer("Normalization", "norm", axis=-1, mean=MEAN.tolist(), variance=VAR.tolist()),
    layer("DepthwiseConv2D", "dw", kernel_size=[3, 3], strides=[1, 1], padding="same",
          depth_multiplier=2, dilation_rate=[2, 2], activation="linear", use_bias=True),
    layer("ReLU", "relu6", max_value=6.0),
    layer("GlobalMaxPooling2D", "gmp"),
    layer("Dense", "fc", units=4, activation="linear"),
    layer("BatchNormalization", "bn", epsilon=1e-3),
    layer("Activation", "act", activation="sigmoid"),
]  # fmt: skip
MORE_WEIGHTS = {
    "dw": [("depthwise_kernel", f32(3, 3, 3, 2)), ("bias", f32(6))],
    "fc": [("kernel", f32(6, 4)), ("bias", f32(4))],
    "bn": [
        ("gamma", f32(4) + 1),
        ("beta", f32(4)),
        ("moving_mean", f32(4)),
        ("moving_variance", np.abs(f32(4)) + 0.5),
    ],
}


def np_more_reference(x255: np.ndarray) -> np.ndarray:
    w = {k: dict(v) for k, v in MORE_WEIGHTS.items()}
    h = (x255.astype(np.float64) - MEAN) / np.sqrt(VAR)
    k, d = w["dw"]["depthwise_kernel"], 2
    span = (3 - 1) * d + 1  # a dilated 3×3 kernel covers 5×5
    hp = np_pad_same(h, span, 1, 0.0)
    n, hh, ww, c = h.shape
    out = np.zeros((n, hh, ww, c, 2))
    for i in range(3):
        for j in range(3):
            patch = hp[:, i * d : i * d + hh, j * d : j * d + ww, :]  # (n, hh, ww, c)
            out += patch[..., None] * k[i, j]  # (c, mult)
    h = np.clip(out.reshape(n, hh, ww, c * 2) + w["dw"]["bias"], 0, 6)
    h = h.max(axis=(1, 2)) @ w["fc"]["kernel"] + w["fc"]["bias"]
    bn = w["bn"]
    h = (h - bn["moving_mean"]) / np.sqrt(bn["moving_variance"] + 1e-3) * bn["gamma"] + bn["beta"]
    return 1 / (1 + np.exp(-h))


def test_more_layers_match_numpy(tmp_path: Path) -> None:
    path = tmp_path / "more.keras"
    write_keras(path, config(MORE_LAYERS, (12, 12, 3)), MORE_WEIGHTS)
    model = load_model(path, classes=["a", "b", "c", "d"])
    # Normalization folded into the spec: net input = (255·x − mean) / sqrt(var).
    np.testing.assert_allclose(model.spec.mean, MEAN / 255, rtol=1e-6)
    np.testing.assert_allclose(model.spec.std, np.sqrt(VAR) / 255, rtol=1e-6)
    x255 = RNG.integers(0, 256, (3, 12, 12, 3)).astype(np.float32)
    with torch.no_grad():
        got = model(torch.from_numpy(x255 / 255).permute(0, 3, 1, 2).float()).double().numpy()
    np.testing.assert_allclose(got, np_more_reference(x255), atol=1e-5, rtol=0)
    assert isinstance(model.layer("relu6"), torch.nn.ReLU6)


@pytest.mark.parametrize("padding", [1, [1, 2], [[0, 1], [2, 0]]])
def test_zero_padding(tmp_path: Path, padding: Any) -> None:
    layers = [layer("ZeroPadding2D", "pad", padding=padding), layer("Flatten", "flatten")]
    path = tmp_path / "pad.h5"
    write_h5(path, config(layers, (3, 4, 1)), {})
    x = RNG.normal(size=(2, 3, 4, 1)).astype(np.float32)
    rows, cols = (
        [p, p] if isinstance(p, int) else p
        for p in ([padding] * 2 if isinstance(padding, int) else padding)
    )
    want = np.pad(x, ((0, 0), tuple(rows), tuple(cols), (0, 0))).reshape(2, -1)
    with torch.no_grad():
        got = load_model(path).net(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    np.testing.assert_allclose(got, want)  # one channel: (h, w, c) and (c, h, w) orders agree
