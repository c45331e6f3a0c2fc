from __future__ import annotations

import numpy as np
import pytest

from gateway.processing.detection import box_iou, nms, postprocess_detections
from gateway.processing.images import Letterbox, letterbox


def test_nms_keeps_the_best_of_overlapping_boxes() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]], dtype=np.float32)
    scores = np.array([0.8, 0.9, 0.5], dtype=np.float32)
    assert nms(boxes, scores, 0.5).tolist() == [1, 2]
    assert nms(boxes, scores, 0.99).tolist() == [1, 0, 2]


def test_letterbox_pads_with_114_and_centres() -> None:
    image = np.zeros((100, 200, 3), dtype=np.uint8)
    canvas, box = letterbox(image, 64)
    assert canvas.shape == (64, 64, 3)
    assert box.gain == 64 / 200 and box.pad_x == 0 and box.pad_y == 16
    assert (canvas[:16] == 114).all() and (canvas[48:] == 114).all() and (canvas[16:48] == 0).all()


def test_postprocess_is_class_aware_and_maps_back_to_original_pixels() -> None:
    # Rows as the engines return them: cx, cy, w, h, score, class_id, best score first.
    rows = np.array(
        [
            [32, 32, 20, 20, 0.9, 0],
            [33, 33, 20, 20, 0.45, 16],  # overlaps the first heavily, other class: survives
            [10, 10, 4, 4, 0.09, 2],  # under the threshold
        ],
        dtype=np.float32,
    )
    box = Letterbox(gain=0.5, pad_x=0, pad_y=16, width=128, height=64)
    result = postprocess_detections(rows, box, conf_threshold=0.25, iou_threshold=0.45, max_det=300)
    assert result.classes.tolist() == [0, 16]
    np.testing.assert_allclose(result.boxes[0], [44, 12, 84, 52])
    np.testing.assert_allclose(result.scores, [0.9, 0.45], rtol=1e-6)
    same_class = rows.copy()
    same_class[1, 5] = 0
    assert postprocess_detections(same_class, box, 0.25, 0.45, 300).classes.tolist() == [0]


def test_postprocess_refuses_rows_of_another_layout() -> None:
    box = Letterbox(gain=1.0, pad_x=0, pad_y=0, width=640, height=640)
    with pytest.raises(ValueError, match="detections"):
        postprocess_detections(np.zeros((25200, 85), np.float32), box, 0.25, 0.45, 300)


def _greedy_nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """The one-box-at-a-time greedy loop the vectorised NMS replaces (the reference)."""
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size:
        best = int(order[0])
        keep.append(best)
        order = order[1:][box_iou(boxes[best], boxes[order[1:]]) <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


@pytest.mark.parametrize(("n", "spread", "classes"), [(3000, 640, 80), (3000, 100, 1), (500, 50, 3), (40, 640, 2)])
def test_vectorised_nms_equals_greedy_nms(n: int, spread: float, classes: int) -> None:
    rng = np.random.default_rng(n + classes)
    xy = rng.uniform(0, spread, (n, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 60, (n, 2))], axis=1).astype(np.float32)
    boxes = boxes + rng.integers(0, classes, n)[:, None] * 7680.0
    scores = (rng.integers(0, 40, n) / 40).astype(np.float32)  # many ties: index order decides
    for iou in (0.3, 0.45, 0.7):
        np.testing.assert_array_equal(nms(boxes, scores, iou), _greedy_nms(boxes, scores, iou))


def test_nms_of_nothing_is_nothing() -> None:
    assert nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), 0.45, 300).tolist() == []


def test_nms_stopped_at_max_keep_is_a_prefix_of_full_nms() -> None:
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 640, (3000, 2)).astype(np.float32)
    boxes = np.concatenate([xy, xy + rng.uniform(5, 60, (3000, 2)).astype(np.float32)], axis=1)
    scores = rng.random(3000).astype(np.float32)
    full = nms(boxes, scores, 0.45)
    assert len(full) > 300
    np.testing.assert_array_equal(nms(boxes, scores, 0.45, max_keep=300), full[:300])


def test_near_zero_threshold_keeps_at_most_max_det() -> None:
    rng = np.random.default_rng(1)
    rows = np.zeros((3000, 6), dtype=np.float32)
    rows[:, :2] = rng.uniform(0, 640, (3000, 2))
    rows[:, 2:4] = rng.uniform(2, 10, (3000, 2))
    rows[:, 4] = np.sort(rng.uniform(0.5, 1.0, 3000))[::-1]
    rows[:, 5] = rng.integers(0, 80, 3000)
    box = Letterbox(gain=1.0, pad_x=0, pad_y=0, width=640, height=640)
    result = postprocess_detections(rows, box, conf_threshold=1e-6, iou_threshold=0.45, max_det=300)
    assert len(result.scores) == 300
    assert (np.diff(result.scores) <= 0).all()
