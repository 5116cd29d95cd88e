"""Architectures by name. Weights come only from a file, a checkpoint or an explicit download.

``tiny-vgg`` is exactly the network of CNN Explainer (Wang et al., VIS 2020): blocks of
conv3×3-ReLU-conv3×3-ReLU-maxpool2 with valid padding and 10 filters, then flatten and one
linear layer, with the same layer names. ``alexnet`` follows the single-stream layer sizes of
Krizhevsky et al. (2012) on 227×227; ``vgg16`` and ``resnet18`` use torchvision's module names,
so torchvision's state dicts load into them unchanged.

A name may carry arguments: ``tiny-vgg:in_channels=1,input_size=28``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from convlens.errors import ConvlensError
from convlens.io.spec import InputSpec
from convlens.model.core import Model
from convlens.registry import Registry

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ZooEntry:
    """A buildable architecture: ``make(**args)`` returns the network and its input spec."""

    make: Callable[..., tuple[nn.Module, InputSpec]]
    description: str
    defaults: dict[str, Any] = field(default_factory=dict)


ZOO: Registry[ZooEntry] = Registry("zoo model")


def tiny_vgg(
    in_channels: int = 3,
    input_size: int = 64,
    num_classes: int = 10,
    width: int = 10,
    blocks: int = 2,
    padding: int = 0,
) -> nn.Sequential:
    """CNN Explainer's Tiny VGG, generalised: ``blocks`` × (conv-relu-conv-relu-maxpool)."""
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    channels, size = in_channels, input_size
    for b in range(1, blocks + 1):
        for c in (1, 2):
            layers[f"conv_{b}_{c}"] = nn.Conv2d(channels, width, 3, padding=padding)
            layers[f"relu_{b}_{c}"] = nn.ReLU()
            channels, size = width, size - 2 + 2 * padding
        layers[f"max_pool_{b}"] = nn.MaxPool2d(2)
        size //= 2
    if size < 1:
        raise ConvlensError(
            f"tiny-vgg with {blocks} blocks needs a larger input than {input_size}×{input_size}"
        )
    layers["flatten"] = nn.Flatten()
    layers["output"] = nn.Linear(width * size * size, num_classes)
    return nn.Sequential(layers)


def alexnet(num_classes: int = 1000, dropout: float = 0.5) -> nn.Sequential:
    """AlexNet as one stream, 227×227 input (Krizhevsky, Sutskever and Hinton, 2012)."""
    return nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(3, 96, 11, stride=4)), ("relu1", nn.ReLU()),
        ("norm1", nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0)),
        ("pool1", nn.MaxPool2d(3, stride=2)),
        ("conv2", nn.Conv2d(96, 256, 5, padding=2)), ("relu2", nn.ReLU()),
        ("norm2", nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0)),
        ("pool2", nn.MaxPool2d(3, stride=2)),
        ("conv3", nn.Conv2d(256, 384, 3, padding=1)), ("relu3", nn.ReLU()),
        ("conv4", nn.Conv2d(384, 384, 3, padding=1)), ("relu4", nn.ReLU()),
        ("conv5", nn.Conv2d(384, 256, 3, padding=1)), ("relu5", nn.ReLU()),
        ("pool5", nn.MaxPool2d(3, stride=2)),
        ("flatten", nn.Flatten()),
        ("drop6", nn.Dropout(dropout)), ("fc6", nn.Linear(256 * 6 * 6, 4096)), ("relu6", nn.ReLU()),
        ("drop7", nn.Dropout(dropout)), ("fc7", nn.Linear(4096, 4096)), ("relu7", nn.ReLU()),
        ("fc8", nn.Linear(4096, num_classes)),
    ]))  # fmt: skip


_VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
              512, 512, 512, "M")  # fmt: skip


class VGG16(nn.Module):
    """VGG-16 (configuration D of Simonyan and Zisserman, 2015), torchvision's module names."""

    def __init__(self, num_classes: int = 1000, batch_norm: bool = False) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for v in _VGG16_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
                continue
            layers.append(nn.Conv2d(channels, int(v), 3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(int(v)))
            layers.append(nn.ReLU(inplace=True))
            channels = int(v)
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096), nn.ReLU(True), nn.Dropout(),
            nn.Linear(4096, 4096), nn.ReLU(True), nn.Dropout(),
            nn.Linear(4096, num_classes),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


class BasicBlock(nn.Module):
    """ResNet's two-conv residual block; separate ReLU modules so each call has a name."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu2 = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + identity)


class ResNet18(nn.Module):
    """ResNet-18 (He et al., 2016), torchvision's module names; ``width`` scales every stage."""

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, width: int = 64) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        w1, w2, w3, w4 = width, width * 2, width * 4, width * 8
        self.layer1 = nn.Sequential(BasicBlock(w1, w1), BasicBlock(w1, w1))
        self.layer2 = nn.Sequential(BasicBlock(w1, w2, 2), BasicBlock(w2, w2))
        self.layer3 = nn.Sequential(BasicBlock(w2, w3, 2), BasicBlock(w3, w3))
        self.layer4 = nn.Sequential(BasicBlock(w3, w4, 2), BasicBlock(w4, w4))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(w4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = stage(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _imagenet_spec(size: int) -> InputSpec:
    return InputSpec(3, size, size, IMAGENET_MEAN, IMAGENET_STD)


def _make_tiny_vgg(**args: Any) -> tuple[nn.Module, InputSpec]:
    size, ch = int(args.get("input_size", 64)), int(args.get("in_channels", 3))
    return tiny_vgg(**args), InputSpec(ch, size, size)


ZOO.add("tiny-vgg", ZooEntry(
    _make_tiny_vgg, "CNN Explainer's Tiny VGG: 2 × (conv-relu-conv-relu-pool), linear head",
    {"in_channels": 3, "input_size": 64, "num_classes": 10, "width": 10, "blocks": 2,
     "padding": 0},
))  # fmt: skip
ZOO.add("alexnet", ZooEntry(
    lambda **a: (alexnet(**a), _imagenet_spec(227)),
    "AlexNet (2012), single stream, 227×227", {"num_classes": 1000, "dropout": 0.5},
))  # fmt: skip
ZOO.add("vgg16", ZooEntry(
    lambda **a: (VGG16(**a), _imagenet_spec(224)), "VGG-16, 224×224",
    {"num_classes": 1000, "batch_norm": False},
))  # fmt: skip


def _make_resnet18(**args: Any) -> tuple[nn.Module, InputSpec]:
    size = int(args.pop("input_size", 224))
    channels = int(args.get("in_channels", 3))
    spec = _imagenet_spec(size) if channels == 3 else InputSpec(channels, size, size)
    return ResNet18(**args), spec


ZOO.add("resnet18", ZooEntry(
    _make_resnet18, "ResNet-18, 224×224",
    {"num_classes": 1000, "in_channels": 3, "width": 64, "input_size": 224},
))  # fmt: skip


def _coerce(value: str, default: Any) -> Any:
    if isinstance(default, bool):
        if value.lower() in ("1", "true", "yes"):
            return True
        if value.lower() in ("0", "false", "no"):
            return False
        raise ValueError(value)
    if isinstance(default, int):
        return int(value)
    if isinstance(default, float):
        return float(value)
    return value


def parse_arch(spec: str) -> tuple[str, dict[str, Any]]:
    """``"tiny-vgg:in_channels=1,input_size=28"`` → ``("tiny-vgg", {...})`` with typed values."""
    name, _, arg_text = spec.partition(":")
    entry = ZOO.get(name)
    args: dict[str, Any] = {}
    for item in filter(None, (s.strip() for s in arg_text.split(","))):
        key, eq, value = item.partition("=")
        if not eq or key not in entry.defaults:
            raise ConvlensError(
                f"bad argument {item!r} for {name}; accepted: "
                + ", ".join(f"{k}={v}" for k, v in entry.defaults.items())
            )
        try:
            args[key] = _coerce(value, entry.defaults[key])
        except ValueError:
            raise ConvlensError(
                f"argument {key} of {name} must be a {type(entry.defaults[key]).__name__}, "
                f"got {value!r}"
            ) from None
    return name, args


def build(
    spec: str, classes: list[str] | None = None, *, seed: int | None = None, **args: Any
) -> Model:
    """Build a zoo architecture with fresh (random) weights.

    >>> build("tiny-vgg:in_channels=1,input_size=28").spec.shape
    (1, 28, 28)
    """
    name, parsed = parse_arch(spec)
    parsed |= args
    if seed is not None:
        torch.manual_seed(seed)
    entry = ZOO.get(name)
    try:
        net, input_spec = entry.make(**dict(parsed))
    except TypeError as e:
        raise ConvlensError(f"bad arguments for {name}: {e}") from None
    return Model(net, input_spec, classes, name=name, arch={"name": name, "args": parsed})
