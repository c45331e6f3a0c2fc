"""The X-Request-Timeout header (pure parsing) and the middleware over raw ASGI; end to end: tests/reliability."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from gateway.deadline import RequestDeadline, parse_timeout
from gateway.metrics import Metrics


def test_no_header_takes_the_default() -> None:
    assert parse_timeout(None, default_s=30.0, max_s=60.0) == 30.0


def test_default_never_exceeds_the_maximum() -> None:
    assert parse_timeout(None, default_s=30.0, max_s=10.0) == 10.0


@pytest.mark.parametrize(("value", "expected"), [("0.25", 0.25), ("5", 5.0), ("1e1", 10.0), ("600", 60.0)])
def test_header_is_seconds_cut_to_the_maximum(value: str, expected: float) -> None:
    assert parse_timeout(value, default_s=30.0, max_s=60.0) == expected


@pytest.mark.parametrize("value", ["", "soon", "0", "-1", "nan", "inf", "5s"])
def test_invalid_header_is_refused(value: str) -> None:
    with pytest.raises(ValueError, match="x-request-timeout"):
        parse_timeout(value, default_s=30.0, max_s=60.0)


# The middleware itself, raw ASGI: the deadline, the disconnect, and what neither may cut.

Message = dict[str, Any]
SCOPE: dict[str, Any] = {"type": "http", "method": "POST", "path": "/qa", "headers": []}


class Client:
    """An ASGI server side for one request: the body, then the disconnect when ``leave()`` is called."""

    def __init__(self) -> None:
        self.sent: list[Message] = []
        self.gone = asyncio.Event()
        self._body_given = False

    async def receive(self) -> Message:
        if not self._body_given:
            self._body_given = True
            return {"type": "http.request", "body": b"{}", "more_body": False}
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        self.sent.append(message)

    def leave(self) -> None:
        self.gone.set()


def _cancelled(metrics: Metrics, reason: str) -> float:
    value = metrics.registry.get_sample_value("gateway_cancelled_requests_total", {"route": "/qa", "reason": reason})
    return value or 0.0


class Work:
    """The app: reads the body, then waits ``seconds`` (or for ``release``) before answering 200."""

    def __init__(self, seconds: float = 10.0, status: int = 200) -> None:
        self.seconds, self.status = seconds, status
        self.cancelled = False
        self.started = asyncio.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await receive()
        self.started.set()
        try:
            await asyncio.sleep(self.seconds)
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        await send({"type": "http.response.start", "status": self.status, "headers": []})
        await send({"type": "http.response.body", "body": b"done"})


def test_past_the_deadline_the_work_is_cancelled_and_answered_504() -> None:
    async def scenario() -> None:
        metrics, work, client = Metrics(), Work(), Client()
        await RequestDeadline(work, metrics, default_s=0.05, max_s=1.0)(SCOPE, client.receive, client.send)
        assert work.cancelled
        assert client.sent[0]["status"] == 504
        assert json.loads(client.sent[1]["body"])["error"]["code"] == "upstream_timeout"
        assert _cancelled(metrics, "deadline") == 1
        assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]

    asyncio.run(scenario())


def test_a_client_that_leaves_has_its_work_cancelled_and_no_answer() -> None:
    async def scenario() -> None:
        metrics, work, client = Metrics(), Work(), Client()
        request = asyncio.create_task(
            RequestDeadline(work, metrics, default_s=5.0, max_s=10.0)(SCOPE, client.receive, client.send)
        )
        await work.started.wait()
        client.leave()
        await asyncio.wait_for(request, 2.0)  # the middleware returns (it swallowed its own cancellation)
        assert work.cancelled and client.sent == []
        assert _cancelled(metrics, "client_disconnect") == 1 and _cancelled(metrics, "deadline") == 0
        assert request.cancelling() == 0

    asyncio.run(scenario())


def test_an_answer_that_has_started_is_not_cut_by_the_deadline_or_a_disconnect() -> None:
    async def streamed(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"a", "more_body": True})
        client.leave()
        await asyncio.sleep(0.15)  # past the 0.05 s deadline, and after the client left
        await send({"type": "http.response.body", "body": b"b"})

    client = Client()

    async def scenario() -> None:
        metrics = Metrics()
        await RequestDeadline(streamed, metrics, default_s=0.05, max_s=1.0)(SCOPE, client.receive, client.send)
        assert [m.get("body") for m in client.sent] == [None, b"a", b"b"]
        assert _cancelled(metrics, "deadline") == _cancelled(metrics, "client_disconnect") == 0

    asyncio.run(scenario())


def test_a_504_from_the_route_is_counted_as_a_deadline() -> None:
    async def scenario() -> None:
        metrics, client = Metrics(), Client()
        work = Work(seconds=0, status=504)
        await RequestDeadline(work, metrics, default_s=5.0, max_s=10.0)(SCOPE, client.receive, client.send)
        assert client.sent[0]["status"] == 504 and _cancelled(metrics, "deadline") == 1

    asyncio.run(scenario())


def test_a_cancellation_from_outside_is_not_swallowed() -> None:
    async def scenario() -> None:
        metrics, work, client = Metrics(), Work(), Client()
        request = asyncio.create_task(
            RequestDeadline(work, metrics, default_s=5.0, max_s=10.0)(SCOPE, client.receive, client.send)
        )
        await work.started.wait()
        request.cancel()  # e.g. the server shutting down
        with pytest.raises(asyncio.CancelledError):
            await request
        assert work.cancelled and client.sent == [] and _cancelled(metrics, "client_disconnect") == 0

    asyncio.run(scenario())


def test_a_timeout_error_of_the_app_itself_is_not_taken_for_the_deadline() -> None:
    async def times_out(scope: Any, receive: Any, send: Any) -> None:
        async with asyncio.timeout(0.01):
            await asyncio.sleep(1)

    async def scenario() -> None:
        metrics, client = Metrics(), Client()
        with pytest.raises(TimeoutError):
            await RequestDeadline(times_out, metrics, default_s=5.0, max_s=10.0)(SCOPE, client.receive, client.send)
        assert client.sent == [] and _cancelled(metrics, "deadline") == 0

    asyncio.run(scenario())


def test_an_app_waiting_for_the_disconnect_gets_it() -> None:
    async def listens(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        assert (await receive())["type"] == "http.disconnect"
        await asyncio.sleep(10)  # cancelled: the client left before any answer

    async def scenario() -> None:
        metrics, client = Metrics(), Client()
        request = asyncio.create_task(
            RequestDeadline(listens, metrics, default_s=5.0, max_s=10.0)(SCOPE, client.receive, client.send)
        )
        await asyncio.sleep(0.02)
        client.leave()
        await asyncio.wait_for(request, 2.0)
        assert _cancelled(metrics, "client_disconnect") == 1

    asyncio.run(scenario())
