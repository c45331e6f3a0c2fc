"""How a /qa request's windows are split into Triton calls (pure)."""

from __future__ import annotations

import pytest

from gateway.processing.qa import window_chunks


def rows(chunks: list[slice]) -> list[tuple[int, int]]:
    return [(c.start, c.stop) for c in chunks]


@pytest.mark.parametrize(
    ("windows", "chunk_rows", "max_batch", "expected"),
    [
        (10, 4, 64, [(0, 4), (4, 8), (8, 10)]),
        (8, 4, 64, [(0, 4), (4, 8)]),
        (3, 16, 64, [(0, 3)]),
        (1, 16, 64, [(0, 1)]),
        # The model's max_batch_size caps the chunk.
        (10, 16, 4, [(0, 4), (4, 8), (8, 10)]),
        # chunk_rows 0: max_batch_size rows per call.
        (130, 0, 64, [(0, 64), (64, 128), (128, 130)]),
        # max_batch_size 0 (no batching bound): chunk_rows alone.
        (5, 2, 0, [(0, 2), (2, 4), (4, 5)]),
        # Neither bound: one call with every row.
        (7, 0, 0, [(0, 7)]),
        (0, 4, 64, []),
    ],
)
def test_window_chunks(windows: int, chunk_rows: int, max_batch: int, expected: list[tuple[int, int]]) -> None:
    assert rows(window_chunks(windows, chunk_rows, max_batch)) == expected


@pytest.mark.parametrize("windows", [1, 17, 455])
def test_chunks_cover_every_window_once_in_order(windows: int) -> None:
    chunks = window_chunks(windows, 16, 64)
    covered = [i for c in chunks for i in range(c.start, c.stop)]
    assert covered == list(range(windows))
    assert all(0 < c.stop - c.start <= 16 for c in chunks)


def test_negative_bounds_are_refused() -> None:
    with pytest.raises(ValueError):
        window_chunks(4, -1, 64)
