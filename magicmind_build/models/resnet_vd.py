"""ResNet-vd (``ResNet50_vd`` as in PaddleClas): three-conv stem, stride on the 3x3 conv,
and an average-pool shortcut in downsampling blocks.

The graph takes uint8 NHWC RGB [B, 224, 224, 3] (resized and centre-cropped) and returns
1000 logits; ImageNet mean/std normalisation is inside the graph.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from magicmind_build.models._image_input import IMAGENET_MEAN, IMAGENET_STD, Uint8NHWCInput


@dataclasses.dataclass(frozen=True)
class ResNetVdConfig:
    """ResNet-vd hyper-parameters.

    Args:
        depths: bottleneck blocks per stage ((3, 4, 6, 3) for ResNet50).
        stem_width: channels of the stem's first two convs (the third has twice as many).
        base_width: bottleneck width of the first stage, doubled per stage.
        num_classes: number of logits.
        img_size: square input size the engine is built for.
    """

    depths: tuple[int, ...] = (3, 4, 6, 3)
    stem_width: int = 32
    base_width: int = 64
    num_classes: int = 1000
    img_size: int = 224


class ConvBN(nn.Module):
    def __init__(self, c1: int, c2: int, k: int, stride: int = 1, act: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, stride, (k - 1) // 2, bias=False)
        self.bn = nn.BatchNorm2d(c2)
        self.act = nn.ReLU(inplace=True) if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, c1: int, width: int, stride: int, first_stage: bool) -> None:
        super().__init__()
        c2 = width * self.expansion
        self.conv0 = ConvBN(c1, width, 1)
        self.conv1 = ConvBN(width, width, 3, stride)
        self.conv2 = ConvBN(width, c2, 1, act=False)
        self.short: nn.Module
        if c1 == c2 and stride == 1:
            self.short = nn.Identity()
        elif first_stage or stride == 1:
            self.short = ConvBN(c1, c2, 1, stride, act=False)
        else:  # the "d" in vd: average-pool, then a stride-1 projection
            self.short = nn.Sequential(nn.AvgPool2d(2, 2, ceil_mode=True), ConvBN(c1, c2, 1, act=False))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv2(self.conv1(self.conv0(x))) + self.short(x))


class ResNetVd(nn.Module):
    """Input ``images`` uint8 [B, S, S, 3] RGB; output ``logits`` float32 [B, num_classes]."""

    def __init__(self, cfg: ResNetVdConfig) -> None:
        super().__init__()
        self.config = cfg
        self.input = Uint8NHWCInput(IMAGENET_MEAN, IMAGENET_STD)
        sw = cfg.stem_width
        self.stem = nn.Sequential(ConvBN(3, sw, 3, 2), ConvBN(sw, sw, 3), ConvBN(sw, 2 * sw, 3), nn.MaxPool2d(3, 2, 1))
        stages = []
        c1 = 2 * sw
        for i, depth in enumerate(cfg.depths):
            width = cfg.base_width * 2**i
            blocks = []
            for j in range(depth):
                stride = 2 if j == 0 and i > 0 else 1
                blocks.append(Bottleneck(c1, width, stride, first_stage=i == 0))
                c1 = width * Bottleneck.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c1, cfg.num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(self.input(images)))
        return self.fc(torch.flatten(self.pool(x), 1))
