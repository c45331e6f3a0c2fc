"""``engine_runtime.batching``: requests concatenated into one engine call and split back in order."""

from __future__ import annotations

import numpy as np

from engine_runtime.batching import concat_requests, split_outputs


def test_one_request_passes_through_whole() -> None:
    feeds = [{"x": np.arange(6, dtype=np.int64).reshape(2, 3)}]
    batch, sizes = concat_requests(feeds, ["x"])
    assert sizes == [2]
    np.testing.assert_array_equal(batch["x"], feeds[0]["x"])
    outputs = {"y": np.arange(4, dtype=np.float32).reshape(2, 2), "unused": np.zeros(1)}
    [only] = split_outputs(outputs, ["y"], sizes)
    assert list(only) == ["y"]
    assert only["y"] is outputs["y"]


def test_requests_are_split_back_in_order() -> None:
    feeds = [{"x": np.full((n, 2), n, dtype=np.int64)} for n in (1, 3, 2)]
    batch, sizes = concat_requests(feeds, ["x"])
    assert sizes == [1, 3, 2]
    assert batch["x"].shape == (6, 2)
    parts = split_outputs({"y": batch["x"] * 10}, ["y"], sizes)
    assert [p["y"].shape[0] for p in parts] == [1, 3, 2]
    for n, part in zip((1, 3, 2), parts):
        np.testing.assert_array_equal(part["y"], np.full((n, 2), n * 10))
