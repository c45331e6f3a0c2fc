"""The token bucket tables (one process's, and the one workers share), on an injected clock.

The middleware is exercised in tests/reliability/test_access.py, the shared table across real workers
in tests/gateway/test_workers.py.
"""

from __future__ import annotations

import math
import pathlib
import subprocess
import sys

import pytest

from gateway.rate_limit import SharedTokenBuckets, TokenBuckets, client_of
from gateway.settings import RATE_LIMIT_MIN_PER_S, Settings


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


@pytest.mark.parametrize(
    ("rate", "burst", "max_clients"),
    [
        (0.0, 1, 1),
        (1.0, 0, 1),
        (1.0, 1, 0),
        (float("inf"), 1, 1),
        (float("nan"), 1, 1),
        (1e-310, 1, 1),
        (1e-300, 1, 1),
        (RATE_LIMIT_MIN_PER_S * 0.99, 1, 1),
    ],
)
def test_bad_parameters_are_refused(rate: float, burst: int, max_clients: int) -> None:
    with pytest.raises(ValueError, match="need rate"):
        TokenBuckets(rate, burst, max_clients)


def test_client_is_the_key_when_authenticated_else_the_ip() -> None:
    assert client_of({"client": ("10.0.0.7", 5555)}) == "ip:10.0.0.7"
    assert client_of({"client": ("10.0.0.7", 5555), "gateway.client": "key:1"}) == "key:1"
    assert client_of({"client": None}) == "ip:unknown"


def test_the_slowest_accepted_rate_gives_a_retry_after_of_at_most_a_day() -> None:
    """One a day is the slowest rate: its wait is whole seconds a client can use (1e-310 made it
    infinite, ``math.ceil`` raised, a 500; 1e-300 gave a 301-digit Retry-After)."""
    buckets = TokenBuckets(rate=RATE_LIMIT_MIN_PER_S, burst=1, max_clients=1, clock=Clock())
    assert buckets.take("a") == 0.0
    assert 1 <= math.ceil(buckets.take("a")) <= 86_400


@pytest.mark.parametrize("rate", [1e-300, 1e-6, RATE_LIMIT_MIN_PER_S / 2, -1.0])
def test_settings_refuse_a_rate_slower_than_one_a_day(rate: float) -> None:
    with pytest.raises(ValueError):
        Settings(rate_limit_per_s=rate, _env_file=None)  # type: ignore[call-arg]
    assert Settings(rate_limit_per_s=RATE_LIMIT_MIN_PER_S, _env_file=None).rate_limit_per_s > 0  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("peer", "prefix", "client"),
    [
        ("2001:db8:1:2:aaaa::1", 64, "ip:2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff:ffff:ffff:ffff", 64, "ip:2001:db8:1:2::/64"),  # the same host, another address
        ("2001:db8:1:3::1", 64, "ip:2001:db8:1:3::/64"),  # the next /64: another client
        ("2001:db8:1:2:aaaa::1", 56, "ip:2001:db8:1::/56"),
        ("2001:db8:1:2:aaaa::1", 128, "ip:2001:db8:1:2:aaaa::1"),
        ("fe80::1%eth0", 64, "ip:fe80::/64"),
        ("::ffff:10.0.0.7", 64, "ip:10.0.0.7"),  # an IPv4 client on a dual-stack socket: per address
        ("10.0.0.7", 64, "ip:10.0.0.7"),
    ],
)
def test_an_ipv6_client_is_its_network(peer: str, prefix: int, client: str) -> None:
    assert client_of({"client": (peer, 0)}, prefix) == client


def test_rotating_addresses_in_one_slash_64_share_one_bucket() -> None:
    buckets = TokenBuckets(rate=1.0, burst=2, max_clients=100, clock=Clock())
    taken = [buckets.take(client_of({"client": (f"2001:db8::{i:x}", 0)}, 64)) for i in range(1, 6)]
    assert taken[:2] == [0.0, 0.0] and all(wait > 0 for wait in taken[2:])
    assert len(buckets) == 1


@pytest.mark.parametrize(
    ("peer", "client"),
    [
        ("::1", "ip:::1"),
        ("0:0:0:0:0:0:0:1", "ip:::1"),  # one client, one bucket, however its address is written
        ("2001:DB8::0001", "ip:2001:db8::1"),
        ("fe80::1%eth0", "ip:fe80::1%eth0"),
        ("not-an-ip", "ip:invalid"),
        ("1" * 15_000, "ip:invalid"),  # a trusted proxy's X-Forwarded-For entry: any text
        ("", "ip:invalid"),
    ],
)
def test_client_ip_is_canonical_and_bounded(peer: str, client: str) -> None:
    assert client_of({"client": (peer, 0)}) == client


def test_bucket_names_stay_short_whatever_the_peer_sends() -> None:
    buckets = TokenBuckets(rate=1.0, burst=1, max_clients=100, clock=Clock())
    for i in range(100):
        buckets.take(client_of({"client": (f"{i:05d}" + "x" * 15_000, 0)}))
    assert len(buckets) == 1 and "ip:invalid" in buckets


# --- the table the workers share ------------------------------------------------------------------


def _table(tmp_path: pathlib.Path, max_clients: int = 100) -> pathlib.Path:
    path = tmp_path / "rate-limit.table"
    SharedTokenBuckets.create(path, max_clients)
    return path


def test_shared_table_refills_and_refuses_like_the_dict(tmp_path: pathlib.Path) -> None:
    clock = Clock()
    table = _table(tmp_path)
    shared = SharedTokenBuckets(table, rate=2.0, burst=3, max_clients=100, clock=clock)
    local = TokenBuckets(rate=2.0, burst=3, max_clients=100, clock=clock)
    for step in [0.0, 0.0, 0.0, 0.0, 0.1, 0.4, 0.0, 5.0, 0.0, 0.0, 0.0, 0.0]:
        clock.now += step
        assert shared.take("a") == pytest.approx(local.take("a"))
        assert shared.take("b") == pytest.approx(local.take("b"))


def test_two_maps_of_one_table_share_each_clients_bucket(tmp_path: pathlib.Path) -> None:
    """As two workers do: a client spread over both gets ``burst`` in all, not ``burst`` from each."""
    clock = Clock()
    table = _table(tmp_path)
    one, two = (SharedTokenBuckets(table, rate=1.0, burst=4, max_clients=100, clock=clock) for _ in range(2))
    granted = [(one if i % 2 else two).take("a") == 0.0 for i in range(10)]
    assert granted == [True] * 4 + [False] * 6
    assert one.take("b") == 0.0  # another client: its own bucket


def test_another_process_takes_from_the_same_buckets(tmp_path: pathlib.Path) -> None:
    table = _table(tmp_path)
    code = (
        "import pathlib, sys\n"
        "from gateway.rate_limit import SharedTokenBuckets\n"
        f"b = SharedTokenBuckets(pathlib.Path({str(table)!r}), 0.01, 5, 100)\n"
        "print(sum(b.take('a') == 0.0 for _ in range(3)))\n"
    )
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "3\n"
    here = SharedTokenBuckets(table, rate=0.01, burst=5, max_clients=100)
    assert [here.take("a") == 0.0 for _ in range(3)] == [True, True, False]


def test_shared_table_is_bounded_and_drops_the_least_recently_seen(tmp_path: pathlib.Path) -> None:
    clock = Clock()
    table = _table(tmp_path, max_clients=4)
    buckets = SharedTokenBuckets(table, rate=0.01, burst=1, max_clients=4, clock=clock)
    for name in "abcd":
        clock.now += 1
        assert buckets.take(name) == 0.0
    clock.now += 1
    assert buckets.take("b") > 0  # seen again: now the most recent
    clock.now += 1
    assert buckets.take("e") == 0.0  # a fifth client: "a", the least recently seen, is dropped
    assert buckets.take("a") == 0.0  # back, full again (it drops "c" now)
    assert buckets.take("b") > 0 and buckets.take("d") > 0
    assert table.stat().st_size == 4 * 32


def test_a_table_of_another_size_is_refused(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ValueError, match="no table of 50"):
        SharedTokenBuckets(_table(tmp_path, max_clients=100), rate=1.0, burst=1, max_clients=50)
