"""ASGI middleware: read the whole request body, bounded in size, time and memory, before the app runs.

It sits outside admission control, so a slow upload never holds a processing slot: only requests
whose body has fully arrived go on to admission and the routes, which get the buffered body replayed.
What it answers, always as the JSON error body and with ``Connection: close`` (the rest of the body
is not read):

- 431 ``headers_too_large``: request target and headers over ``max_header_bytes`` (uvicorn's parser
  refuses most of these before a request exists; this is the exact check).
- 413 ``payload_too_large``: ``Content-Length`` or the bytes received over ``max_bytes`` (or the
  path's own limit in ``path_max_bytes``).
- 408 ``request_timeout``: the body did not arrive in full within ``timeout_s``.
- 503 ``overloaded`` with ``Retry-After``: ``max_concurrent`` bodies are already being read, or the
  body would take the bytes held across all requests over ``max_buffered_bytes``.

Requests without a body (no ``Content-Length``, or 0, and no ``Transfer-Encoding``) pass straight through.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway._asgi import send_json_error
from gateway.errors import GatewayError, HeadersTooLarge, Overloaded, PayloadTooLarge, RequestTimeout

CLOSE = (b"connection", b"close")


def header_bytes(scope: Scope) -> int:
    """Size of the request target and headers roughly as they came on the wire."""
    target = len(scope.get("raw_path") or scope["path"].encode()) + len(scope.get("query_string", b""))
    return target + sum(len(name) + len(value) + 4 for name, value in scope["headers"])


class _Share:
    """The body bytes one request holds against ``max_buffered_bytes``."""

    held = 0


class BufferedBody:
    """Args:
    app: the wrapped ASGI app (admission control and the routes).
    max_bytes: the largest request body accepted (413).
    timeout_s: deadline for the whole body to arrive, from when its reading starts (408).
    max_concurrent: most bodies being read at once; 0: unbounded (503).
    max_buffered_bytes: most body bytes held at once across requests, from their arrival until the
        request is answered; 0: unbounded (503).
    max_header_bytes: largest request target plus headers; 0: unbounded (431).
    retry_after_s: the ``Retry-After`` given with a 503.
    path_max_bytes: a smaller largest body for some paths (e.g. ``/qa``, whose JSON body is parsed on
        the event loop); ``max_bytes`` still bounds them.
    """

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        timeout_s: float,
        max_concurrent: int = 0,
        max_buffered_bytes: int = 0,
        max_header_bytes: int = 0,
        retry_after_s: int = 1,
        path_max_bytes: dict[str, int] | None = None,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.max_concurrent = max_concurrent
        self.max_buffered_bytes = max_buffered_bytes
        self.max_header_bytes = max_header_bytes
        self.retry_after_s = retry_after_s
        self.path_max_bytes = path_max_bytes or {}
        self.reading = 0  # bodies being read now
        self.buffered = 0  # body bytes held now (reserved from Content-Length, or counted as they come)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        share = _Share()
        try:
            try:
                body = await self._intake(scope, receive, share)
            except GatewayError as exc:
                headers = [CLOSE]
                if exc.status_code == Overloaded.status_code:
                    headers.append((b"retry-after", str(self.retry_after_s).encode()))
                await send_json_error(send, exc.status_code, exc.code, exc.message, headers)
                return
            if body is _NO_BODY:
                await self.app(scope, receive, send)
            elif isinstance(body, bytes):  # None: the client went away mid-body; nobody to answer
                await self.app(scope, _replay(body, receive), send)
        finally:
            self.buffered -= share.held

    async def _intake(self, scope: Scope, receive: Receive, share: _Share) -> bytes | object | None:
        """The whole body, ``_NO_BODY``, or None if the client disconnected; a ``GatewayError`` to refuse."""
        if self.max_header_bytes and header_bytes(scope) > self.max_header_bytes:
            raise HeadersTooLarge(f"request target and headers exceed {self.max_header_bytes} bytes")
        length: int | None = None
        chunked = False
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit():
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = True
        if not chunked and not length:
            return _NO_BODY
        max_bytes = min(self.max_bytes, self.path_max_bytes.get(scope["path"], self.max_bytes))
        if length is not None and length > max_bytes:
            raise PayloadTooLarge(f"request body exceeds {max_bytes} bytes")
        if self.max_concurrent and self.reading >= self.max_concurrent:
            raise Overloaded(f"{self.max_concurrent} uploads already in progress; retry")
        self._reserve(share, length or 0)
        self.reading += 1  # single event loop: no lock needed
        try:
            async with asyncio.timeout(self.timeout_s):
                return await self._read(receive, share, max_bytes)
        except TimeoutError:
            raise RequestTimeout(f"request body not received within {self.timeout_s:g} s") from None
        finally:
            self.reading -= 1

    async def _read(self, receive: Receive, share: _Share, max_bytes: int) -> bytes | None:
        chunks: list[bytes] = []
        received = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return None
            chunk: bytes = message.get("body", b"")
            received += len(chunk)
            if received > max_bytes:
                raise PayloadTooLarge(f"request body exceeds {max_bytes} bytes")
            self._reserve(share, received)
            if chunk:
                chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _reserve(self, share: _Share, wanted: int) -> None:
        """Grow the request's share of the buffered bytes to ``wanted``, or refuse with 503."""
        grow = wanted - share.held
        if grow <= 0:
            return
        if self.max_buffered_bytes and self.buffered + grow > self.max_buffered_bytes:
            raise Overloaded(f"request bodies held would exceed {self.max_buffered_bytes} bytes; retry")
        self.buffered += grow
        share.held = wanted


_NO_BODY = object()


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives the whole body in one message, then defers to the client's (disconnect)."""
    pending: Iterator[Message] = iter([{"type": "http.request", "body": body, "more_body": False}])

    async def replay() -> Message:
        for message in pending:
            return message
        return await receive()

    return replay
