"""Networks the benchmarks share. The ResNet-18-style net keeps ResNet-18's conv stack
for 32x32 inputs (CIFAR layout: 3x3 stem, four stages of two basic blocks, 64-512
channels) without the residual adds (the figures recorded before the back end lowered
adds are for this net); its MAC count is that of ResNet-18's convolutions."""
from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "hwq" / "examples"))


class PlainResNet18(nn.Module):
    def __init__(self, width: int = 64, classes: int = 10):
        super().__init__()
        torch.manual_seed(0)
        layers, cin = [nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()], width
        for stage, cout in enumerate((width, 2 * width, 4 * width, 8 * width)):
            for block in range(2):
                stride = 2 if stage > 0 and block == 0 else 1
                for conv in range(2):
                    layers += [nn.Conv2d(cin, cout, 3, stride=stride if conv == 0 else 1, padding=1),
                               nn.BatchNorm2d(cout), nn.ReLU()]
                    cin = cout
        self.features = nn.Sequential(*layers)
        self.pool = nn.MaxPool2d(4)
        self.fc = nn.Linear(8 * width, classes)
        for m in self.modules():  # trained-looking BN statistics, so activations stay in range
            if isinstance(m, nn.BatchNorm2d):
                m.running_var.fill_(4.0)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


class _Basic(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False),
                                      nn.BatchNorm2d(cout))

    def forward(self, x):
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(y + (x if self.down is None else self.down(x)))


class ResNet18(nn.Module):
    """ResNet-18 for 32x32 inputs (CIFAR layout), residual adds and 1x1 downsampling
    convs included, global average pool."""

    def __init__(self, width: int = 64, classes: int = 10):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU())
        blocks, cin = [], width
        for stage, cout in enumerate((width, 2 * width, 4 * width, 8 * width)):
            for block in range(2):
                blocks.append(_Basic(cin, cout, 2 if stage > 0 and block == 0 else 1))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, classes)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_var.fill_(4.0)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.blocks(self.stem(x))), 1))


def lenet() -> nn.Module:
    from lenet_digits import LeNet
    return LeNet.pretrained()
