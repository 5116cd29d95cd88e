"""Functional Keras models of any shape, written by Keras 3 itself, against Keras's own output.

Each model is built with Keras 3 (torch backend), given random non-trivial weights, saved as
``.keras`` and legacy ``.h5`` by Keras, loaded by convlens, and its output compared with the
Keras model called on the same input.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from convlens.errors import ConvlensError
from convlens.model import load_model
from convlens.model.formats.keras import read_h5, read_keras_zip
from convlens.model.formats.keras_layers import convert

pytest.importorskip("h5py")
os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")
if keras.backend.backend() != "torch":  # pragma: no cover - depends on the environment
    pytest.skip("these tests build Keras models with the torch backend", allow_module_level=True)
layers = keras.layers

TOL = 1e-4


def randomize(model: Any, seed: int = 1) -> None:
    """Give every variable random values, so that outputs are far from zero and layouts show.

    Batch-norm statistics and scales stay positive; kernels keep Keras's own initialisation.
    """
    rng = np.random.default_rng(seed)
    for var in model.weights:
        short = var.path.rsplit("/", 1)[-1]
        shape = tuple(var.shape)
        if short in ("gamma", "moving_variance", "variance"):
            var.assign(rng.uniform(0.5, 1.5, shape).astype("float32"))
        elif short in ("beta", "moving_mean", "bias", "mean", "alpha"):
            var.assign(rng.normal(0, 0.3, shape).astype("float32"))


def keras_out(model: Any, x: np.ndarray) -> np.ndarray:
    out = model(x, training=False)
    return np.asarray(out.detach().cpu().numpy() if hasattr(out, "detach") else out)


def check(
    tmp_path: Path, model: Any, x: np.ndarray, kinds: tuple[str, ...] = ("keras", "h5"),
    pixels: bool = False,
) -> list[Any]:  # fmt: skip
    """Save ``model`` in each format, read and convert it, and compare with Keras's output.

    Returns the converted networks (``Converted``). ``pixels``: the model rescales its own
    input, so the converted network takes ``(x / 255 − mean) / std``.
    """
    want = keras_out(model, x)
    converted = []
    for kind in kinds:
        path = tmp_path / f"{model.name}.{kind}"
        model.save(path)
        cfg, weights, k3 = (read_keras_zip if kind == "keras" else read_h5)(str(path))
        conv = convert(cfg, weights, keras3=k3)
        xt = torch.from_numpy(x).permute(0, 3, 1, 2)
        if pixels:
            mean = torch.tensor(conv.mean).view(-1, 1, 1)
            xt = (xt / 255 - mean) / torch.tensor(conv.std).view(-1, 1, 1)
        with torch.no_grad():
            got = conv.net(xt)
        if conv.dropped_softmax:
            got = torch.softmax(got, 1)
        out = got.numpy()
        if out.ndim == 4:
            out = out.transpose(0, 2, 3, 1)
        assert out.shape == want.shape, kind
        np.testing.assert_allclose(out, want, atol=TOL, rtol=0, err_msg=kind)
        converted.append(conv)
    return converted


def inputs(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 1, (2, *shape)).astype("float32")


# ------------------------------------------------------------------ branching models


def test_merges_axes_and_shape_layers(tmp_path: Path) -> None:
    """Every merge layer, concatenation on H, W and C, squeeze-excite, pads, crops, reshapes."""
    inp = keras.Input((9, 7, 3))
    x = layers.Conv2D(8, 3, padding="same", activation="swish", name="stem")(inp)
    a = layers.DepthwiseConv2D(3, depth_multiplier=2, padding="same", strides=2)(x)
    a = layers.ReLU(max_value=6.0)(a)
    b = layers.SeparableConv2D(16, 3, strides=2, padding="same", activation="gelu")(x)
    m = layers.Add()([a, b])
    merged = [
        m,
        layers.Subtract()([a, b]),
        layers.Multiply()([a, b]),
        layers.Average()([a, b, m]),
        layers.Maximum()([a, b]),
        layers.Minimum()([a, b]),
    ]
    c = layers.Concatenate(axis=-1)(merged)
    c = layers.Conv2D(12, 1, name="mix")(c)
    s = layers.GlobalAveragePooling2D(keepdims=True)(c)  # squeeze-excite, Dense on 4-D
    s = layers.Dense(4, activation="relu")(s)
    s = layers.Dense(12, activation="hard_sigmoid")(s)
    c = layers.Multiply(name="excite")([c, s])  # (N, H, W, C) × (N, 1, 1, C)
    s2 = layers.GlobalMaxPooling2D()(c)
    s2 = layers.Reshape((1, 1, 12))(s2)
    c = layers.Multiply()([c, s2])
    c = layers.ZeroPadding2D(((1, 0), (0, 2)))(c)
    c = layers.Cropping2D(((0, 1), (1, 0)))(c)
    c = layers.Concatenate(axis=1)([c, layers.ReLU()(c)])  # along H
    c = layers.Concatenate(axis=2)([c, c])  # along W
    c = layers.Permute((2, 1, 3))(c)
    r = layers.Reshape((-1, 12))(c)  # (H·W, C) tokens, then back
    r = layers.Dense(6)(r)  # Dense on a rank-3 tensor
    r = layers.LayerNormalization()(r)
    c = layers.Reshape((c.shape[1], c.shape[2], 6))(r)
    c = layers.Conv2D(4, 3, strides=2, padding="same")(c)
    f = layers.Flatten()(c)
    out = layers.Dense(5, activation="softmax")(f)
    model = keras.Model(inp, out, name="merges")
    randomize(model)
    (m, _) = check(tmp_path, model, inputs(9, 7, 3))
    assert isinstance(m.net, torch.fx.GraphModule) and m.dropped_softmax
    # merge layers are graph nodes named after their Keras layer
    assert "excite" in [node.name for node in m.net.graph.nodes]
    names = set(dict(m.net.named_modules()))
    assert {"stem", "mix", "dense", "dense_1"} <= names and (
        "stem_silu" in names or "stem_swish" in names
    )


def test_activations_and_activation_layers(tmp_path: Path) -> None:
    """Every named activation and activation layer, on parallel branches."""
    inp = keras.Input((6, 6, 3))
    x = layers.Conv2D(4, 3, padding="same", name="c")(inp)
    names = ["relu6", "swish", "silu", "hard_sigmoid", "hard_swish", "hard_silu", "gelu",
             "sigmoid", "tanh", "softplus", "selu", "elu", "exponential", "softsign", "mish",
             "relu", "leaky_relu", "softmax"]  # fmt: skip
    branches = [layers.Activation(a, name=f"act_{a}")(x) for a in names]
    branches += [
        layers.ReLU(max_value=4.0, negative_slope=0.2, threshold=0.1)(x),
        layers.ReLU(negative_slope=0.1)(x),
        layers.ReLU(max_value=2.5)(x),
        layers.PReLU(shared_axes=[1, 2])(x),
        layers.PReLU()(x),
        layers.ELU(alpha=0.5)(x),
        layers.LeakyReLU(negative_slope=0.15)(x),
        layers.Softmax(axis=-1)(x),
        layers.SpatialDropout2D(0.5)(x),
        layers.GaussianNoise(0.5)(x),
        layers.GaussianDropout(0.5)(x),
        layers.Dropout(0.5)(x),
        layers.Rescaling(2.0, offset=-1.0)(x),  # mid-network: an Affine module
        layers.Normalization(mean=[0.1, 0.2, 0.3, 0.4], variance=[1.0, 2.0, 3.0, 4.0])(x),
        layers.UpSampling2D(2)(layers.AveragePooling2D(2)(x)),
        layers.UpSampling2D(2, interpolation="bilinear")(layers.MaxPooling2D(2)(x)),
        layers.Conv2DTranspose(4, 3, strides=2, padding="same")(layers.MaxPooling2D(2)(x)),
    ]
    out = layers.Concatenate()(branches)
    model = keras.Model(inp, out, name="acts")
    randomize(model)
    check(tmp_path, model, inputs(6, 6, 3) * 2)


@pytest.mark.parametrize(("k", "s", "padding", "out_pad"),
                         [(3, 2, "same", None), (2, 2, "same", None), (4, 2, "same", None),
                          (3, 2, "valid", None), (1, 3, "valid", None), (3, 1, "same", None),
                          (3, 2, "same", 1), (5, 3, "valid", 2)])  # fmt: skip
def test_conv2d_transpose(tmp_path: Path, k: int, s: int, padding: str, out_pad: Any) -> None:
    inp = keras.Input((5, 4, 3))
    out = layers.Conv2DTranspose(3, k, strides=s, padding=padding, output_padding=out_pad)(inp)
    model = keras.Model(inp, out, name="deconv")
    randomize(model)
    check(tmp_path, model, inputs(5, 4, 3), kinds=("keras",))


def test_leading_rescaling_is_folded_and_chain_stays_sequential(tmp_path: Path) -> None:
    model = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            layers.Rescaling(1 / 127.5, offset=-1),
            layers.Conv2D(4, 3, activation="relu", name="conv"),
            layers.GlobalAveragePooling2D(name="gap"),
            layers.Dense(3, activation="softmax", name="fc"),
        ],
        name="chain",
    )
    randomize(model)
    x = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3)).astype("float32")
    check(tmp_path, model, x, kinds=("keras",), pixels=True)
    m = load_model(tmp_path / "chain.keras")
    assert isinstance(m.net, nn.Sequential)
    assert list(m.net._modules) == ["conv", "conv_relu", "gap", "gap_flatten", "fc"]
    assert m.spec.mean == pytest.approx((0.5,) * 3) and m.spec.std == pytest.approx((0.5,) * 3)
    assert m.outputs == "logits"


# ------------------------------------------------------------------ weights layout


def _offset_counters() -> None:
    """Build unrelated layers and models first: Keras's name counters then start later."""
    for _ in range(3):
        keras.Sequential([keras.Input((4,)), layers.Dense(2), layers.BatchNormalization()])
    layers.Conv2D(1, 1)


def _base(name: str) -> Any:
    inp = keras.Input((10, 10, 3))
    x = layers.Conv2D(6, 3, padding="same", name="my_first_conv")(inp)
    x = layers.BatchNormalization()(x)
    shared = layers.Conv2D(6, 3, padding="same", activation="relu")  # called twice
    y = shared(x)
    y = shared(y)
    x = layers.Add()([x, y])
    x = layers.Conv2D(8, 1, name="z_last_conv")(x)  # sorts after the auto-named ones
    return keras.Model(inp, x, name=name)


def test_transfer_learning_sequential_and_shared_layers(tmp_path: Path) -> None:
    """A Sequential around a Functional base plus a new head (the Keras transfer-learning
    course); the base calls one conv twice; custom names; Keras counters offset."""
    _offset_counters()
    base = _base("base_net")
    model = keras.Sequential(
        [
            keras.Input((10, 10, 3)),
            base,
            layers.GlobalAveragePooling2D(),
            layers.Dropout(0.2),
            layers.Dense(4, name="head"),
        ],
        name="transfer",
    )
    randomize(model)
    check(tmp_path, model, inputs(10, 10, 3))
    for kind in ("keras", "h5"):
        m = load_model(tmp_path / f"transfer.{kind}")
        net = m.net
        assert isinstance(net, torch.fx.GraphModule)  # a layer called twice is not a chain
        convs = [n for n, mod in net.named_modules() if isinstance(mod, nn.Conv2d)]
        assert len(convs) == 3  # the shared conv is one module, called twice
        nodes = [n for n in net.graph.nodes if n.op == "call_module"]
        assert sum(1 for n in nodes if isinstance(net.get_submodule(n.target), nn.Conv2d)) == 4


def test_functional_inside_functional_called_twice(tmp_path: Path) -> None:
    _offset_counters()
    base = _base("inner")
    inp = keras.Input((10, 10, 3))
    a = base(inp)
    b = base(layers.Conv2D(3, 1, name="pre")(inp))  # the same nested model, second call
    x = layers.Concatenate()([a, b])
    x = layers.GlobalMaxPooling2D()(x)
    model = keras.Model(inp, layers.Dense(3)(x), name="outer")
    randomize(model)
    check(tmp_path, model, inputs(10, 10, 3))


def one_layer(kind: str, **config: Any) -> dict[str, Any]:
    """A Keras 2 style config of one layer on a 1×W×1 input (as TF.js writes them)."""
    config["batch_input_shape"] = [None, 1, 5, 1]
    layer = {"class_name": kind, "config": config}
    return {"class_name": "Sequential", "config": {"name": "s", "layers": [layer]}}


def test_keras2_hard_sigmoid_when_the_file_is_keras2() -> None:
    """TF.js and Keras 2 define hard_sigmoid as clip(0.2·x + 0.5, 0, 1); Keras 3 as
    relu6(x + 3) / 6. The same config converts to either."""
    cfg = one_layer("Activation", name="hs", activation="hard_sigmoid")
    x = torch.linspace(-4, 4, 5).reshape(1, 1, 1, 5)
    k2 = convert(cfg, {}, keras3=False).net(x)
    k3 = convert(cfg, {}, keras3=True).net(x)
    torch.testing.assert_close(k2, (0.2 * x + 0.5).clamp(0, 1))
    torch.testing.assert_close(k3, torch.clamp(x + 3, 0, 6) / 6)


def test_thresholded_relu_keras2_config() -> None:
    """Keras 3 dropped ThresholdedReLU; Keras 2 / TF.js configs still carry it."""
    cfg = one_layer("ThresholdedReLU", name="t", theta=0.5)
    x = torch.tensor([-1.0, 0.5, 0.6, 2.0, 0.0]).reshape(1, 1, 1, 5)
    want = torch.tensor([0.0, 0.0, 0.6, 2.0, 0.0]).reshape(1, 1, 1, 5)
    torch.testing.assert_close(convert(cfg, {}).net(x), want)


# ------------------------------------------------------------------ refusals


def test_lambda_layer_refused_with_name_and_position(tmp_path: Path) -> None:
    inp = keras.Input((6, 6, 3))
    x = layers.Conv2D(2, 3, name="c")(inp)
    x = layers.Lambda(lambda t: t * 2, name="double")(x)
    model = keras.Model(inp, layers.Flatten()(x), name="lam")
    path = tmp_path / "lam.keras"
    model.save(path)
    with pytest.raises(ConvlensError, match=r"layer 2 \('double', Lambda\).*runs Python code"):
        load_model(path)


def test_custom_layer_refused(tmp_path: Path) -> None:
    @keras.saving.register_keras_serializable(package="t")
    class Twice(keras.layers.Layer):  # type: ignore[name-defined]
        def call(self, x: Any) -> Any:
            return x * 2

    inp = keras.Input((4, 4, 3))
    model = keras.Model(inp, Twice(name="twice")(layers.Dense(2)(inp)))
    path = tmp_path / "custom.keras"
    model.save(path)
    with pytest.raises(ConvlensError, match=r"layer 2 \('twice', Twice\).*not a built-in"):
        load_model(path)


def test_two_inputs_refused(tmp_path: Path) -> None:
    a, b = keras.Input((4, 4, 3)), keras.Input((4, 4, 3))
    model = keras.Model([a, b], layers.Add()([a, b]))
    path = tmp_path / "two.keras"
    model.save(path)
    with pytest.raises(ConvlensError, match="takes 2 inputs; convlens feeds one image"):
        load_model(path)


def test_tensor_operators_between_layers(tmp_path: Path) -> None:
    """``a + b`` and ``a * b`` on Keras tensors are saved as ``keras.src.ops`` operations
    (not layers, so not counted in the weights file's per-class names)."""
    inp = keras.Input((6, 6, 3))
    a = layers.Conv2D(4, 1)(inp)
    b = layers.Conv2D(4, 1)(inp)
    c = layers.Add()([a + b, a * b])
    out = layers.GlobalAveragePooling2D()(layers.Conv2D(2, 1)(c))
    model = keras.Model(inp, out, name="ops")
    randomize(model)
    check(tmp_path, model, inputs(6, 6, 3))


def test_layers_named_like_python_keywords(tmp_path: Path) -> None:
    """Keras accepts any layer name; ``def`` and ``None`` made torch.fx's generated code fail
    to parse (``self.def(x)``). They load, with a ``_`` added, and match Keras."""
    i = keras.Input((8, 8, 3))
    a = layers.Conv2D(2, 3, name="true")(i)
    b = layers.Conv2D(2, 3, name="def")(i)
    x = layers.Add(name="None")([a, b])
    x = layers.GlobalAveragePooling2D()(x)
    model = keras.Model(i, layers.Dense(3, name="class")(x), name="keywords")
    randomize(model)
    (conv, _) = check(tmp_path, model, inputs(8, 8, 3))
    assert {"true", "def_", "class_"} <= set(dict(conv.net.named_children()))
