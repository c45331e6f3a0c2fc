"""The body stage: bodies are read in full before the app, bounded in size, time, count and bytes.

The downstream app here is a small ASGI app that records what it was given (a labelled stand-in
for admission control and the routes); the client side is a scripted ASGI ``receive``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

from starlette.types import Message, Receive, Scope, Send

from gateway.body_limit import BufferedBody


def _scope(headers: list[tuple[bytes, bytes]], path: str = "/classify") -> Scope:
    return {
        "type": "http",
        "method": "POST",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": headers,
    }


class Recorder:
    """Fake downstream app: records the bodies it reads and answers 200."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.calls = 0
        self.release = asyncio.Event()
        self.release.set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.calls += 1
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        self.bodies.append(body)
        await self.release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def _client(chunks: list[bytes], delay_s: float = 0.0, end: str = "complete") -> Receive:
    """A client sending ``chunks`` with ``delay_s`` before each; then the body is complete, or the
    client keeps the connection open sending nothing (``end="hang"``), or goes away (``"disconnect"``)."""
    pending = list(chunks)

    async def receive() -> Message:
        if pending:
            await asyncio.sleep(delay_s)
            chunk = pending.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(pending) or end != "complete"}
        if end == "disconnect":
            return {"type": "http.disconnect"}
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    return receive


async def _call(app: BufferedBody, scope: Scope, receive: Receive) -> tuple[int | None, dict[bytes, bytes], bytes]:
    status: int | None = None
    headers: dict[bytes, bytes] = {}
    body = b""

    async def send(message: Message) -> None:
        nonlocal status, body
        if message["type"] == "http.response.start":
            status = message["status"]
            headers.update(dict(message["headers"]))
        else:
            body += message.get("body", b"")

    await app(scope, receive, send)
    return status, headers, body


def _code(body: bytes) -> str:
    return str(json.loads(body)["error"]["code"])


def _run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(scenario())  # type: ignore[arg-type]


def test_body_is_read_in_full_then_replayed_in_one_message() -> None:
    async def scenario() -> None:
        inner = Recorder()
        app = BufferedBody(inner, max_bytes=100, timeout_s=5)
        status, _, _ = await _call(app, _scope([(b"transfer-encoding", b"chunked")]), _client([b"ab", b"", b"cd"]))
        assert (status, inner.bodies) == (200, [b"abcd"])
        assert (app.reading, app.buffered) == (0, 0)

    _run(scenario)


def test_oversized_bodies_get_413_and_close() -> None:
    async def scenario() -> None:
        inner = Recorder()
        app = BufferedBody(inner, max_bytes=10, timeout_s=5)
        declared = await _call(app, _scope([(b"content-length", b"11")]), _client([b"x" * 11]))
        streamed = await _call(app, _scope([(b"transfer-encoding", b"chunked")]), _client([b"x" * 6, b"x" * 6]))
        for status, headers, body in (declared, streamed):
            assert (status, _code(body), headers[b"connection"]) == (413, "payload_too_large", b"close")
        assert inner.calls == 0 and app.buffered == 0

    _run(scenario)


def test_a_slow_body_gets_408_after_the_deadline_and_never_reaches_the_app() -> None:
    async def scenario() -> None:
        inner = Recorder()
        app = BufferedBody(inner, max_bytes=100, timeout_s=0.3)
        scope = _scope([(b"content-length", b"50")])
        status, headers, body = await _call(app, scope, _client([b"x"] * 50, delay_s=0.05))
        assert (status, _code(body), headers[b"connection"]) == (408, "request_timeout", b"close")
        assert inner.calls == 0 and (app.reading, app.buffered) == (0, 0)

    _run(scenario)


def test_uploads_in_progress_are_bounded_by_count_and_bytes() -> None:
    async def scenario() -> None:
        inner = Recorder()
        app = BufferedBody(inner, max_bytes=100, timeout_s=5, max_concurrent=2, max_buffered_bytes=150)
        # Two uploads that never finish hold both reading slots and 100 reserved bytes.
        slow = [
            asyncio.create_task(_call(app, _scope([(b"content-length", b"50")]), _client([b"x"], end="hang")))
            for _ in range(2)
        ]
        await asyncio.sleep(0.05)
        assert (app.reading, app.buffered) == (2, 100)
        status, headers, body = await _call(app, _scope([(b"content-length", b"1")]), _client([b"x"]))
        assert (status, _code(body), headers[b"retry-after"]) == (503, "overloaded", b"1")
        assert b"uploads already in progress" in body
        for task in slow:
            task.cancel()
        await asyncio.gather(*slow, return_exceptions=True)
        assert (app.reading, app.buffered) == (0, 0)

        # The bytes bound: reserved from Content-Length up front, counted as chunked bodies arrive.
        inner.release.clear()
        held = asyncio.create_task(_call(app, _scope([(b"content-length", b"100")]), _client([b"x" * 100])))
        await asyncio.sleep(0.05)
        assert app.buffered == 100  # held while the app answers, not only while reading
        status, _, body = await _call(app, _scope([(b"content-length", b"60")]), _client([b"x" * 60]))
        assert (status, _code(body)) == (503, "overloaded")
        chunked = _scope([(b"transfer-encoding", b"chunked")])
        status, _, body = await _call(app, chunked, _client([b"x" * 30, b"x" * 30]))
        assert (status, _code(body)) == (503, "overloaded")
        assert app.buffered == 100
        inner.release.set()
        assert (await held)[0] == 200
        assert app.buffered == 0
        assert (await _call(app, _scope([(b"content-length", b"60")]), _client([b"x" * 60])))[0] == 200

    _run(scenario)


def test_requests_without_a_body_pass_through_and_disconnects_are_quiet() -> None:
    async def scenario() -> None:
        inner = Recorder()
        app = BufferedBody(inner, max_bytes=10, timeout_s=5, max_concurrent=1)
        assert (await _call(app, _scope([], path="/healthz"), _client([b""])))[0] == 200
        gone = await _call(app, _scope([(b"content-length", b"5")]), _client([b"ab"], end="disconnect"))
        assert gone == (None, {}, b"")
        assert inner.calls == 1 and (app.reading, app.buffered) == (0, 0)

    _run(scenario)


def test_oversized_headers_get_431() -> None:
    async def scenario() -> None:
        app = BufferedBody(Recorder(), max_bytes=10, timeout_s=5, max_header_bytes=100)
        status, _, body = await _call(app, _scope([(b"cookie", b"x" * 100)]), _client([b""]))
        assert (status, _code(body)) == (431, "headers_too_large")
        assert (await _call(app, _scope([(b"cookie", b"x" * 10)]), _client([b""])))[0] == 200

    _run(scenario)


def test_a_path_with_its_own_limit_gets_413_past_it_other_paths_keep_theirs() -> None:
    """``/qa``'s JSON is parsed on the event loop (a 13 MB body of a million keys held it for 1.4 s, found by
    fuzzing): its own, smaller limit, declared or streamed; other paths keep ``max_bytes``."""

    async def scenario() -> None:
        inner = Recorder()
        app = BufferedBody(inner, max_bytes=100, timeout_s=5, path_max_bytes={"/qa": 10})
        declared = await _call(app, _scope([(b"content-length", b"11")], "/qa"), _client([b"x" * 11]))
        streamed = await _call(app, _scope([(b"transfer-encoding", b"chunked")], "/qa"), _client([b"x" * 6] * 2))
        for status, headers, body in (declared, streamed):
            assert (status, _code(body), headers[b"connection"]) == (413, "payload_too_large", b"close")
            assert b"exceeds 10 bytes" in body
        assert inner.calls == 0 and app.buffered == 0
        at_limit = await _call(app, _scope([(b"content-length", b"10")], "/qa"), _client([b"x" * 10]))
        other = await _call(app, _scope([(b"content-length", b"100")]), _client([b"x" * 100]))
        assert (at_limit[0], other[0], inner.bodies) == (200, 200, [b"x" * 10, b"x" * 100])
        larger = BufferedBody(inner, max_bytes=10, timeout_s=5, path_max_bytes={"/qa": 100})  # max_bytes still holds
        status, _, body = await _call(larger, _scope([(b"content-length", b"11")], "/qa"), _client([b"x" * 11]))
        assert (status, _code(body)) == (413, "payload_too_large")

    _run(scenario)
