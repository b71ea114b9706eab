"""Torchvision-like models built by hand (torchvision does not import here; nothing is downloaded).

`resnet50()` has torchvision's ResNet-50 layout and parameter names (conv1/bn1, layer1..4 of
Bottleneck blocks with conv1-3/bn1-3 and a `downsample` = 1x1 conv + BN, fc), so
`bnwd plan --model tvlike:resnet50` (with `tests/` on PYTHONPATH) plans what
`--model torchvision.models:resnet50` would. `odd()` is a small net with the three roles: conv
kernels followed by BN, a conv WITH bias and no norm after it, and a linear head.
"""

import torch
import torch.nn as nn


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        cout = width * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """torchvision.models.ResNet with Bottleneck blocks (no zero-init of the last BN)."""

    def __init__(self, layers=(3, 4, 6, 3), num_classes: int = 1000, width: int = 64):
        super().__init__()
        self.inplanes = width
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make_layer(width, layers[0])
        self.layer2 = self._make_layer(width * 2, layers[1], 2)
        self.layer3 = self._make_layer(width * 4, layers[2], 2)
        self.layer4 = self._make_layer(width * 8, layers[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width * 8 * Bottleneck.expansion, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(self, width: int, blocks: int, stride: int = 1) -> nn.Sequential:
        down = None
        if stride != 1 or self.inplanes != width * Bottleneck.expansion:
            down = nn.Sequential(
                nn.Conv2d(self.inplanes, width * Bottleneck.expansion, 1, stride, bias=False),
                nn.BatchNorm2d(width * Bottleneck.expansion),
            )
        layers = [Bottleneck(self.inplanes, width, stride, down)]
        self.inplanes = width * Bottleneck.expansion
        layers += [Bottleneck(self.inplanes, width) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet50(num_classes: int = 1000) -> ResNet:
    """torchvision's ResNet-50 layout: 53 conv kernels each followed by BN, fc 2048 -> 1000."""
    torch.manual_seed(0)
    return ResNet((3, 4, 6, 3), num_classes)


def tiny_resnet(num_classes: int = 10) -> ResNet:
    """The same code at depth 11 and width 8 (one Bottleneck per stage): fast in tests."""
    torch.manual_seed(0)
    return ResNet((1, 1, 1, 1), num_classes, width=8)


class Odd(nn.Module):
    """stem conv -> BN -> ReLU, a conv WITH bias that feeds the head directly (no norm), a linear head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(6)
        self.side = nn.Conv2d(6, 4, 3, padding=1)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        x = torch.relu(self.bn(self.stem(x)))
        return self.head(torch.relu(self.side(x)).mean((2, 3)))


def odd() -> Odd:
    torch.manual_seed(0)
    return Odd()
