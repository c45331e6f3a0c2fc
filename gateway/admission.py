"""ASGI middleware: shed at once what cannot finish in time; answer 503 with Retry-After.

Without it an overloaded gateway queues without limit, holding every upload in memory while
latency grows for everyone until requests hit the inference deadline. Two bounds apply:

- a hard cap on the task requests in flight (``max_inflight``);
- a latency budget: per route (and ``model`` query parameter, since models differ in cost) the
  middleware keeps an EWMA of the *service time* of one request, measured as a completed
  request's latency divided by the requests that were in flight for that key when it was
  admitted (itself included), i.e. the time the gateway and Triton need per request at the
  current batching. A new request with ``k`` requests ahead is predicted to take
  ``(k + 1) * service_time``; past ``latency_budget_s`` it is shed at once. The estimate only
  moves when requests complete, so it lags a sudden slowdown; a second rule covers that: while
  the oldest request of the key has been in flight for longer than the budget, the queue is
  already over it and new requests of that key are shed too.

A key with nothing in flight is always admitted, so an estimate made during a stall is corrected
by the next request. Only answers that measured real work (2xx) feed the estimate. Health,
readiness and metrics are never shed.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import time
from collections.abc import Callable
from urllib.parse import parse_qs

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway._asgi import send_json_error
from gateway.errors import Overloaded

EXEMPT_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/models", "/openapi.json", "/docs"})


@dataclasses.dataclass
class _KeyState:
    """Args:
    inflight: requests of this key admitted and not yet answered.
    service_s: EWMA of one request's service time; None before the first sample.
    started: admission time of each request in flight, oldest first (insertion order).
    """

    inflight: int = 0
    service_s: float | None = None
    started: dict[int, float] = dataclasses.field(default_factory=dict)


class AdmissionControl:
    """Args:
    app: the wrapped ASGI app.
    max_inflight: most requests processed at once (0: unbounded).
    retry_after_s: the least ``Retry-After`` given with a 503 (a latency shed gives the predicted
        excess, at most the budget).
    latency_budget_s: shed a request whose predicted latency is over this (0: no latency shedding).
    ewma_alpha: weight of a new service-time sample in the running estimate.
    clock: monotonic seconds (a seam for tests).
    """

    def __init__(
        self,
        app: ASGIApp,
        max_inflight: int,
        retry_after_s: int = 1,
        latency_budget_s: float = 0.0,
        ewma_alpha: float = 0.2,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.app = app
        self.max_inflight = max_inflight
        self.retry_after_s = retry_after_s
        self.latency_budget_s = latency_budget_s
        self.ewma_alpha = ewma_alpha
        self.clock = clock
        self.inflight = 0
        self._keys: dict[str, _KeyState] = {}  # only keys with requests in flight or a sample
        self._tokens = itertools.count()

    @staticmethod
    def key(scope: Scope) -> str:
        """The route and ``model`` query parameter: what shares one service-time estimate."""
        query = scope.get("query_string", b"").decode("latin-1")
        model = parse_qs(query).get("model", [""])[0] if "model=" in query else ""
        return f"{scope['path']}?model={model}" if model else str(scope["path"])

    def service_time(self, key: str) -> float | None:
        """The current service-time estimate of ``key`` (seconds), None before any sample."""
        state = self._keys.get(key)
        return None if state is None else state.service_s

    async def _reject(self, send: Send, message: str, retry_after_s: int) -> None:
        retry_after = (b"retry-after", str(retry_after_s).encode())
        await send_json_error(send, Overloaded.status_code, Overloaded.code, message, [retry_after])

    def _predicted_excess_s(self, state: _KeyState, now: float) -> float:
        """How far the predicted latency of one more request exceeds the budget (<= 0: admit)."""
        if not self.latency_budget_s or state.inflight == 0:
            return 0.0
        oldest_age = now - next(iter(state.started.values()))
        predicted = 0.0 if state.service_s is None else (state.inflight + 1) * state.service_s
        return max(predicted, oldest_age) - self.latency_budget_s

    def _record(self, key: str, state: _KeyState, ahead: int, elapsed_s: float, status: int) -> None:
        if 200 <= status < 300:  # not 504: a deadline measures the deadline, and would poison the estimate
            sample = elapsed_s / (ahead + 1)
            previous = state.service_s
            state.service_s = sample if previous is None else previous + self.ewma_alpha * (sample - previous)
        if state.inflight == 0 and state.service_s is None:
            self._keys.pop(key, None)  # bounded: unknown paths and failed requests leave nothing behind

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in EXEMPT_PATHS:
            await self.app(scope, receive, send)
            return
        if self.max_inflight and self.inflight >= self.max_inflight:
            await self._reject(send, f"more than {self.max_inflight} requests in flight; retry", self.retry_after_s)
            return
        key = self.key(scope)
        state = self._keys.setdefault(key, _KeyState())
        start = self.clock()
        excess = self._predicted_excess_s(state, start)
        if excess > 0:
            predicted = excess + self.latency_budget_s
            message = (
                f"{state.inflight} requests ahead, predicted {predicted:.1f}s, over the "
                f"{self.latency_budget_s:g}s latency budget; retry"
            )
            # Retry once the excess has drained, but never later than one budget from now.
            retry_after = min(math.ceil(excess), math.ceil(self.latency_budget_s))
            await self._reject(send, message, max(self.retry_after_s, retry_after))
            return
        ahead = state.inflight
        status = 500
        token = next(self._tokens)
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.inflight -= 1
                state.inflight -= 1
                del state.started[token]
                self._record(key, state, ahead, self.clock() - start, status)

        async def record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                # Answered: the slot is free now, not once the middlewares inside have unwound (a
                # keep-alive client's next request can arrive before that, and must not queue behind it).
                release()

        self.inflight += 1  # single event loop: no lock needed
        state.inflight += 1
        state.started[token] = start
        try:
            await self.app(scope, receive, record_status)
        finally:
            release()
