"""One deadline per request, and cancellation of its work when the deadline passes or the client leaves.

The client may ask for a deadline with ``X-Request-Timeout: <seconds>`` (a positive decimal
number); without it the server default applies, and a larger value is cut to the server maximum.
The deadline covers the whole request (body upload, every Triton call, post-processing). Triton
calls read what is left of it from :data:`current` and send it as their gRPC deadline.

When the deadline passes, or the client disconnects, before the response has started, the route's
work is cancelled: a ``tritonclient.grpc.aio`` call in flight is cancelled with it (its RPC is
cancelled, so Triton drops the request or the model answers it as cancelled), and the calls not
yet made are never made. The deadline is answered with 504 ``upstream_timeout``; a disconnected
client gets nothing. Both are counted in ``gateway_cancelled_requests_total``.
"""

from __future__ import annotations

import asyncio
import contextvars
import math
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway._asgi import send_json_error
from gateway.errors import InvalidRequestTimeout, UpstreamTimeout
from gateway.metrics import Metrics

HEADER = "x-request-timeout"
# Paths whose work is never bounded or cancelled here (cheap, and probes must not be cut).
EXEMPT_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/models", "/openapi.json", "/docs"})

current: contextvars.ContextVar[float | None] = contextvars.ContextVar("deadline", default=None)
"""The request's deadline on the ``time.monotonic()`` clock; None outside a request."""


def remaining() -> float | None:
    """Seconds left before the current request's deadline (may be negative); None without one."""
    deadline = current.get()
    return None if deadline is None else deadline - time.monotonic()


def parse_timeout(value: str | None, default_s: float, max_s: float) -> float:
    """The request's timeout in seconds from the header value; ValueError when it is not valid."""
    if value is None:
        return min(default_s, max_s)
    try:
        seconds = float(value)
    except ValueError:
        raise ValueError(f"{HEADER} must be a number of seconds, got {value!r}") from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"{HEADER} must be a positive number of seconds, got {value!r}")
    return min(seconds, max_s)


class RequestDeadline:
    """ASGI middleware: bind the request's deadline, and cancel its work past it or on disconnect.

    Args:
        app: the wrapped ASGI app.
        metrics: the app's metrics (``cancelled`` counter).
        default_s: deadline of a request that sends no ``X-Request-Timeout``.
        max_s: longest deadline a client may ask for (larger values are cut to it).
    """

    def __init__(self, app: ASGIApp, metrics: Metrics, default_s: float, max_s: float) -> None:
        self.app = app
        self.metrics = metrics
        self.default_s = default_s
        self.max_s = max_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in EXEMPT_PATHS:
            await self.app(scope, receive, send)
            return
        header = next((v.decode("latin-1") for k, v in scope["headers"] if k == HEADER.encode()), None)
        try:
            timeout_s = parse_timeout(header, self.default_s, self.max_s)
        except ValueError as exc:
            await send_json_error(send, InvalidRequestTimeout.status_code, InvalidRequestTimeout.code, str(exc))
            return
        token = current.set(time.monotonic() + timeout_s)
        try:
            await self._run(scope, receive, send, timeout_s)
        finally:
            current.reset(token)

    def _count(self, scope: Scope, reason: str) -> None:
        route = getattr(scope.get("route"), "path", None) or scope["path"]
        self.metrics.cancelled.labels(route, reason).inc()

    async def _run(self, scope: Scope, receive: Receive, send: Send, timeout_s: float) -> None:
        """Run the app in this task under ``asyncio.timeout``; one watcher task cancels it on disconnect.

        (Three tasks per request before: the app, the watcher and a waiter on the disconnect.)
        """
        task = asyncio.current_task()
        assert task is not None
        started = False
        status = 0
        gone = False  # the client disconnected
        cancelled_on_disconnect = False
        disconnected: asyncio.Event | None = None  # made only if the app waits for the disconnect
        watcher: asyncio.Task[None] | None = None

        def client_left() -> None:
            nonlocal gone, cancelled_on_disconnect
            gone = True
            if disconnected is not None:
                disconnected.set()
            if not started and not cancelled_on_disconnect:  # else the answer is on its way: let it finish
                cancelled_on_disconnect = True
                task.cancel()

        async def watch_disconnect() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            client_left()

        async def app_receive() -> Message:
            nonlocal watcher, disconnected
            if watcher is not None:
                # The body has been read: the next message can only be the disconnect, which
                # the watcher takes; hand the app the same answer when it comes.
                if not gone:
                    disconnected = disconnected or asyncio.Event()
                    await disconnected.wait()
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.disconnect":
                client_left()
            elif message["type"] == "http.request" and not message.get("more_body", False):
                watcher = asyncio.ensure_future(watch_disconnect())
            return message

        async def app_send(message: Message) -> None:
            nonlocal started, status
            if message["type"] == "http.response.start":
                started, status = True, message["status"]
                deadline.reschedule(None)  # a started answer is not cut (a streamed body neither)
            await send(message)

        outcome: str | None = None  # why the work ended early, if it did
        try:
            async with asyncio.timeout(timeout_s) as deadline:
                await self.app(scope, app_receive, app_send)
        except TimeoutError:
            if not deadline.expired():
                raise  # not our deadline's
            outcome = "deadline"  # it passed before the answer started: the app was cancelled where it waited
        except asyncio.CancelledError:
            if not cancelled_on_disconnect:
                raise  # cancelled from outside (server shutdown): not ours to swallow
            task.uncancel()
            outcome = "client_disconnect"  # nobody to answer
        else:
            if status == UpstreamTimeout.status_code:
                # A Triton call hit the deadline first: gRPC cancelled it, and the route gave up.
                outcome = "deadline"
        finally:
            if watcher is not None:
                watcher.cancel()
        if outcome is None:
            return
        self._count(scope, outcome)
        if outcome == "deadline" and not started:
            message = f"the request's {timeout_s:g}s deadline passed"
            await send_json_error(send, UpstreamTimeout.status_code, UpstreamTimeout.code, message)
