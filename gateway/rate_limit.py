"""ASGI middleware: a token bucket per client; an empty bucket answers 429 before the body is read.

A client is its API key (``key:<index>``, set by :mod:`gateway.auth`) when keys are configured,
else its IP address as the ASGI server reports it (behind a proxy, set
``GATEWAY_FORWARDED_ALLOW_IPS`` to the proxy so that is the real client; see :func:`client_of`): an
IPv4 address, or an IPv6 address's network of ``GATEWAY_RATE_LIMIT_IPV6_PREFIX`` bits (one host is
given a whole /64 and can rotate through it, so per address its limit would be none). Each bucket
holds up to ``burst`` tokens and refills at ``rate`` per second; a request takes one. Without a
token the client gets 429 ``rate_limited`` with ``Retry-After``: the whole seconds until a token is
back. The probes (``/healthz``, ``/readyz``) are never limited.

One process keeps its buckets in a dict (:class:`TokenBuckets`: past ``max_clients`` the least
recently seen client's bucket is dropped; it starts full again if that client returns; everything
runs on the one event loop, so no lock). Worker processes (``GATEWAY_WORKERS`` > 1) share one table
instead (:class:`SharedTokenBuckets`, a file the supervisor creates and every worker maps, under a
``flock``), so the limit is the gateway's, however the kernel spreads a client's connections over
the workers (with a table per worker, a client got up to N times ``burst``).
"""

from __future__ import annotations

import fcntl
import hashlib
import ipaddress
import math
import mmap
import os
import pathlib
import struct
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway._asgi import send_json_error
from gateway.auth import CLIENT_KEY
from gateway.errors import RateLimited
from gateway.settings import RATE_LIMIT_MIN_PER_S

EXEMPT_PATHS = frozenset({"/healthz", "/readyz"})


class Buckets(Protocol):
    def take(self, client: str) -> float: ...


def _check(rate: float, burst: int, max_clients: int) -> None:
    if not (math.isfinite(rate) and rate >= RATE_LIMIT_MIN_PER_S) or burst < 1 or max_clients < 1:
        raise ValueError(
            f"need rate >= {RATE_LIMIT_MIN_PER_S:.3g} (one a day) and finite, burst >= 1, max_clients >= 1 "
            f"(got {rate}, {burst}, {max_clients})"
        )


def _refill(tokens: float, last: float, now: float, rate: float, burst: int) -> float:
    return min(float(burst), tokens + max(0.0, now - last) * rate)


class TokenBuckets:
    """Token buckets by client, at most ``max_clients`` of them (least recently used dropped).

    Args:
        rate: tokens added per second to each bucket (> 0).
        burst: bucket capacity (>= 1); a new client starts full.
        max_clients: most buckets kept.
        clock: monotonic seconds (injected in tests).
    """

    def __init__(self, rate: float, burst: int, max_clients: int, clock: Callable[[], float] = time.monotonic) -> None:
        _check(rate, burst, max_clients)
        self.rate = rate
        self.burst = burst
        self.max_clients = max_clients
        self.clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # client -> (tokens, when)

    def __len__(self) -> int:
        return len(self._buckets)

    def __contains__(self, client: object) -> bool:
        return client in self._buckets

    def take(self, client: str) -> float:
        """Take one token from ``client``'s bucket: 0.0 when granted, else the seconds until one is back."""
        now = self.clock()
        state = self._buckets.get(client)
        if state is None:
            tokens = float(self.burst)
            if len(self._buckets) >= self.max_clients:
                self._buckets.popitem(last=False)
        else:
            tokens = _refill(*state, now, self.rate, self.burst)
            self._buckets.move_to_end(client)
        if tokens >= 1.0:
            self._buckets[client] = (tokens - 1.0, now)
            return 0.0
        self._buckets[client] = (tokens, now)
        return (1.0 - tokens) / self.rate


# One bucket of the shared table: the client's key (a 64-bit hash of its name; 0: empty slot), its tokens,
# when they were counted and when the client was last seen (CLOCK_MONOTONIC: the same in every process).
_SLOT = struct.Struct("<Qddd")
# Slots looked at from a client's home slot: where it is, or an empty one, or the least recently seen.
_PROBE = 16


def _key(client: str) -> int:
    return int.from_bytes(hashlib.blake2b(client.encode(), digest_size=8).digest(), "little") or 1


class SharedTokenBuckets:
    """Token buckets of several processes in one file they all map (``GATEWAY_WORKERS`` > 1).

    ``max_clients`` slots of 32 bytes (320 kB for 10,000), created zeroed by :meth:`create` before the
    workers start. A client's bucket lives in one of the ``16`` slots from its home slot (its key modulo
    ``max_clients``); a new client takes an empty one there, else the least recently seen of them (so
    past ``max_clients`` a least recently seen client is dropped, among its neighbours). Each
    :meth:`take` holds the file's ``flock`` for its few lookups (a few microseconds; never across an
    await). Two client names share a bucket only if their 64-bit hashes collide.

    Args:
        path: the table's file (:meth:`create`).
        rate, burst, max_clients: as :class:`TokenBuckets` (``max_clients`` as the table was created with).
        clock: monotonic seconds, the same in every process (injected in tests).
    """

    def __init__(
        self,
        path: pathlib.Path,
        rate: float,
        burst: int,
        max_clients: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        _check(rate, burst, max_clients)
        self.rate = rate
        self.burst = burst
        self.max_clients = max_clients
        self.clock = clock
        self._fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        size = max_clients * _SLOT.size
        if os.fstat(self._fd).st_size != size:
            os.close(self._fd)
            raise ValueError(f"{path} is no table of {max_clients} buckets")
        self._map = mmap.mmap(self._fd, size)

    @staticmethod
    def create(path: pathlib.Path, max_clients: int) -> None:
        """A new, empty table of ``max_clients`` buckets at ``path`` (replacing any there)."""
        with open(path, "wb") as table:
            table.truncate(max_clients * _SLOT.size)

    def take(self, client: str) -> float:
        """Take one token from ``client``'s bucket: 0.0 when granted, else the seconds until one is back."""
        key = _key(client)
        now = self.clock()
        home, n = key % self.max_clients, self.max_clients
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            found = empty = oldest = -1
            oldest_seen = math.inf
            for i in range(min(_PROBE, n)):
                offset = ((home + i) % n) * _SLOT.size
                slot_key, _, _, seen = _SLOT.unpack_from(self._map, offset)
                if slot_key == key:
                    found = offset
                    break
                if slot_key == 0:
                    if empty < 0:
                        empty = offset
                elif seen < oldest_seen:
                    oldest, oldest_seen = offset, seen
            if found >= 0:
                _, tokens, last, _ = _SLOT.unpack_from(self._map, found)
                tokens = _refill(tokens, last, now, self.rate, self.burst)
            else:
                found, tokens = (empty if empty >= 0 else oldest), float(self.burst)
            granted = tokens >= 1.0
            _SLOT.pack_into(self._map, found, key, tokens - 1.0 if granted else tokens, now, now)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        return 0.0 if granted else (1.0 - tokens) / self.rate

    def close(self) -> None:
        self._map.close()
        os.close(self._fd)


# Longest textual IP address kept as a bucket name (an IPv6 address with a zone id); anything longer is
# not an address.
_MAX_ADDRESS_CHARS = 64


def client_of(scope: Scope, ipv6_prefix: int = 128) -> str:
    """The rate-limited identity: the API key's index when authenticated, else the peer's IP address,
    an IPv6 one as its network of ``ipv6_prefix`` bits (``ip:2001:db8::/64``; 128: the address).

    The address is written canonically (``ipaddress``), so one client has one bucket however its
    address is spelled (an IPv4-mapped IPv6 address is its IPv4 address); a peer that is no IP address
    (an ``X-Forwarded-For`` entry a trusted proxy passed on: any text, up to the header limit) is
    ``ip:invalid``. Bucket names stay short: 10,000 buckets named by 15 kB ``X-Forwarded-For`` values
    held 150 MB.
    """
    if CLIENT_KEY in scope:
        return str(scope[CLIENT_KEY])
    peer = scope.get("client")
    if not peer:
        return "ip:unknown"
    host = str(peer[0])
    if len(host) > _MAX_ADDRESS_CHARS:
        return "ip:invalid"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return "ip:invalid"
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return f"ip:{address.ipv4_mapped}"
        if ipv6_prefix < 128:  # the network, zone id dropped
            return f"ip:{ipaddress.IPv6Network((int(address), ipv6_prefix), strict=False)}"
    return f"ip:{address}"


class RateLimit:
    """Args:
    app: the wrapped ASGI app.
    buckets: the clients' token buckets (:class:`TokenBuckets`, or :class:`SharedTokenBuckets` in workers).
    ipv6_prefix: an IPv6 client's bucket is its network of this many bits (:func:`client_of`).
    """

    def __init__(self, app: ASGIApp, buckets: Buckets, ipv6_prefix: int = 64) -> None:
        self.app = app
        self.buckets = buckets
        self.ipv6_prefix = ipv6_prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in EXEMPT_PATHS:
            await self.app(scope, receive, send)
            return
        wait = self.buckets.take(client_of(scope, self.ipv6_prefix))
        if wait > 0:
            retry_after = max(1, math.ceil(wait))
            message = f"rate limit exceeded; retry after {retry_after}s"
            headers = [(b"retry-after", str(retry_after).encode())]
            await send_json_error(send, RateLimited.status_code, RateLimited.code, message, headers)
            return
        await self.app(scope, receive, send)
