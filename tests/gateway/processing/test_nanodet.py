"""NanoDet head decode: anchor layout and the GFL distance expectation, on hand-made outputs."""

from __future__ import annotations

import numpy as np

from gateway.processing.detection import postprocess_detections
from gateway.processing.images import Letterbox
from gateway.processing.nanodet import anchor_centers, nanodet_to_yolo


def test_anchor_centres_follow_the_engine_row_order() -> None:
    centers, strides = anchor_centers(416)
    assert len(centers) == 52 * 52 + 26 * 26 + 13 * 13 == 3549
    np.testing.assert_array_equal(centers[0], [4, 4])  # stride 8, (0 + 0.5) * 8
    np.testing.assert_array_equal(centers[1], [12, 4])  # row-major: x moves first
    np.testing.assert_array_equal(centers[52], [4, 12])
    np.testing.assert_array_equal(centers[2704], [8, 8])  # first stride-16 point
    np.testing.assert_array_equal(centers[-1], [400, 400])  # last stride-32 point, (12 + 0.5) * 32
    assert strides[2703] == 8 and strides[2704] == 16 and strides[-1] == 32


def _one_hot_distances(n: int, bins: np.ndarray) -> np.ndarray:
    """Logits whose softmax puts (almost) all mass on ``bins[side]`` for every point."""
    logits = np.full((n, 4, 11), -50.0, dtype=np.float32)
    for side, b in enumerate(bins):
        logits[:, side, b] = 50.0
    return logits


def test_distances_are_the_softmax_expectation_times_the_stride() -> None:
    scores = np.zeros((3549, 80), dtype=np.float32)
    scores[2704 + 26 * 10 + 5, 15] = 0.9  # stride 16, x=5, y=10: centre (88, 168); class 15 (cat)
    rows = nanodet_to_yolo(scores, _one_hot_distances(3549, np.array([2, 1, 3, 4])), 416)
    row = rows[2704 + 26 * 10 + 5]
    # box: x1 = 88 - 2*16, y1 = 168 - 1*16, x2 = 88 + 3*16, y2 = 168 + 4*16 -> centre (96, 192), size 80 x 80
    np.testing.assert_allclose(row[:4], [96, 192, 80, 80], atol=1e-3)
    assert row[4] == 1.0 and row[5 + 15] == np.float32(0.9)

    uniform = nanodet_to_yolo(scores, np.zeros((3549, 4, 11), dtype=np.float32), 416)
    # uniform bins: expectation 5 bins per side -> 10 strides wide, clipped to the input
    np.testing.assert_allclose(uniform[2704 + 26 * 10 + 5, 2:4], [160, 160], atol=1e-3)
    assert (uniform[:, :2] >= 0).all() and (uniform[:, :2] <= 416).all()


def test_decoded_rows_go_through_the_shared_post_processing() -> None:
    scores = np.zeros((3549, 80), dtype=np.float32)
    scores[2704 + 26 * 10 + 5, 15] = 0.9
    scores[2704 + 26 * 10 + 6, 15] = 0.8  # neighbour, same class, overlapping: suppressed by NMS
    scores[100, 2] = 0.1  # under the threshold
    rows = nanodet_to_yolo(scores, _one_hot_distances(3549, np.array([2, 1, 3, 4])), 416)
    box = Letterbox(gain=0.5, pad_x=0, pad_y=8, width=832, height=800)
    det = postprocess_detections(rows, box, 0.25, 0.45, 300)
    assert det.classes.tolist() == [15]
    np.testing.assert_allclose(det.scores, [0.9])
    np.testing.assert_allclose(det.boxes[0], [(88 - 32) / 0.5, (152 - 8) / 0.5, (88 + 48) / 0.5, (232 - 8) / 0.5])
