"""Small image CNNs of the common families, for the torch.export / TorchScript tests.

Each is a faithful miniature of its family's defining blocks (not a copy of any library's
code): residual basic blocks (He et al. 2016), inverted residuals with squeeze-excitation and
hard-swish (Howard et al. 2019, MobileNetV3), parallel branches joined by concatenation
(Szegedy et al. 2015), channel split + shuffle (Ma et al. 2018, ShuffleNet V2) and an
encoder-decoder with skip connections, upsampling and transposed convolutions (Ronneberger et
al. 2015, U-Net).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _cbr(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class ResNetLike(nn.Module):
    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.stem = _cbr(3, 8, 3, 2)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = nn.Sequential(BasicBlock(8, 8, 1), BasicBlock(8, 16, 2))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.layer1(self.maxpool(self.stem(x)))
        return self.fc(torch.flatten(self.avgpool(h), 1))


class SqueezeExcite(nn.Module):
    def __init__(self, c: int, r: int = 4) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(c, c // r, 1)
        self.relu = nn.ReLU()
        self.fc2 = nn.Conv2d(c // r, c, 1)
        self.gate = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.fc2(self.relu(self.fc1(self.pool(x)))))


class InvertedResidual(nn.Module):
    def __init__(self, c: int, expand: int) -> None:
        super().__init__()
        hidden = c * expand
        self.expand = nn.Sequential(
            nn.Conv2d(c, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.Hardswish()
        )
        self.depthwise = nn.Sequential(
            nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.Hardswish(),
        )
        self.se = SqueezeExcite(hidden)
        self.project = nn.Sequential(nn.Conv2d(hidden, c, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.project(self.se(self.depthwise(self.expand(x))))


class MobileNetV3Like(nn.Module):
    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.Hardswish()
        )
        self.blocks = nn.Sequential(InvertedResidual(8, 2), InvertedResidual(8, 3))
        self.head = nn.Sequential(nn.Conv2d(8, 16, 1), nn.Hardswish())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(16, 12), nn.Hardswish(), nn.Dropout(0.2), nn.Linear(12, classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pool(self.head(self.blocks(self.stem(x))))
        return self.classifier(torch.flatten(h, 1))


class InceptionBlock(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.b1 = _cbr(cin, 4, 1)
        self.b3 = nn.Sequential(_cbr(cin, 4, 1), _cbr(4, 6, 3))
        self.b5 = nn.Sequential(_cbr(cin, 2, 1), _cbr(2, 4, 3), _cbr(4, 4, 3))
        self.pool = nn.Sequential(nn.AvgPool2d(3, 1, 1, count_include_pad=False), _cbr(cin, 2, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b1(x), self.b3(x), self.b5(x), self.pool(x)], 1)


class InceptionLike(nn.Module):
    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.stem = _cbr(3, 8, 3, 2)
        self.mixed = InceptionBlock(8)
        self.fc = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.max_pool2d(self.mixed(self.stem(x)), 2, ceil_mode=True)
        return self.fc(h.mean(dim=(2, 3)))


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    b, c, h, w = x.shape
    x = x.view(b, groups, c // groups, h, w)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(b, -1, h, w)


class ShuffleUnit(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        half = c // 2
        self.branch = nn.Sequential(
            _cbr(half, half, 1),
            nn.Conv2d(half, half, 3, 1, 1, groups=half, bias=False),
            nn.BatchNorm2d(half),
            _cbr(half, half, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.chunk(2, dim=1)
        return channel_shuffle(torch.cat((x1, self.branch(x2)), 1), 2)


class ShuffleNetLike(nn.Module):
    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.stem = _cbr(3, 8, 3, 2)
        self.stage = nn.Sequential(ShuffleUnit(8), ShuffleUnit(8))
        self.fc = nn.Linear(8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.stage(self.stem(x)).mean([2, 3]))


class UNetLike(nn.Module):
    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.enc1 = _cbr(3, 8)
        self.enc2 = _cbr(8, 16)
        self.up = nn.ConvTranspose2d(16, 8, 2, stride=2)
        self.dec1 = _cbr(16, 8)
        self.pad = nn.ReflectionPad2d(1)
        self.out = nn.Conv2d(8, 4, 3)
        self.fc = nn.Linear(4, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool2d(e1, 2))
        up = self.up(e2) + F.interpolate(e2[:, :8], scale_factor=2.0, mode="bilinear")
        d1 = self.dec1(torch.cat([up, e1], dim=1))
        seg = self.out(self.pad(d1))
        return self.fc(F.adaptive_avg_pool2d(seg, 1).flatten(1))


ARCHITECTURES = {
    "resnet": ResNetLike,
    "mobilenetv3": MobileNetV3Like,
    "inception": InceptionLike,
    "shufflenet": ShuffleNetLike,
    "unet": UNetLike,
}


def make(name: str) -> nn.Module:
    """The architecture with seeded weights and non-trivial batch-norm statistics."""
    torch.manual_seed(0)
    net = ARCHITECTURES[name]().eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                assert m.running_mean is not None and m.running_var is not None
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return net
