"""The four reference models of the MLPerf Tiny inference benchmark (v1.x), after its
Keras definitions, as PyTorch modules. They end in logits: the references' final softmax
is left out (it does not change the argmax, and hwq compiles no softmax).

- ResNet8: image classification, CIFAR-10 32x32 (`resnet_v1_eembc`): a 3x3 stem and
  three stages of one residual block (16, 32, 64 channels), a 1x1 strided shortcut
  conv, an 8x8 average pool, a dense layer.
- MobileNetV1: visual wake words, 96x96 RGB, width 0.25 (`mobilenet_v1`): a strided 3x3
  conv and 13 depthwise-separable blocks (8 to 256 channels), a 3x3 average pool, 2
  classes.
- DSCNN: keyword spotting on 49x10 MFCCs (`ds_cnn`): a 10x4 stride-2 conv of 64
  channels, 4 depthwise-separable blocks, a 24x5 average pool (Keras's pool_size is
  input // 2, so the 25th row is never pooled), 12 classes. Keras pads the first conv
  'same' (4 rows above, 5 below); torch pads alike on both sides, 5 rows and 1 column,
  the same output size.
- AutoEncoder: anomaly detection on 640 features (5 frames x 128 mel bins), compiled as a
  640x1x1 input: 640 -> 128 x4 -> 8 -> 128 x4 -> 640, dense layers with BatchNorm1d.

Convolutions and dense layers keep Keras's biases, BatchNorm follows them.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from hwq.examples.zoo import ZooModel


def _conv_bn(cin: int, cout: int, kernel, stride=1, padding=0, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel, stride, padding, groups=groups), nn.BatchNorm2d(cout)]


class _ResidualStage(nn.Module):
    """conv-bn-relu, conv-bn, plus the input (a 1x1 strided conv when the shape changes),
    relu."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(*_conv_bn(cin, cout, 3, stride, 1), nn.ReLU(),
                                  *_conv_bn(cout, cout, 3, 1, 1))
        self.shortcut = nn.Conv2d(cin, cout, 1, stride) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x):
        return torch.relu(self.body(x) + self.shortcut(x))


class ResNet8(ZooModel):
    input_shape = (3, 32, 32)

    def __init__(self, classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn(3, 16, 3, 1, 1), nn.ReLU())
        self.stages = nn.Sequential(_ResidualStage(16, 16, 1), _ResidualStage(16, 32, 2),
                                    _ResidualStage(32, 64, 2))
        self.pool = nn.AvgPool2d(8)
        self.fc = nn.Linear(64, classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.stages(self.stem(x))), 1))


def _separable(cin: int, cout: int, stride: int, kernel=3) -> list[nn.Module]:
    """Depthwise conv-bn-relu, then pointwise conv-bn-relu."""
    return [*_conv_bn(cin, cin, kernel, stride, 1, groups=cin), nn.ReLU(),
            *_conv_bn(cin, cout, 1), nn.ReLU()]


class MobileNetV1(ZooModel):
    input_shape = (3, 96, 96)

    def __init__(self, alpha: float = 0.25, classes: int = 2):
        super().__init__()
        width = [int(c * alpha) for c in (32, 64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512,
                                          1024, 1024)]
        strides = (1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1)
        layers = [*_conv_bn(3, width[0], 3, 2, 1), nn.ReLU()]
        for cin, cout, stride in zip(width, width[1:], strides):
            layers += _separable(cin, cout, stride)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AvgPool2d(self.input_shape[1] // 32)
        self.fc = nn.Linear(width[-1], classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


class DSCNN(ZooModel):
    input_shape = (1, 49, 10)

    def __init__(self, filters: int = 64, classes: int = 12):
        super().__init__()
        layers = [*_conv_bn(1, filters, (10, 4), 2, (5, 1)), nn.ReLU(), nn.Dropout(0.2)]
        for _ in range(4):
            layers += _separable(filters, filters, 1)
        self.features = nn.Sequential(*layers, nn.Dropout(0.4))
        self.pool = nn.AvgPool2d((self.input_shape[1] // 2, self.input_shape[2] // 2))
        self.fc = nn.Linear(filters, classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


class AutoEncoder(ZooModel):
    input_shape = (640, 1, 1)

    def __init__(self, features: int = 640, hidden: int = 128, code: int = 8):
        super().__init__()
        widths = [features] + [hidden] * 4 + [code] + [hidden] * 4
        layers = []
        for cin, cout in zip(widths, widths[1:]):
            layers += [nn.Linear(cin, cout), nn.BatchNorm1d(cout), nn.ReLU()]
        self.body = nn.Sequential(*layers, nn.Linear(hidden, features))

    def forward(self, x):
        return self.body(torch.flatten(x, 1))


MODELS = (ResNet8, MobileNetV1, DSCNN, AutoEncoder)
