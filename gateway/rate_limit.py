"""ASGI middleware: a token bucket per client; an empty bucket answers 429 before the body is read.

A client is its API key (``key:<index>``, set by :mod:`gateway.auth`) when keys are configured,
else its IP address as the ASGI server reports it (behind a proxy, set
``GATEWAY_FORWARDED_ALLOW_IPS`` to the proxy so that is the real client; see :func:`client_of`): an
IPv4 address, or an IPv6 address's network of ``GATEWAY_RATE_LIMIT_IPV6_PREFIX`` bits (one host is
given a whole /64 and can rotate through it, so per address its limit would be none). Each
worker process (``GATEWAY_WORKERS``) has its own buckets. Each bucket holds up to ``burst`` tokens
and refills at ``rate`` per second; a request takes one. Without a token the client gets 429
``rate_limited`` with ``Retry-After``: the whole seconds until a token is back.

The bucket table is bounded: past ``max_clients`` the least recently seen client's bucket is
dropped (it starts full again if that client returns). Everything runs on the one event loop, so
no locks are needed. The probes (``/healthz``, ``/readyz``) are never limited.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections import OrderedDict
from collections.abc import Callable

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway._asgi import send_json_error
from gateway.auth import CLIENT_KEY
from gateway.errors import RateLimited
from gateway.settings import RATE_LIMIT_MIN_PER_S

EXEMPT_PATHS = frozenset({"/healthz", "/readyz"})


class TokenBuckets:
    """Token buckets by client, at most ``max_clients`` of them (least recently used dropped).

    Args:
        rate: tokens added per second to each bucket (> 0).
        burst: bucket capacity (>= 1); a new client starts full.
        max_clients: most buckets kept.
        clock: monotonic seconds (injected in tests).
    """

    def __init__(self, rate: float, burst: int, max_clients: int, clock: Callable[[], float] = time.monotonic) -> None:
        if not (math.isfinite(rate) and rate >= RATE_LIMIT_MIN_PER_S) or burst < 1 or max_clients < 1:
            raise ValueError(
                f"need rate >= {RATE_LIMIT_MIN_PER_S:.3g} (one a day) and finite, burst >= 1, max_clients >= 1 "
                f"(got {rate}, {burst}, {max_clients})"
            )
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
            tokens, last = state
            tokens = min(float(self.burst), tokens + max(0.0, now - last) * self.rate)
            self._buckets.move_to_end(client)
        if tokens >= 1.0:
            self._buckets[client] = (tokens - 1.0, now)
            return 0.0
        self._buckets[client] = (tokens, now)
        return (1.0 - tokens) / self.rate


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
    buckets: the clients' token buckets.
    ipv6_prefix: an IPv6 client's bucket is its network of this many bits (:func:`client_of`).
    """

    def __init__(self, app: ASGIApp, buckets: TokenBuckets, ipv6_prefix: int = 64) -> None:
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
