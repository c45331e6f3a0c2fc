"""``benchmarks/latency.py``: the load fields and percentiles that ``serving.py`` and ``ceiling.py`` share."""

from __future__ import annotations

from types import ModuleType

import pytest

from tests.helpers import load_benchmark


@pytest.fixture(scope="module")
def latency() -> ModuleType:
    return load_benchmark("latency")


def test_percentiles_are_the_median_and_nearest_ranks(latency: ModuleType) -> None:
    # 1..100 ms, shuffled: median 50.5; p95 = sorted[round(0.95 * 99) = 94] = 95; p99 = sorted[98] = 99
    latencies_s = [((i * 37) % 100 + 1) / 1000 for i in range(100)]
    p50, p95, p99 = latency.percentiles_ms(latencies_s)
    assert (p50, p95, p99) == pytest.approx((50.5, 95.0, 99.0))
    assert latency.percentiles_ms([0.25]) == pytest.approx((250.0, 250.0, 250.0))
