"""torchvision's classic ImageNet architectures, written after torchvision's definitions
(same layers; torchvision itself is not a dependency), with 10 classes (`classes`; with
1000 the parameter counts are torchvision's), compiled for 64x64 inputs so that each
compiles and simulates in seconds: the global pools adapt, so every conv weight is that
of the 224x224 model.

- ResNet18: 7x7 stride-2 stem, 3x3 stride-2 max pool with padding 1, four stages of two
  basic blocks, global average pool.
- MobileNetV2: width 0.35 (torchvision's `width_mult`), inverted residuals with ReLU6.
- MobileNetV3Small: hard-swish, hard-sigmoid squeeze-excitation.
- SqueezeNet11: SqueezeNet 1.1, fire modules, max pools with ceil_mode.
- ShuffleNetV2: x0.5, channel split (chunk), concatenation and channel shuffle
  (view -> transpose -> contiguous -> view), `mean` as the global pool.
- GoogLeNet: inception modules, max pools with ceil_mode and padding (no auxiliary
  classifiers, no input transform, as torchvision's at inference).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from hwq.examples.zoo import ZooModel

CLASSES = 10
_INPUT = (3, 64, 64)


def _make_divisible(v: float, divisor: int = 8) -> int:
    """torchvision's channel rounding: to the nearest multiple of `divisor`, not below 90%."""
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


def _conv_bn_act(cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1,
                 act=nn.ReLU, eps: float = 1e-5, momentum: float = 0.1) -> nn.Sequential:
    """torchvision's Conv2dNormActivation: conv without bias, BatchNorm, activation."""
    layers = [nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
              nn.BatchNorm2d(cout, eps=eps, momentum=momentum)]
    return nn.Sequential(*layers, *([act()] if act is not None else []))


# --- ResNet-18 ----------------------------------------------------------------------

class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        identity = x if self.downsample is None else self.downsample(x)
        return torch.relu(out + identity)


class ResNet18(ZooModel):
    input_shape = _INPUT

    def __init__(self, classes: int = CLASSES):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        blocks, cin = [], 64
        for stage, cout in enumerate((64, 128, 256, 512)):
            for block in range(2):
                blocks.append(_BasicBlock(cin, cout, 2 if stage > 0 and block == 0 else 1))
                cin = cout
        self.layers = nn.Sequential(*blocks)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512, classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(self.avgpool(self.layers(x)), 1))


# --- MobileNetV2 --------------------------------------------------------------------

class _InvertedResidualV2(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = int(round(cin * expand))
        self.use_res_connect = stride == 1 and cin == cout
        layers = [_conv_bn_act(cin, hidden, 1, act=nn.ReLU6)] if expand != 1 else []
        layers += [_conv_bn_act(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6),
                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(ZooModel):
    input_shape = _INPUT
    SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
               (6, 160, 3, 2), (6, 320, 1, 1))

    def __init__(self, width_mult: float = 0.35, classes: int = CLASSES):
        super().__init__()
        cin = _make_divisible(32 * width_mult)
        last = _make_divisible(1280 * max(1.0, width_mult))
        features = [_conv_bn_act(3, cin, 3, 2, act=nn.ReLU6)]
        for t, c, n, s in self.SETTING:
            cout = _make_divisible(c * width_mult)
            for i in range(n):
                features.append(_InvertedResidualV2(cin, cout, s if i == 0 else 1, t))
                cin = cout
        features.append(_conv_bn_act(cin, last, 1, act=nn.ReLU6))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, classes))

    def forward(self, x):
        x = F.adaptive_avg_pool2d(self.features(x), (1, 1))
        return self.classifier(torch.flatten(x, 1))


# --- MobileNetV3-Small --------------------------------------------------------------

class _SqueezeExcitation(nn.Module):
    def __init__(self, channels: int, squeeze: int):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.activation = nn.ReLU()
        self.scale_activation = nn.Hardsigmoid()

    def forward(self, x):
        scale = self.fc2(self.activation(self.fc1(self.avgpool(x))))
        return self.scale_activation(scale) * x


class _InvertedResidualV3(nn.Module):
    def __init__(self, cin: int, kernel: int, expanded: int, cout: int, se: bool, hs: bool, stride: int):
        super().__init__()
        norm = dict(eps=0.001, momentum=0.01)
        act = nn.Hardswish if hs else nn.ReLU
        self.use_res_connect = stride == 1 and cin == cout
        layers = [_conv_bn_act(cin, expanded, 1, act=act, **norm)] if expanded != cin else []
        layers.append(_conv_bn_act(expanded, expanded, kernel, stride, groups=expanded, act=act, **norm))
        if se:
            layers.append(_SqueezeExcitation(expanded, _make_divisible(expanded // 4)))
        layers.append(_conv_bn_act(expanded, cout, 1, act=None, **norm))
        self.block = nn.Sequential(*layers)

    def forward(self, x):
        result = self.block(x)
        return result + x if self.use_res_connect else result


class MobileNetV3Small(ZooModel):
    input_shape = _INPUT
    # input, kernel, expanded, output, squeeze-excitation, hard-swish, stride
    SETTING = ((16, 3, 16, 16, True, False, 2), (16, 3, 72, 24, False, False, 2),
               (24, 3, 88, 24, False, False, 1), (24, 5, 96, 40, True, True, 2),
               (40, 5, 240, 40, True, True, 1), (40, 5, 240, 40, True, True, 1),
               (40, 5, 120, 48, True, True, 1), (48, 5, 144, 48, True, True, 1),
               (48, 5, 288, 96, True, True, 2), (96, 5, 576, 96, True, True, 1),
               (96, 5, 576, 96, True, True, 1))

    def __init__(self, classes: int = CLASSES):
        super().__init__()
        norm = dict(eps=0.001, momentum=0.01)
        layers = [_conv_bn_act(3, 16, 3, 2, act=nn.Hardswish, **norm)]
        layers += [_InvertedResidualV3(*setting) for setting in self.SETTING]
        layers.append(_conv_bn_act(96, 576, 1, act=nn.Hardswish, **norm))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(576, 1024), nn.Hardswish(), nn.Dropout(0.2),
                                        nn.Linear(1024, classes))

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


# --- SqueezeNet 1.1 -----------------------------------------------------------------

class _Fire(nn.Module):
    def __init__(self, cin: int, squeeze: int, expand1x1: int, expand3x3: int):
        super().__init__()
        self.squeeze = nn.Conv2d(cin, squeeze, 1)
        self.expand1x1 = nn.Conv2d(squeeze, expand1x1, 1)
        self.expand3x3 = nn.Conv2d(squeeze, expand3x3, 3, padding=1)

    def forward(self, x):
        x = torch.relu(self.squeeze(x))
        return torch.cat([torch.relu(self.expand1x1(x)), torch.relu(self.expand3x3(x))], 1)


class SqueezeNet11(ZooModel):
    input_shape = _INPUT

    def __init__(self, classes: int = CLASSES):
        super().__init__()
        pool = lambda: nn.MaxPool2d(3, 2, ceil_mode=True)  # noqa: E731
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 3, 2), nn.ReLU(), pool(),
            _Fire(64, 16, 64, 64), _Fire(128, 16, 64, 64), pool(),
            _Fire(128, 32, 128, 128), _Fire(256, 32, 128, 128), pool(),
            _Fire(256, 48, 192, 192), _Fire(384, 48, 192, 192), _Fire(384, 64, 256, 256),
            _Fire(512, 64, 256, 256))
        self.classifier = nn.Sequential(nn.Dropout(0.5), nn.Conv2d(512, classes, 1), nn.ReLU(),
                                        nn.AdaptiveAvgPool2d((1, 1)))

    def forward(self, x):
        return torch.flatten(self.classifier(self.features(x)), 1)


# --- ShuffleNetV2 -------------------------------------------------------------------

def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    batch, channels, height, width = x.size()
    x = x.view(batch, groups, channels // groups, height, width)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(batch, channels, height, width)


class _ShuffleUnit(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.stride = stride
        branch = cout // 2
        if stride > 1:
            self.branch1 = nn.Sequential(
                nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin),
                nn.Conv2d(cin, branch, 1, bias=False), nn.BatchNorm2d(branch), nn.ReLU())
        self.branch2 = nn.Sequential(
            nn.Conv2d(cin if stride > 1 else branch, branch, 1, bias=False), nn.BatchNorm2d(branch),
            nn.ReLU(),
            nn.Conv2d(branch, branch, 3, stride, 1, groups=branch, bias=False), nn.BatchNorm2d(branch),
            nn.Conv2d(branch, branch, 1, bias=False), nn.BatchNorm2d(branch), nn.ReLU())

    def forward(self, x):
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(ZooModel):
    input_shape = _INPUT

    def __init__(self, repeats=(4, 8, 4), channels=(24, 48, 96, 192, 1024), classes: int = CLASSES):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(3, channels[0], 3, 2, 1, bias=False),
                                   nn.BatchNorm2d(channels[0]), nn.ReLU())
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        stages, cin = [], channels[0]
        for n, cout in zip(repeats, channels[1:]):
            stages += [_ShuffleUnit(cin, cout, 2)] + [_ShuffleUnit(cout, cout, 1) for _ in range(n - 1)]
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.conv5 = nn.Sequential(nn.Conv2d(cin, channels[-1], 1, bias=False),
                                   nn.BatchNorm2d(channels[-1]), nn.ReLU())
        self.fc = nn.Linear(channels[-1], classes)

    def forward(self, x):
        x = self.conv5(self.stages(self.maxpool(self.conv1(x))))
        return self.fc(x.mean([2, 3]))


# --- GoogLeNet ----------------------------------------------------------------------

def _basic(cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, padding, bias=False),
                         nn.BatchNorm2d(cout, eps=0.001), nn.ReLU())


class _Inception(nn.Module):
    def __init__(self, cin, ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj):
        super().__init__()
        self.branch1 = _basic(cin, ch1x1, 1)
        self.branch2 = nn.Sequential(_basic(cin, ch3x3red, 1), _basic(ch3x3red, ch3x3, 3, padding=1))
        # torchvision's "5x5" branch is a 3x3 conv (kept for its pretrained weights)
        self.branch3 = nn.Sequential(_basic(cin, ch5x5red, 1), _basic(ch5x5red, ch5x5, 3, padding=1))
        self.branch4 = nn.Sequential(nn.MaxPool2d(3, 1, 1, ceil_mode=True), _basic(cin, pool_proj, 1))

    def forward(self, x):
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class GoogLeNet(ZooModel):
    input_shape = _INPUT

    def __init__(self, classes: int = CLASSES):
        super().__init__()
        pool = lambda k=3: nn.MaxPool2d(k, 2, ceil_mode=True)  # noqa: E731
        self.features = nn.Sequential(
            _basic(3, 64, 7, 2, 3), pool(), _basic(64, 64, 1), _basic(64, 192, 3, padding=1), pool(),
            _Inception(192, 64, 96, 128, 16, 32, 32), _Inception(256, 128, 128, 192, 32, 96, 64), pool(),
            _Inception(480, 192, 96, 208, 16, 48, 64), _Inception(512, 160, 112, 224, 24, 64, 64),
            _Inception(512, 128, 128, 256, 24, 64, 64), _Inception(512, 112, 144, 288, 32, 64, 64),
            _Inception(528, 256, 160, 320, 32, 128, 128), pool(2),
            _Inception(832, 256, 160, 320, 32, 128, 128), _Inception(832, 384, 192, 384, 48, 128, 128))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(0.2)
        self.fc = nn.Linear(1024, classes)

    def forward(self, x):
        return self.fc(self.dropout(torch.flatten(self.avgpool(self.features(x)), 1)))


MODELS = (ResNet18, MobileNetV2, MobileNetV3Small, SqueezeNet11, ShuffleNetV2, GoogLeNet)
