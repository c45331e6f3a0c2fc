"""The token bucket table, on an injected clock; the middleware is exercised in tests/reliability/test_access.py."""

from __future__ import annotations

import pytest

from gateway.rate_limit import TokenBuckets, client_of


class Clock:
    """A hand-advanced monotonic clock."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_refused_then_refilled_at_rate() -> None:
    clock = Clock()
    buckets = TokenBuckets(rate=2.0, burst=3, max_clients=10, clock=clock)
    assert [buckets.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a") == pytest.approx(0.5)  # one token back after 1/rate seconds
    clock.now += 0.25
    assert buckets.take("a") == pytest.approx(0.25)
    clock.now += 0.25
    assert buckets.take("a") == 0.0
    assert buckets.take("a") == pytest.approx(0.5)


def test_refill_is_capped_at_burst() -> None:
    clock = Clock()
    buckets = TokenBuckets(rate=10.0, burst=2, max_clients=10, clock=clock)
    buckets.take("a")
    clock.now += 3600
    assert [buckets.take("a") for _ in range(3)][-1] > 0  # an hour idle still gives only 2


def test_clients_have_separate_buckets() -> None:
    buckets = TokenBuckets(rate=1.0, burst=1, max_clients=10, clock=Clock())
    assert buckets.take("a") == 0.0
    assert buckets.take("a") > 0
    assert buckets.take("b") == 0.0


def test_table_is_bounded_and_drops_the_least_recently_seen() -> None:
    clock = Clock()
    buckets = TokenBuckets(rate=1.0, burst=1, max_clients=3, clock=clock)
    for client in ("a", "b", "c"):
        buckets.take(client)
    buckets.take("a")  # a is now the most recently seen; b the least
    buckets.take("d")
    assert len(buckets) == 3
    assert "b" not in buckets and {"a", "c", "d"} == {c for c in "abcd" if c in buckets}
    for i in range(1000):
        buckets.take(f"client-{i}")
    assert len(buckets) == 3


def test_clock_going_backwards_adds_no_tokens() -> None:
    clock = Clock()
    buckets = TokenBuckets(rate=1.0, burst=1, max_clients=3, clock=clock)
    buckets.take("a")
    clock.now -= 100
    assert buckets.take("a") > 0


@pytest.mark.parametrize(("rate", "burst", "max_clients"), [(0.0, 1, 1), (1.0, 0, 1), (1.0, 1, 0)])
def test_bad_parameters_are_refused(rate: float, burst: int, max_clients: int) -> None:
    with pytest.raises(ValueError, match="need rate"):
        TokenBuckets(rate, burst, max_clients)


def test_client_is_the_key_when_authenticated_else_the_ip() -> None:
    assert client_of({"client": ("10.0.0.7", 5555)}) == "ip:10.0.0.7"
    assert client_of({"client": ("10.0.0.7", 5555), "gateway.client": "key:1"}) == "key:1"
    assert client_of({"client": None}) == "ip:unknown"
