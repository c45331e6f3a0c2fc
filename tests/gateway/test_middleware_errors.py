"""Each middleware's refusal carries the status and code of its error class in :mod:`gateway.errors`.

The middlewares answer before FastAPI's exception handlers are in reach, so they write the status and
code themselves; these tests drive each one (raw ASGI, or a real uvicorn with the gateway's h11
protocol) into its refusal and compare the answer with the class's ``status_code`` and ``code``.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
import uvicorn
from starlette.types import Receive, Scope, Send

from gateway import errors
from gateway.admission import AdmissionControl
from gateway.auth import ApiKeyAuth
from gateway.body_limit import BufferedBody
from gateway.deadline import RequestDeadline
from gateway.metrics import Metrics
from gateway.rate_limit import RateLimit, TokenBuckets
from gateway.server import GatewayH11Protocol
from gateway.server_errors import ServerErrors
from tests.helpers import free_port

pytestmark = pytest.mark.unit


async def _ok(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def _assert_is(response: httpx.Response, error: type[errors.GatewayError]) -> None:
    assert (response.status_code, response.json()["error"]["code"]) == (error.status_code, error.code)


async def _post(app: object, path: str = "/qa", **kwargs: object) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await client.post(path, **kwargs)  # type: ignore[arg-type]


def test_admission_refuses_as_overloaded() -> None:
    release = asyncio.Event()

    async def held(scope: Scope, receive: Receive, send: Send) -> None:
        await release.wait()
        await _ok(scope, receive, send)

    async def scenario() -> None:
        app = AdmissionControl(held, max_inflight=1)
        first = asyncio.create_task(_post(app))
        while app.inflight < 1:
            await asyncio.sleep(0.01)
        _assert_is(await _post(app), errors.Overloaded)
        release.set()
        await first

    asyncio.run(scenario())


def test_body_limit_refusals_are_their_classes() -> None:
    async def scenario() -> None:
        small = BufferedBody(_ok, max_bytes=4, timeout_s=5.0)
        _assert_is(await _post(small, content=b"0123456789"), errors.PayloadTooLarge)
        headers = BufferedBody(_ok, max_bytes=1024, timeout_s=5.0, max_header_bytes=64)
        _assert_is(await _post(headers, headers={"x-long": "x" * 200}), errors.HeadersTooLarge)
        buffered = BufferedBody(_ok, max_bytes=1024, timeout_s=5.0, max_buffered_bytes=8)
        _assert_is(await _post(buffered, content=b"0123456789"), errors.Overloaded)

        async def never_arrives() -> dict[str, object]:
            await asyncio.sleep(10)
            return {"type": "http.disconnect"}

        sent: list[dict[str, object]] = []

        async def send(message: dict[str, object]) -> None:
            sent.append(message)

        slow = BufferedBody(_ok, max_bytes=1024, timeout_s=0.05)
        scope = {
            "type": "http",
            "method": "POST",
            "path": "/qa",
            "raw_path": b"/qa",
            "query_string": b"",
            "headers": [(b"content-length", b"10")],
        }
        await slow(scope, never_arrives, send)  # type: ignore[arg-type]
        assert sent[0]["status"] == errors.RequestTimeout.status_code
        assert json.loads(sent[1]["body"])["error"]["code"] == errors.RequestTimeout.code  # type: ignore[arg-type]

    asyncio.run(scenario())


def test_deadline_refusals_are_their_classes() -> None:
    async def slow(scope: Scope, receive: Receive, send: Send) -> None:
        await asyncio.sleep(10)

    async def scenario() -> None:
        app = RequestDeadline(slow, Metrics(), default_s=0.05, max_s=1.0)
        _assert_is(await _post(app, headers={"x-request-timeout": "soon"}), errors.InvalidRequestTimeout)
        _assert_is(await _post(app), errors.UpstreamTimeout)

    asyncio.run(scenario())


def test_auth_refuses_as_unauthorized() -> None:
    _assert_is(asyncio.run(_post(ApiKeyAuth(_ok, ["secret-key"]))), errors.Unauthorized)


def test_rate_limit_refuses_as_rate_limited() -> None:
    async def scenario() -> None:
        app = RateLimit(_ok, TokenBuckets(rate=1.0, burst=1, max_clients=10, clock=lambda: 0.0))
        assert (await _post(app)).status_code == 200
        _assert_is(await _post(app), errors.RateLimited)

    asyncio.run(scenario())


def test_server_errors_answer_as_the_base_gateway_error() -> None:
    async def broken(scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError("boom")

    _assert_is(asyncio.run(_post(ServerErrors(broken))), errors.GatewayError)


async def _exchange(port: int, raw: bytes) -> tuple[int, str]:
    """Send ``raw`` on a new connection; the status and JSON error code of the answer the server closes on."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), timeout=5)
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)["error"]["code"]


def test_h11_protocol_refusals_are_their_classes() -> None:
    """A real uvicorn serving with :class:`GatewayH11Protocol`: malformed, over-long and late headers."""

    async def scenario() -> None:
        port = free_port()
        config = uvicorn.Config(
            _ok,
            host="127.0.0.1",
            port=port,
            log_config=None,
            log_level="warning",
            http=lambda *a, **kw: GatewayH11Protocol(*a, header_timeout_s=0.2, **kw),  # type: ignore[arg-type]
            h11_max_incomplete_event_size=256,
        )
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve())
        while not server.started:
            await asyncio.sleep(0.01)
        try:
            bad = await _exchange(port, b"NOT HTTP AT ALL\r\n\r\n")
            assert bad == (errors.RequestError.status_code, errors.RequestError.code)
            long = await _exchange(port, b"GET / HTTP/1.1\r\nhost: x\r\nx-long: " + b"x" * 1024)
            assert long == (errors.HeadersTooLarge.status_code, errors.HeadersTooLarge.code)
            late = await _exchange(port, b"GET / HTTP/1.1\r\nhost: x\r\n")
            assert late == (errors.RequestTimeout.status_code, errors.RequestTimeout.code)
        finally:
            server.should_exit = True
            await task

    asyncio.run(scenario())


def _rust_panic() -> BaseException:
    """A real Rust panic through pyo3: the tokenizers library asked to cut a pair with a stride >= what is left."""
    from tokenizers.implementations import BertWordPieceTokenizer

    from gateway.vocab import BERT_BASE_UNCASED

    tokenizer = BertWordPieceTokenizer(str(BERT_BASE_UNCASED), lowercase=True)
    tokenizer.enable_truncation(max_length=8, stride=4, strategy="only_second")
    try:
        tokenizer.encode("a b c d", "e f g h i j k")
    except BaseException as exc:  # the panic is what this returns
        return exc
    raise AssertionError("the tokenizer did not panic")


def test_server_errors_answer_a_rust_panic_as_the_base_gateway_error() -> None:
    """pyo3's PanicException is a BaseException: ``except Exception`` let it through to Starlette's
    plain-text 500 without request id (found by fuzzing /qa). Cancellation still goes through."""
    panic = _rust_panic()
    assert not isinstance(panic, Exception) and errors.is_rust_panic(panic)

    async def panicking(scope: Scope, receive: Receive, send: Send) -> None:
        raise panic

    response = asyncio.run(_post(ServerErrors(panicking)))
    _assert_is(response, errors.GatewayError)
    assert response.json()["error"]["message"] == "internal error"

    async def cancelled(scope: Scope, receive: Receive, send: Send) -> None:
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(_post(ServerErrors(cancelled)))
