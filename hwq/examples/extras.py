"""Two more zoo models.

- LeNet300100: the LeNet-300-100 multilayer perceptron (LeCun et al. 1998) on a 1x28x28
  image: flatten, 784 -> 300 -> 100 -> 10 with ReLUs.
- VGG11: VGG-11 with BatchNorm (configuration "A") for 3x32x32 CIFAR images at a quarter
  of its width (16 to 128 channels), five 2x2 max pools down to 1x1, one dense layer.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from hwq.examples.zoo import ZooModel


class LeNet300100(ZooModel):
    input_shape = (1, 28, 28)

    def __init__(self, classes: int = 10):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(),
                                  nn.Linear(100, classes))

    def forward(self, x):
        return self.body(torch.flatten(x, 1))


class VGG11(ZooModel):
    input_shape = (3, 32, 32)
    CONFIG = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")

    def __init__(self, width: float = 0.25, classes: int = 10):
        super().__init__()
        layers, cin = [], 3
        for v in self.CONFIG:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            cout = int(v * width)
            layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.features(x), 1))


MODELS = (LeNet300100, VGG11)
