from __future__ import annotations

import numpy as np

from gateway.processing.detection import nms, postprocess_detections
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
    pred = np.zeros((3, 85), dtype=np.float32)
    # Two heavily overlapping boxes of different classes both survive; a third below threshold does not.
    pred[0, :5] = [32, 32, 20, 20, 0.9]
    pred[0, 5 + 0] = 1.0
    pred[1, :5] = [33, 33, 20, 20, 0.9]
    pred[1, 5 + 16] = 0.5
    pred[2, :5] = [10, 10, 4, 4, 0.9]
    pred[2, 5 + 2] = 0.1
    box = Letterbox(gain=0.5, pad_x=0, pad_y=16, width=128, height=64)
    result = postprocess_detections(pred, box, conf_threshold=0.25, iou_threshold=0.45, max_det=300)
    assert result.classes.tolist() == [0, 16]
    np.testing.assert_allclose(result.boxes[0], [44, 12, 84, 52])
    np.testing.assert_allclose(result.scores, [0.9, 0.45], rtol=1e-6)


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
    pred = np.zeros((25200, 85), dtype=np.float32)
    pred[:, :2] = rng.uniform(0, 640, (25200, 2))
    pred[:, 2:4] = rng.uniform(2, 10, (25200, 2))
    pred[:, 4] = rng.uniform(0.5, 1.0, 25200)
    pred[np.arange(25200), 5 + rng.integers(0, 80, 25200)] = 0.9
    box = Letterbox(gain=1.0, pad_x=0, pad_y=0, width=640, height=640)
    result = postprocess_detections(pred, box, conf_threshold=1e-6, iou_threshold=0.45, max_det=300)
    assert len(result.scores) == 300
    assert (np.diff(result.scores) <= 0).all()
