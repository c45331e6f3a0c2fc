"""Softmax and top-k of classifier logits (pure numpy)."""

from __future__ import annotations

import numpy as np
import pytest

from gateway.processing.classification import softmax, top_k

pytestmark = pytest.mark.unit


def _full_sort(logits: np.ndarray, k: int) -> list[tuple[int, float]]:
    probs = softmax(logits)
    return [(int(i), float(probs[i])) for i in np.argsort(-probs, kind="stable")[:k]]


@pytest.mark.parametrize("k", [1, 2, 5, 37, 999, 1000, 1500])
@pytest.mark.parametrize("levels", [0, 3, 50])
def test_top_k_equals_a_stable_sort_of_every_class(k: int, levels: int) -> None:
    """Ties (few distinct logits) are ordered by class id, whatever k cuts through them."""
    rng = np.random.default_rng(k * 100 + levels)
    for _ in range(20):
        logits = rng.normal(size=1000).astype(np.float32)
        if levels:
            logits = rng.integers(0, levels, size=1000).astype(np.float32)
        assert top_k(logits, k) == _full_sort(logits, k)


def test_top_k_of_equal_logits_is_the_first_classes() -> None:
    ranked = top_k(np.zeros(10, np.float32), 3)
    assert [i for i, _ in ranked] == [0, 1, 2]
    assert all(p == pytest.approx(0.1) for _, p in ranked)


def test_probabilities_sum_to_one_and_follow_the_logits() -> None:
    probs = softmax(np.array([1.0, 2.0, 3.0], np.float32))
    assert probs.sum() == pytest.approx(1.0)
    assert list(np.argsort(probs)) == [0, 1, 2]
