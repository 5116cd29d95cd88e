"""Architectures by name. Weights come only from a file, a checkpoint or an explicit download.

``tiny-vgg`` is exactly the network of CNN Explainer (Wang et al., VIS 2020): blocks of
conv3×3-ReLU-conv3×3-ReLU-maxpool2 with valid padding and 10 filters, then flatten and one
linear layer, with the same layer names. ``alexnet`` follows the single-stream layer sizes of
Krizhevsky et al. (2012) on 227×227; ``alexnet:variant=owt`` is the network torchvision ships
and publishes weights for (Krizhevsky's "one weird trick" revision, 2014: 64-192-384-256-256
filters, no local response normalization). ``vgg16``, ``resnet18``, ``resnet50``,
``mobilenet_v2`` and ``mobilenet_v3_small`` use torchvision's module names, shapes and
batch-norm settings, so torchvision's published state dicts load into them unchanged (see
:mod:`convlens.model.pretrained`).

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


def _projection(cin: int, cout: int, stride: int) -> nn.Module | None:
    """A residual block's shortcut: identity (None) when shapes agree, else a strided 1×1
    conv and batch norm (torchvision's ``downsample``, so its state dicts load)."""
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


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
        self.downsample = _projection(cin, cout, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + identity)


class Bottleneck(nn.Module):
    """ResNet's 1×1-3×3-1×1 residual block with 4× expansion (He et al., 2016), as torchvision
    builds it: the stride sits on the 3×3 conv ("ResNet v1.5"), which its weights assume."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.relu2 = nn.ReLU(inplace=True)
        self.relu3 = nn.ReLU(inplace=True)
        self.downsample = _projection(cin, cout, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu3(out + identity)


class ResNet(nn.Module):
    """ResNet (He et al., 2016) with torchvision's module names: a 7×7 stem, four stages of
    ``depths`` residual blocks (the first of stages 2-4 halves the grid), global average pool
    and one linear layer. ``width`` is the stem's channel count; each stage doubles it."""

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        depths: tuple[int, int, int, int],
        num_classes: int = 1000,
        in_channels: int = 3,
        width: int = 64,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        expansion = getattr(block, "expansion", 1)
        channels = width
        stages: list[nn.Sequential] = []
        for i, depth in enumerate(depths):
            planes, stride = width * 2**i, 1 if i == 0 else 2
            blocks = []
            for j in range(depth):
                blocks.append(block(channels, planes, stride if j == 0 else 1))
                channels = planes * expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = stage(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


class ResNet18(ResNet):
    """ResNet-18: two basic blocks per stage, 11,689,512 parameters at 1,000 classes."""

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, width: int = 64) -> None:
        super().__init__(BasicBlock, (2, 2, 2, 2), num_classes, in_channels, width)


class ResNet50(ResNet):
    """ResNet-50: 3-4-6-3 bottleneck blocks, 25,557,032 parameters at 1,000 classes."""

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, width: int = 64) -> None:
        super().__init__(Bottleneck, (3, 4, 6, 3), num_classes, in_channels, width)


class AlexNetOWT(nn.Module):
    """AlexNet as torchvision ships it: the single-GPU revision of Krizhevsky's "One weird trick
    for parallelizing convolutional neural networks" (2014), 64-192-384-256-256 filters, no
    local response normalization, an adaptive 6×6 average pool before the classifier;
    61,100,840 parameters at 1,000 classes."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.5) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2),
        )  # fmt: skip
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(256 * 6 * 6, 4096), nn.ReLU(inplace=True),
            nn.Dropout(dropout), nn.Linear(4096, 4096), nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def make_divisible(value: float, divisor: int = 8) -> int:
    """``value`` rounded to the nearest multiple of ``divisor`` (at least ``divisor``), never
    more than 10 % below it: MobileNet's channel rounding, which fixes its layer widths."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class ConvNormAct(nn.Sequential):
    """Conv (no bias, "same" padding) → batch norm → activation, named ``0``, ``1``, ``2`` like
    torchvision's ``Conv2dNormActivation``; ``activation=None`` leaves the third out."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: int = 3,
        stride: int = 1,
        groups: int = 1,
        activation: type[nn.Module] | None = nn.ReLU6,
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout, eps=bn_eps, momentum=bn_momentum),
        ]
        if activation is not None:
            layers.append(activation(inplace=True))
        super().__init__(*layers)


class InvertedResidualV2(nn.Module):
    """MobileNetV2's block (Sandler et al., 2018): 1×1 expansion by ``expand`` (ReLU6), 3×3
    depthwise (ReLU6), linear 1×1 projection; the input is added back when shapes allow."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_res_connect = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(ConvNormAct(cin, hidden, kernel=1))
        layers += [
            ConvNormAct(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


# (expansion t, channels c, repeats n, first stride s), Table 2 of Sandler et al. (2018)
_MOBILENET_V2_CFG = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                     (6, 160, 3, 2), (6, 320, 1, 1))  # fmt: skip


class MobileNetV2(nn.Module):
    """MobileNetV2 at width 1.0, torchvision's layout (``features.N.conv...``, ``classifier.1``):
    3,504,872 parameters at 1,000 classes."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2) -> None:
        super().__init__()
        channels = 32
        layers: list[nn.Module] = [ConvNormAct(3, channels, stride=2)]
        for t, c, n, s in _MOBILENET_V2_CFG:
            for i in range(n):
                layers.append(InvertedResidualV2(channels, c, s if i == 0 else 1, t))
                channels = c
        layers.append(ConvNormAct(channels, 1280, kernel=1))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(1280, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


class SqueezeExcitation(nn.Module):
    """Squeeze-and-excitation (Hu et al., 2018) as MobileNetV3 uses it: global average,
    1×1 conv down to ``make_divisible(c / 4)``, ReLU, 1×1 conv back, hard sigmoid, and the
    input scaled channel by channel."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        squeeze = make_divisible(channels // 4)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.activation = nn.ReLU()
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.scale_activation = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.fc2(self.activation(self.fc1(self.avgpool(x))))
        return self.scale_activation(scale) * x


def _v3_conv(
    cin: int,
    cout: int,
    kernel: int = 1,
    stride: int = 1,
    groups: int = 1,
    activation: type[nn.Module] | None = nn.Hardswish,
) -> ConvNormAct:
    """MobileNetV3's conv unit: its batch norm has eps 0.001 and momentum 0.01 (the published
    weights were trained so, and eps enters every prediction)."""
    return ConvNormAct(cin, cout, kernel, stride, groups, activation, bn_eps=1e-3, bn_momentum=0.01)


class InvertedResidualV3(nn.Module):
    """MobileNetV3's bottleneck (Howard et al., 2019): optional 1×1 expansion, depthwise
    ``kernel``×``kernel`` conv, optional squeeze-excitation, linear 1×1 projection; ``hs``
    picks hard swish over ReLU."""

    def __init__(
        self, cin: int, kernel: int, hidden: int, cout: int, se: bool, hs: bool, stride: int
    ) -> None:
        super().__init__()
        act: type[nn.Module] = nn.Hardswish if hs else nn.ReLU
        self.use_res_connect = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if hidden != cin:
            layers.append(_v3_conv(cin, hidden, activation=act))
        layers.append(_v3_conv(hidden, hidden, kernel, stride, groups=hidden, activation=act))
        if se:
            layers.append(SqueezeExcitation(hidden))
        layers.append(_v3_conv(hidden, cout, activation=None))
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return out + x if self.use_res_connect else out


# (in, kernel, expanded, out, squeeze-excite, hard swish, stride): Table 2 of Howard et al.
_MOBILENET_V3_SMALL_CFG = (
    (16, 3, 16, 16, True, False, 2), (16, 3, 72, 24, False, False, 2),
    (24, 3, 88, 24, False, False, 1), (24, 5, 96, 40, True, True, 2),
    (40, 5, 240, 40, True, True, 1), (40, 5, 240, 40, True, True, 1),
    (40, 5, 120, 48, True, True, 1), (48, 5, 144, 48, True, True, 1),
    (48, 5, 288, 96, True, True, 2), (96, 5, 576, 96, True, True, 1),
    (96, 5, 576, 96, True, True, 1),
)  # fmt: skip


class MobileNetV3Small(nn.Module):
    """MobileNetV3-Small at width 1.0, torchvision's layout (``features.N.block...``,
    ``classifier.0``/``classifier.3``): 2,542,856 parameters at 1,000 classes."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2) -> None:
        super().__init__()
        layers: list[nn.Module] = [_v3_conv(3, 16, kernel=3, stride=2)]
        layers += [InvertedResidualV3(*cfg) for cfg in _MOBILENET_V3_SMALL_CFG]
        layers.append(_v3_conv(96, 576))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(576, 1024), nn.Hardswish(inplace=True), nn.Dropout(dropout),
            nn.Linear(1024, num_classes),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


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
ALEXNET_VARIANTS = ("2012", "owt")


def _make_alexnet(variant: str = "2012", **args: Any) -> tuple[nn.Module, InputSpec]:
    """``variant=2012``: the paper's one-stream net on 227×227 (the lecture's arithmetic);
    ``variant=owt``: torchvision's revision on 224×224, the one with published weights."""
    if variant == "2012":
        return alexnet(**args), _imagenet_spec(227)
    if variant == "owt":
        return AlexNetOWT(**args), _imagenet_spec(224)
    raise ConvlensError(
        f"unknown alexnet variant {variant!r}; accepted: {', '.join(ALEXNET_VARIANTS)}"
    )


ZOO.add("alexnet", ZooEntry(
    _make_alexnet,
    "AlexNet (2012), single stream, 227×227; variant=owt: torchvision's 224×224 revision",
    {"num_classes": 1000, "dropout": 0.5, "variant": "2012"},
))  # fmt: skip
ZOO.add("vgg16", ZooEntry(
    lambda **a: (VGG16(**a), _imagenet_spec(224)), "VGG-16, 224×224",
    {"num_classes": 1000, "batch_norm": False},
))  # fmt: skip


def _resnet_maker(cls: type[ResNet]) -> Callable[..., tuple[nn.Module, InputSpec]]:
    def make(**args: Any) -> tuple[nn.Module, InputSpec]:
        size = int(args.pop("input_size", 224))
        channels = int(args.get("in_channels", 3))
        spec = _imagenet_spec(size) if channels == 3 else InputSpec(channels, size, size)
        return cls(**args), spec

    return make


_RESNET_ARGS = {"num_classes": 1000, "in_channels": 3, "width": 64, "input_size": 224}
ZOO.add("resnet18", ZooEntry(_resnet_maker(ResNet18), "ResNet-18, 224×224", _RESNET_ARGS))
ZOO.add("resnet50", ZooEntry(
    _resnet_maker(ResNet50), "ResNet-50 (bottleneck blocks), 224×224", _RESNET_ARGS))  # fmt: skip


def _mobilenet_maker(cls: type[nn.Module]) -> Callable[..., tuple[nn.Module, InputSpec]]:
    def make(**args: Any) -> tuple[nn.Module, InputSpec]:
        size = int(args.pop("input_size", 224))
        return cls(**args), _imagenet_spec(size)

    return make


_MOBILENET_ARGS = {"num_classes": 1000, "dropout": 0.2, "input_size": 224}
ZOO.add("mobilenet_v2", ZooEntry(
    _mobilenet_maker(MobileNetV2), "MobileNetV2 (inverted residuals), 224×224",
    _MOBILENET_ARGS))  # fmt: skip
ZOO.add("mobilenet_v3_small", ZooEntry(
    _mobilenet_maker(MobileNetV3Small),
    "MobileNetV3-Small (squeeze-excitation, hard swish), 224×224", _MOBILENET_ARGS))  # fmt: skip


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
