"""YOLOv5 v6.x (``yolov5n``: depth 0.33, width 0.25), faithful to the Ultralytics architecture.

Module indices and parameter names match Ultralytics' ``model.N...`` keys, so the ``state_dict`` of
an Ultralytics checkpoint (``torch.save(ckpt["model"].float().state_dict(), "yolov5n_sd.pt")``)
loads unchanged. The graph takes uint8 NHWC RGB [B, 640, 640, 3]; its decoded predictions
[B, 25200, 85] (``cx, cy, w, h`` in input pixels, objectness, 80 class probabilities;
:meth:`YoloV5.predictions`) are reduced inside the graph to ``detections`` [B, 3000, 6]: per box
``cx, cy, w, h``, score = objectness x best class probability, class id; the 3000 best scores, best
first (see :mod:`magicmind_build.models._detections`).
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from magicmind_build.models._detections import TOP_K, TopDetections
from magicmind_build.models._image_input import Uint8NHWCInput

ANCHORS = (
    (10, 13, 16, 30, 33, 23),  # P3/8
    (30, 61, 62, 45, 59, 119),  # P4/16
    (116, 90, 156, 198, 373, 326),  # P5/32
)
STRIDES = (8, 16, 32)


@dataclasses.dataclass(frozen=True)
class YoloV5Config:
    """YOLOv5 hyper-parameters.

    Args:
        depth_multiple: scales the number of bottlenecks per C3 (0.33 for ``n``).
        width_multiple: scales channel counts (0.25 for ``n``).
        num_classes: number of classes (80 for COCO).
        img_size: square input size the engine is built for.
        top_k: boxes the engine returns per image, best score first (no score threshold is baked in).
    """

    depth_multiple: float = 0.33
    width_multiple: float = 0.25
    num_classes: int = 80
    img_size: int = 640
    top_k: int = TOP_K


def _autopad(k: int, p: int | None) -> int:
    return k // 2 if p is None else p


class Conv(nn.Module):
    """Conv2d (no bias) + BatchNorm + SiLU."""

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, p: int | None = None, act: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, _autopad(k, p), bias=False)
        self.bn = nn.BatchNorm2d(c2, eps=1e-3, momentum=0.03)
        self.act = nn.SiLU() if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    def __init__(self, c1: int, c2: int, shortcut: bool = True, e: float = 0.5) -> None:
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_, c2, 3, 1)
        self.add = shortcut and c1 == c2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C3(nn.Module):
    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = True, e: float = 0.5) -> None:
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c1, c_, 1, 1)
        self.cv3 = Conv(2 * c_, c2, 1)
        self.m = nn.Sequential(*(Bottleneck(c_, c_, shortcut, e=1.0) for _ in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


class SPPF(nn.Module):
    def __init__(self, c1: int, c2: int, k: int = 5) -> None:
        super().__init__()
        c_ = c1 // 2
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_ * 4, c2, 1, 1)
        self.m = nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)
        y1 = self.m(x)
        y2 = self.m(y1)
        return self.cv2(torch.cat((x, y1, y2, self.m(y2)), 1))


class Concat(nn.Module):
    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(xs, 1)


class Detect(nn.Module):
    """Three 1x1 heads and the v6 box decode (``xy = (2s - 0.5 + grid) * stride``, ``wh = (2s)^2 * anchor``)."""

    anchors: torch.Tensor

    def __init__(self, num_classes: int, channels: tuple[int, ...], img_size: int) -> None:
        super().__init__()
        self.nc = num_classes
        self.no = num_classes + 5
        self.na = len(ANCHORS[0]) // 2
        self.m = nn.ModuleList(nn.Conv2d(c, self.no * self.na, 1) for c in channels)
        strides = torch.tensor(STRIDES, dtype=torch.float32)
        # Ultralytics stores anchors in grid units.
        self.register_buffer(
            "anchors", torch.tensor(ANCHORS, dtype=torch.float32).view(3, 3, 2) / strides.view(-1, 1, 1)
        )
        self.stride = STRIDES
        self.img_size = img_size
        for i, s in enumerate(STRIDES):
            ny = nx = img_size // s
            yv, xv = torch.meshgrid(
                torch.arange(ny, dtype=torch.float32), torch.arange(nx, dtype=torch.float32), indexing="ij"
            )
            grid = torch.stack((xv, yv), 2).view(1, 1, ny, nx, 2) - 0.5
            self.register_buffer(f"grid{i}", grid, persistent=False)
        self._initialize_biases()

    def _initialize_biases(self) -> None:
        # Ultralytics' prior: ~8 objects per 640 image, class probability ~0.6 / nc.
        for conv, s in zip(self.m, self.stride):
            assert isinstance(conv, nn.Conv2d) and conv.bias is not None
            b = conv.bias.view(self.na, -1)
            with torch.no_grad():
                b[:, 4] += math.log(8 / (640 / s) ** 2)
                b[:, 5:] += math.log(0.6 / (self.nc - 0.99))

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        outputs = []
        for i, (conv, x) in enumerate(zip(self.m, xs)):
            x = conv(x)
            bs, _, ny, nx = x.shape
            y = x.view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).sigmoid()
            grid = getattr(self, f"grid{i}")
            anchor_grid = (self.anchors[i] * self.stride[i]).view(1, self.na, 1, 1, 2)
            xy = (y[..., 0:2] * 2 + grid) * self.stride[i]
            wh = (y[..., 2:4] * 2) ** 2 * anchor_grid
            outputs.append(torch.cat((xy, wh, y[..., 4:]), -1).reshape(bs, self.na * ny * nx, self.no))
        return torch.cat(outputs, 1)


class YoloV5(nn.Module):
    """Input ``images`` uint8 [B, S, S, 3] RGB (letterboxed); output ``detections`` float32 [B, top_k, 6]."""

    def __init__(self, cfg: YoloV5Config) -> None:
        super().__init__()
        self.config = cfg

        def ch(c: int) -> int:
            return int(math.ceil(c * cfg.width_multiple / 8) * 8)

        def n(k: int) -> int:
            return max(round(k * cfg.depth_multiple), 1)

        layers: list[nn.Module] = [
            Conv(3, ch(64), 6, 2, 2),  # 0 P1/2
            Conv(ch(64), ch(128), 3, 2),  # 1 P2/4
            C3(ch(128), ch(128), n(3)),  # 2
            Conv(ch(128), ch(256), 3, 2),  # 3 P3/8
            C3(ch(256), ch(256), n(6)),  # 4
            Conv(ch(256), ch(512), 3, 2),  # 5 P4/16
            C3(ch(512), ch(512), n(9)),  # 6
            Conv(ch(512), ch(1024), 3, 2),  # 7 P5/32
            C3(ch(1024), ch(1024), n(3)),  # 8
            SPPF(ch(1024), ch(1024), 5),  # 9
            Conv(ch(1024), ch(512), 1, 1),  # 10
            nn.Upsample(scale_factor=2, mode="nearest"),  # 11
            Concat(),  # 12 cat backbone P4
            C3(ch(1024), ch(512), n(3), False),  # 13
            Conv(ch(512), ch(256), 1, 1),  # 14
            nn.Upsample(scale_factor=2, mode="nearest"),  # 15
            Concat(),  # 16 cat backbone P3
            C3(ch(512), ch(256), n(3), False),  # 17 (P3/8-small)
            Conv(ch(256), ch(256), 3, 2),  # 18
            Concat(),  # 19 cat head P4
            C3(ch(512), ch(512), n(3), False),  # 20 (P4/16-medium)
            Conv(ch(512), ch(512), 3, 2),  # 21
            Concat(),  # 22 cat head P5
            C3(ch(1024), ch(1024), n(3), False),  # 23 (P5/32-large)
            Detect(cfg.num_classes, (ch(256), ch(512), ch(1024)), cfg.img_size),  # 24
        ]
        self.input = Uint8NHWCInput()
        self.model = nn.Sequential(*layers)
        self.top = TopDetections(cfg.top_k)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        prediction = self.predictions(images)
        # The same float32 product the gateway used to compute: objectness x class probability.
        return self.top(prediction[..., :4], prediction[..., 5:] * prediction[..., 4:5])

    def predictions(self, images: torch.Tensor) -> torch.Tensor:
        """The decoded head before the reduction: [B, N, 85] (``cx, cy, w, h``, objectness, classes)."""
        m = self.model
        x = self.input(images)
        x = m[1](m[0](x))
        x = m[2](x)
        p3 = m[4](m[3](x))
        p4 = m[6](m[5](p3))
        x = m[9](m[8](m[7](p4)))
        h10 = m[10](x)
        x = m[13](m[12]([m[11](h10), p4]))
        h14 = m[14](x)
        out17 = m[17](m[16]([m[15](h14), p3]))
        out20 = m[20](m[19]([m[18](out17), h14]))
        out23 = m[23](m[22]([m[21](out20), h10]))
        return m[24]([out17, out20, out23])
