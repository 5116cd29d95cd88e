"""Shared fixtures: small models that run in milliseconds, and the CNN Explainer files."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from convlens.io.spec import InputSpec
from convlens.model import Model, build

# Keras (a test-only reference runtime) reads its backend once, at first import, and a user's
# ~/.keras/keras.json may name TensorFlow, which is not installed: pin the torch backend here.
os.environ["KERAS_BACKEND"] = "torch"

SHARED = Path(__file__).resolve().parents[2] / "shared"
CNN_EXPLAINER = SHARED / "fixtures" / "cnn-explainer"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's Chromium under Playwright, shared by a module's browser tests."""
    from web_harness import chromium_browser

    yield from chromium_browser()


@pytest.fixture
def cnn_explainer_dir() -> Path:
    """CNN Explainer's Tiny VGG (TensorFlow.js) and its 20 sample images, when present."""
    if not (CNN_EXPLAINER / "model.json").is_file():
        pytest.skip(f"CNN Explainer fixture not found at {CNN_EXPLAINER}")
    return CNN_EXPLAINER


@pytest.fixture
def tiny_vgg() -> Model:
    """Tiny VGG on 1×28×28 with seeded random weights."""
    return build("tiny-vgg:in_channels=1,input_size=28", seed=0).eval()


@pytest.fixture
def tiny_vgg_rgb() -> Model:
    """Tiny VGG on 3×32×32 with seeded random weights."""
    return build("tiny-vgg:in_channels=3,input_size=32", seed=0).eval()


class FunctionalNet(nn.Module):
    """A CNN using functional ReLU, an in-place addition (a residual) and global pooling."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv1(x))
        h = torch.nn.functional.relu(self.bn(self.conv2(h)) + h)
        return self.fc(torch.flatten(self.pool(h), 1))


@pytest.fixture
def functional_net() -> Model:
    torch.manual_seed(0)
    return Model(FunctionalNet().eval(), InputSpec(3, 16, 16), name="functional")


@pytest.fixture
def small_resnet() -> Model:
    """ResNet-18 with 8 base channels on 3×64×64: branching, batch norm, in-place ReLUs."""
    return build("resnet18:width=8,input_size=64,num_classes=7", seed=0).eval()
