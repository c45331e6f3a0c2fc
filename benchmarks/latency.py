"""Requests/s and latency percentiles of one (endpoint, concurrency) load, as the benchmarks report them.

The one definition of these fields and of the percentile arithmetic: ``serving.py``'s results are a
:class:`LoadResult`, ``ceiling.py``'s rows extend it with their tier, workers and CPU accounting.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Iterable


@dataclasses.dataclass
class LoadResult:
    """One measured (endpoint, concurrency).

    Args:
        endpoint: the endpoint's name (``qa``, ``classify``, ...).
        concurrency: concurrent clients (the bare engine: its batch size).
        requests: requests measured (warm-up excluded; the bare engine: items).
        errors: requests that did not succeed.
        requests_per_s: requests (items) per second of wall time.
        p50_ms: the median latency.
        p95_ms: the 95th percentile latency (nearest rank).
        p99_ms: the 99th percentile latency (nearest rank).
    """

    endpoint: str
    concurrency: int
    requests: int
    errors: int
    requests_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float


def percentiles_ms(latencies_s: Iterable[float]) -> tuple[float, float, float]:
    """p50 (the median), p95 and p99 in milliseconds of latencies in seconds; p95 and p99 are the
    nearest rank, ``sorted[round(p * (n - 1))]``."""
    ms = sorted(x * 1000 for x in latencies_s)

    def pct(p: float) -> float:
        return ms[min(len(ms) - 1, int(round(p * (len(ms) - 1))))]

    return statistics.median(ms), pct(0.95), pct(0.99)
