"""ASGI middleware: bound the requests in flight; past the bound answer 503 at once.

Without it an overloaded gateway queues without limit, holding every upload in memory while
latency grows for everyone. With it, excess load is shed early with ``Retry-After`` so clients
and load balancers can back off or go elsewhere. Health, readiness and metrics are never shed.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway._asgi import send_json_error

EXEMPT_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/models", "/openapi.json", "/docs"})


class AdmissionControl:
    """Args:
    app: the wrapped ASGI app.
    max_inflight: most requests processed at once (0: unbounded).
    retry_after_s: the ``Retry-After`` given with a 503.
    """

    def __init__(self, app: ASGIApp, max_inflight: int, retry_after_s: int = 1) -> None:
        self.app = app
        self.max_inflight = max_inflight
        self.retry_after_s = retry_after_s
        self.inflight = 0

    async def _reject(self, send: Send) -> None:
        message = f"more than {self.max_inflight} requests in flight; retry"
        retry_after = (b"retry-after", str(self.retry_after_s).encode())
        await send_json_error(send, 503, "overloaded", message, [retry_after])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.max_inflight or scope["path"] in EXEMPT_PATHS:
            await self.app(scope, receive, send)
            return
        if self.inflight >= self.max_inflight:
            await self._reject(send)
            return
        self.inflight += 1  # single event loop: no lock needed
        try:
            await self.app(scope, receive, send)
        finally:
            self.inflight -= 1
