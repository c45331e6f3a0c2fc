"""The detectors' compact output, shared by YOLOv5 and NanoDet: the best ``top_k`` boxes, score-sorted.

Per box the graph keeps what the gateway's post-processing uses: ``cx, cy, w, h`` (input pixels),
``score`` (the best class's score: objectness x class probability for YOLOv5, the class sigmoid for
NanoDet) and ``class_id`` (that class, as a float; exact up to 2**24). ``detections`` fp32 [B, top_k, 6]
holds the ``top_k`` highest scores, highest first, ties by row index (ONNX TopK ``sorted=1``; ONNX
Runtime's CPU kernel orders equal values by index, as a stable sort does).

What is baked in: only ``top_k`` (3000, the most candidates the gateway ever fed NMS). No score threshold:
the boxes over any ``conf_threshold`` are a prefix of the rows, so the gateway's confidence filter and
class-aware NMS see exactly the candidates they saw when the engine returned every row, whatever the
threshold. A YOLOv5 row is [B, 25200, 85] before (8.5 MB per image); [B, 3000, 6] is 72 kB.
"""

from __future__ import annotations

import torch
from torch import nn

TOP_K = 3000  # the gateway's former _MAX_NMS: the most candidates its NMS considers
COLUMNS = ("cx", "cy", "w", "h", "score", "class_id")


class TopDetections(nn.Module):
    """``xywh`` [B, N, 4] + per-class scores [B, N, C] -> ``detections`` [B, min(top_k, N), 6].

    Args:
        top_k: rows kept per image, best score first.
    """

    def __init__(self, top_k: int = TOP_K) -> None:
        super().__init__()
        self.top_k = top_k

    def forward(self, xywh: torch.Tensor, class_scores: torch.Tensor) -> torch.Tensor:
        # ReduceMax + ArgMax (first index of the maximum, as numpy's argmax).
        score, class_id = class_scores.max(dim=2)
        k = min(self.top_k, int(score.shape[1]))
        top, index = score.topk(k, dim=1, largest=True, sorted=True)
        boxes = xywh.gather(1, index.unsqueeze(2).expand(-1, -1, 4))
        classes = class_id.gather(1, index).to(torch.float32)
        return torch.cat((boxes, top.unsqueeze(2), classes.unsqueeze(2)), dim=2)
