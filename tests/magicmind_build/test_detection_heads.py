"""The in-graph detection heads on hand-made tensors: NanoDet's GFL decode and the score-sorted top-k."""

from __future__ import annotations

import torch

from magicmind_build.models._detections import TopDetections
from magicmind_build.models.nanodet import GflDecode, anchor_centers


def test_anchor_centres_follow_the_head_row_order() -> None:
    centers, strides = anchor_centers(416)
    assert len(centers) == 52 * 52 + 26 * 26 + 13 * 13 == 3549
    assert centers[0].tolist() == [4, 4]  # stride 8, (0 + 0.5) * 8
    assert centers[1].tolist() == [12, 4]  # row-major: x moves first
    assert centers[52].tolist() == [4, 12]
    assert centers[2704].tolist() == [8, 8]  # first stride-16 point
    assert centers[-1].tolist() == [400, 400]  # last stride-32 point, (12 + 0.5) * 32
    assert strides[2703] == 8 and strides[2704] == 16 and strides[-1] == 32


def _one_hot_distances(bins: list[int]) -> torch.Tensor:
    """Logits whose softmax puts (almost) all mass on ``bins[side]`` for every point."""
    logits = torch.full((1, 3549, 4, 11), -50.0)
    for side, b in enumerate(bins):
        logits[:, :, side, b] = 50.0
    return logits


def test_distances_are_the_softmax_expectation_times_the_stride() -> None:
    decode = GflDecode(416, 10)
    row = 2704 + 26 * 10 + 5  # stride 16, x=5, y=10: centre (88, 168)
    xywh = decode(_one_hot_distances([2, 1, 3, 4]))[0]
    # x1 = 88 - 2*16, y1 = 168 - 1*16, x2 = 88 + 3*16, y2 = 168 + 4*16 -> centre (96, 192), size 80 x 80
    torch.testing.assert_close(xywh[row], torch.tensor([96.0, 192.0, 80.0, 80.0]), atol=1e-3, rtol=0)
    uniform = decode(torch.zeros(1, 3549, 4, 11))[0]
    # uniform bins: expectation 5 bins per side -> 10 strides wide, clipped to the input
    torch.testing.assert_close(uniform[row, 2:], torch.tensor([160.0, 160.0]), atol=1e-3, rtol=0)
    left, right = uniform[:, 0] - uniform[:, 2] / 2, uniform[:, 0] + uniform[:, 2] / 2
    assert (left >= -1e-3).all() and (right <= 416 + 1e-3).all()


def test_top_detections_keep_the_best_scores_and_their_class() -> None:
    xywh = torch.arange(5 * 4, dtype=torch.float32).view(1, 5, 4)
    scores = torch.zeros(1, 5, 3)
    scores[0, 3, 2] = 0.9
    scores[0, 1, 0] = 0.5
    scores[0, 1, 1] = 0.5  # a tie between classes: the first wins, as numpy's argmax
    scores[0, 4, 1] = 0.5  # a tie in score with row 1: the lower row comes first
    rows = TopDetections(top_k=3)(xywh, scores)[0]
    assert rows.shape == (3, 6)
    assert rows[:, 4].tolist() == [0.8999999761581421, 0.5, 0.5]
    assert rows[:, 5].tolist() == [2, 0, 1]
    assert rows[0, :4].tolist() == xywh[0, 3].tolist() and rows[1, :4].tolist() == xywh[0, 1].tolist()
    assert TopDetections(top_k=10)(xywh, scores).shape == (1, 5, 6)  # fewer rows than top_k: all of them
