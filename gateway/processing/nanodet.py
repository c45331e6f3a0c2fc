"""NanoDet head decode into the YOLO row layout, so the gateway's confidence filter, class-aware NMS and
letterbox un-scaling (``gateway.processing.detection.postprocess_detections``) apply unchanged.

As NanoDet's GFL head is decoded: anchor point centres ``(x + 0.5, y + 0.5) * stride`` for strides 8, 16,
32 (row-major per level); each box side's distance is the expectation of its softmax over ``reg_max + 1``
bins, times the stride; boxes are clipped to the input. Class scores are already sigmoid probabilities
(GFL's joint quality/class score, no separate objectness), so objectness is 1 and a row's score is its
class score.
"""

from __future__ import annotations

import numpy as np

STRIDES = (8, 16, 32)


def anchor_centers(img_size: int, strides: tuple[int, ...] = STRIDES) -> tuple[np.ndarray, np.ndarray]:
    """Anchor-point centres [N, 2] (x, y) in input pixels and their strides [N], in the engine's row order."""
    centers, steps = [], []
    for stride in strides:
        n = int(np.ceil(img_size / stride))
        ys, xs = np.meshgrid(np.arange(n, dtype=np.float32), np.arange(n, dtype=np.float32), indexing="ij")
        centers.append((np.stack([xs.ravel(), ys.ravel()], axis=1) + 0.5) * stride)
        steps.append(np.full(n * n, stride, dtype=np.float32))
    return np.concatenate(centers), np.concatenate(steps)


def nanodet_to_yolo(scores: np.ndarray, distances: np.ndarray, img_size: int) -> np.ndarray:
    """One image's NanoDet outputs (``scores`` [N, C], ``distances`` [N, 4, bins] logits, sides l, t, r, b)
    as YOLO rows [N, 5 + C]: box centre x, y, width, height in input pixels, objectness 1, class scores."""
    centers, steps = anchor_centers(img_size)
    if scores.shape[0] != len(centers) or distances.shape[0] != len(centers):
        raise ValueError(f"engine returned {scores.shape[0]} anchor points, expected {len(centers)} for {img_size}")
    logits = distances.astype(np.float32)
    logits = np.exp(logits - logits.max(axis=2, keepdims=True))
    probs = logits / logits.sum(axis=2, keepdims=True)
    dist = (probs @ np.arange(probs.shape[2], dtype=np.float32)) * steps[:, None]
    xyxy = np.concatenate([centers - dist[:, :2], centers + dist[:, 2:]], axis=1).clip(0, img_size)
    rows = np.empty((len(centers), 5 + scores.shape[1]), dtype=np.float32)
    rows[:, 0:2] = (xyxy[:, 0:2] + xyxy[:, 2:4]) / 2
    rows[:, 2:4] = xyxy[:, 2:4] - xyxy[:, 0:2]
    rows[:, 4] = 1.0
    rows[:, 5:] = scores
    return rows
