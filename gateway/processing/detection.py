"""YOLOv5 post-processing: confidence filter, class-aware NMS, boxes back to original pixels."""

from __future__ import annotations

import dataclasses

import numpy as np

from gateway.processing.images import Letterbox

_MAX_WH = 7680.0  # class offset for class-aware NMS, as in YOLOv5
# Most candidates fed to NMS, best first. YOLOv5 uses 30000; at most max_det (300) survive and
# each greedy step costs O(candidates), so 3000 keeps the worst case (a near-zero threshold) cheap.
_MAX_NMS = 3000


@dataclasses.dataclass(frozen=True)
class Detections:
    """Detections of one image.

    Args:
        boxes: float32 [N, 4] ``x1, y1, x2, y2`` in original-image pixels.
        scores: float32 [N] objectness x class probability.
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
    x1 = np.maximum(box[0], boxes[:, 0])
    y1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[2], boxes[:, 2])
    y2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-9)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, max_keep: int | None = None) -> np.ndarray:
    """Greedy non-maximum suppression; returns kept indices, highest score first.

    Stops after ``max_keep`` boxes: greedy NMS never revisits a kept box, so the first ``max_keep``
    are final, and the work stays bounded however many candidates pass the threshold.
    """
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size and (max_keep is None or len(keep) < max_keep):
        best = int(order[0])
        keep.append(best)
        if order.size == 1:
            break
        rest = order[1:]
        order = rest[box_iou(boxes[best], boxes[rest]) <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def postprocess_detections(
    prediction: np.ndarray,
    letterbox: Letterbox,
    conf_threshold: float,
    iou_threshold: float,
    max_det: int,
) -> Detections:
    """Turn one image's raw YOLOv5 output [N, 5 + classes] into final detections."""
    candidates = prediction[prediction[:, 4] > conf_threshold]
    class_scores = candidates[:, 5:] * candidates[:, 4:5]
    classes = class_scores.argmax(axis=1)
    scores = class_scores[np.arange(len(classes)), classes]
    keep = scores > conf_threshold
    boxes, scores, classes = xywh_to_xyxy(candidates[keep, :4]), scores[keep], classes[keep]
    if len(scores) > _MAX_NMS:
        top = np.argsort(-scores, kind="stable")[:_MAX_NMS]
        boxes, scores, classes = boxes[top], scores[top], classes[top]
    kept = nms(boxes + (classes[:, None] * _MAX_WH), scores, iou_threshold, max_det)
    boxes, scores, classes = boxes[kept], scores[kept], classes[kept]
    boxes = (boxes - np.array([letterbox.pad_x, letterbox.pad_y] * 2, dtype=np.float32)) / letterbox.gain
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, letterbox.width)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, letterbox.height)
    return Detections(boxes.astype(np.float32), scores.astype(np.float32), classes.astype(np.int64))
