"""Detection post-processing for the detectors' compact output: confidence filter, class-aware NMS,
boxes back to original pixels.

Both detectors (YOLOv5, NanoDet) return ``detections`` [top_k, 6] per image from the engine: ``cx, cy,
w, h`` in input pixels, score (YOLOv5: objectness x best class probability; NanoDet: best class
sigmoid), class id; the best ``top_k`` (3000) scores, highest first. Nothing else is baked into the
engine, so this gives the detections the full [N, 85] rows gave at any threshold (see
``magicmind_build/models/_detections.py``).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from gateway.processing.images import Letterbox

_MAX_WH = 7680.0  # class offset for class-aware NMS, as in YOLOv5
# Most candidates fed to NMS, best first (the engines return this many rows at most). YOLOv5 uses
# 30000; at most max_det (300) survive, so 3000 keeps the worst case (a near-zero threshold) cheap.
_MAX_NMS = 3000
# Candidates NMS settles per step, in rank order (one [block, block] and one [kept, rest] IoU matrix each).
_NMS_BLOCK = 128
COLUMNS = 6  # cx, cy, w, h, score, class_id


@dataclasses.dataclass(frozen=True)
class Detections:
    """Detections of one image.

    Args:
        boxes: float32 [N, 4] ``x1, y1, x2, y2`` in original-image pixels.
        scores: float32 [N] the detection score (see the module docstring).
        classes: int64 [N] class ids.
    """

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray


def xywh_to_xyxy(xywh: np.ndarray) -> np.ndarray:
    xy, half = xywh[:, :2], xywh[:, 2:4] / 2
    return np.concatenate([xy - half, xy + half], axis=1)


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one box [4] against boxes [N, 4]."""
    return pairwise_iou(box[None], boxes)[0]


def pairwise_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` [M, 4] against every box in ``b`` [N, 4]: [M, N]."""
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)  # type: ignore[no-any-return]


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, max_keep: int | None = None) -> np.ndarray:
    """Greedy non-maximum suppression, vectorised; returns kept indices, highest score first.

    Exactly the greedy result: a box is kept iff no kept box ranked before it (by score, ties in index
    order) overlaps it by more than ``iou_threshold``. Candidates are taken in rank order, ``_NMS_BLOCK``
    at a time: inside a block the keep decision is Cluster-NMS's fixed point (one matrix of "ranked
    before and overlapping" pairs; ``keep = no kept box suppresses it``, repeated until it stops
    changing, each pass settling at least the next box), then the block's kept boxes remove every
    later candidate they overlap, in one matrix. Stops once ``max_keep`` are kept (greedy NMS never
    revisits a kept box), so the work stays bounded however many candidates pass the threshold.
    """
    remaining = np.argsort(-scores, kind="stable")
    kept: list[np.ndarray] = []
    count = 0
    while remaining.size and (max_keep is None or count < max_keep):
        block, rest = remaining[:_NMS_BLOCK], remaining[_NMS_BLOCK:]
        suppresses = np.triu(pairwise_iou(boxes[block], boxes[block]) > iou_threshold, k=1)
        keep = np.ones(len(block), dtype=bool)
        while True:
            updated = ~suppresses[keep].any(axis=0)
            if np.array_equal(updated, keep):
                break
            keep = updated
        winners = block[keep]
        kept.append(winners)
        count += len(winners)
        if rest.size:
            rest = rest[~(pairwise_iou(boxes[winners], boxes[rest]) > iou_threshold).any(axis=0)]
        remaining = rest
    result = np.concatenate(kept) if kept else np.zeros(0, dtype=np.int64)
    return result[:max_keep].astype(np.int64)


def postprocess_detections(
    detections: np.ndarray,
    letterbox: Letterbox,
    conf_threshold: float,
    iou_threshold: float,
    max_det: int,
) -> Detections:
    """Turn one image's engine rows [K, 6] (``cx, cy, w, h, score, class_id``) into final detections."""
    if detections.ndim != 2 or detections.shape[1] != COLUMNS:
        raise ValueError(f"expected detections [K, {COLUMNS}], got {list(detections.shape)}")
    candidates = detections[detections[:, 4] > conf_threshold]
    if len(candidates) > _MAX_NMS:
        candidates = candidates[np.argsort(-candidates[:, 4], kind="stable")[:_MAX_NMS]]
    boxes, scores = xywh_to_xyxy(candidates[:, :4]), candidates[:, 4]
    classes = candidates[:, 5].astype(np.int64)
    kept = nms(boxes + (classes[:, None] * _MAX_WH), scores, iou_threshold, max_det)
    boxes, scores, classes = boxes[kept], scores[kept], classes[kept]
    boxes = (boxes - np.array([letterbox.pad_x, letterbox.pad_y] * 2, dtype=np.float32)) / letterbox.gain
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, letterbox.width)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, letterbox.height)
    return Detections(boxes.astype(np.float32), scores.astype(np.float32), classes.astype(np.int64))
