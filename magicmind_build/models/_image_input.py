"""uint8 NHWC input with normalisation inside the graph, shared by the vision models."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class Uint8NHWCInput(nn.Module):
    """uint8 [B, H, W, 3] RGB -> float32 [B, 3, H, W], ``(x / 255 - mean) / std``."""

    scale: torch.Tensor
    shift: torch.Tensor

    def __init__(self, mean: Sequence[float] = (0.0, 0.0, 0.0), std: Sequence[float] = (1.0, 1.0, 1.0)) -> None:
        super().__init__()
        self.register_buffer(
            "scale", (1.0 / (255.0 * torch.tensor(std, dtype=torch.float32))).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer(
            "shift", (-torch.tensor(mean, dtype=torch.float32) / torch.tensor(std)).view(1, 3, 1, 1), persistent=False
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.permute(0, 3, 1, 2).to(torch.float32) * self.scale + self.shift


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
