"""Keras Applications written by Keras 3 itself, loaded by convlens, logits against Keras.

Each architecture is built with ``weights=None`` at a small odd input size (75×75, so that
TensorFlow's asymmetric ``same`` padding is exercised), given random batch-norm statistics
and biases (so that outputs are far from zero), saved by Keras as ``.keras`` and legacy
``.h5``, and called by Keras on two fixed images. Files, images and Keras's logits are
cached once per Keras version under ``tests/.cache/`` (or ``$CONVLENS_TEST_CACHE``), as the
files are too big to commit.

NASNetMobile is not built: Keras 3 refuses it on the torch backend.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from convlens.model import load_model

pytest.importorskip("h5py")
os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")
if keras.backend.backend() != "torch":  # pragma: no cover - depends on the environment
    pytest.skip("these tests build Keras models with the torch backend", allow_module_level=True)

pytestmark = pytest.mark.slow

SIZE = 75
CLASSES = 10
TOL = 1e-4
CACHE = Path(os.environ.get("CONVLENS_TEST_CACHE") or Path(__file__).parent / ".cache")


def _app(name: str, **kw: Any) -> Callable[[], Any]:
    def build() -> Any:
        fn = getattr(keras.applications, name)
        kw.setdefault("classifier_activation", None)
        return fn(input_shape=(SIZE, SIZE, 3), weights=None, classes=CLASSES, **kw)

    return build


# name → (builder, whether the model rescales raw 0-255 pixels itself)
APPS: dict[str, tuple[Callable[[], Any], bool]] = {
    "mobilenetv2": (_app("MobileNetV2", alpha=0.35), False),
    "mobilenetv2-softmax": (
        _app("MobileNetV2", alpha=0.35, classifier_activation="softmax"),
        False,
    ),
    "resnet50": (_app("ResNet50"), False),
    "xception": (_app("Xception"), False),
    "inceptionv3": (_app("InceptionV3"), False),
    "densenet121": (_app("DenseNet121"), False),
    "efficientnetb0": (_app("EfficientNetB0"), True),
}
# The deepest spatial layer (after Keras's ZeroPadding2D layers, which shift the grid).
LAST_SPATIAL = {"resnet50": "conv5_block3_out", "mobilenetv2": "out_relu"}


def _randomize(model: Any) -> None:
    rng = np.random.default_rng(1)
    for var in model.weights:
        short, shape = var.path.rsplit("/", 1)[-1], tuple(var.shape)
        if short in ("gamma", "moving_variance"):
            var.assign(rng.uniform(0.5, 1.5, shape).astype("float32"))
        elif short in ("beta", "moving_mean", "bias"):
            var.assign(rng.normal(0, 0.1, shape).astype("float32"))


def app_files(name: str) -> Path:
    """The cached folder of ``name``: m.keras, m.h5, x.npy (NHWC input), y.npy (Keras output)."""
    folder = CACHE / f"keras-{keras.__version__}" / name
    if (folder / "y.npy").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    build, _ = APPS[name]
    model = build()
    _randomize(model)
    model.save(folder / "m.keras")
    model.save(folder / "m.h5")
    x = np.random.default_rng(0).uniform(0, 255, (2, SIZE, SIZE, 3)).astype("float32")
    np.save(folder / "x.npy", x)
    y = model(x, training=False)
    np.save(folder / "y.npy", np.asarray(y.detach().cpu().numpy()))  # written last: complete
    return folder


@pytest.mark.parametrize("kind", ["keras", "h5"])
@pytest.mark.parametrize("name", list(APPS))
def test_application_logits_match_keras(name: str, kind: str) -> None:
    folder = app_files(name)
    x, want = np.load(folder / "x.npy"), np.load(folder / "y.npy")
    model = load_model(folder / f"m.{kind}")
    xt = torch.from_numpy(x).permute(0, 3, 1, 2)
    with torch.no_grad():
        # Preprocessing folded into the spec: the model takes [0, 1] pixels; otherwise the
        # Keras model takes whatever its user feeds, so compare the bare network.
        got = model(xt / 255) if APPS[name][1] else model.net(xt)
        if name.endswith("softmax"):
            assert model.outputs == "logits"  # the final softmax was split off
            got = torch.softmax(got, 1)
    assert got.shape == (2, CLASSES)
    if kind == "keras" and name in LAST_SPATIAL:  # Grad-CAM's default layer: the last block
        assert model.graph.last_spatial().name == LAST_SPATIAL[name]
    assert np.abs(want).max() > 0.1  # the comparison is not between near-zero outputs
    print(f"{name} {kind}: max |Δ| = {np.abs(got.numpy() - want).max():.2e}")
    # float32 through 50-120 layers: the error grows with the logits (ResNet-50: ~30)
    np.testing.assert_allclose(got.numpy(), want, atol=TOL * max(1.0, np.abs(want).max()), rtol=0)
