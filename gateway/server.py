"""How uvicorn serves the gateway: the HTTP/1.1 protocol with header limits, and its options from settings.

uvicorn's default parser (httptools) buffers request headers without limit and, like its h11 one,
puts no deadline on a connection before its first request is complete (``timeout_keep_alive`` only
runs between requests), so a client trickling its headers holds the connection for ever. The gateway
serves with :class:`GatewayH11Protocol`: uvicorn's h11 protocol with

- ``h11_max_incomplete_event_size`` set to ``max_header_bytes``: h11 stops buffering an incomplete
  request line plus headers at that size; the client gets 431 ``headers_too_large`` (JSON) and the
  connection is closed. (A header block that arrives complete in one socket read is parsed by h11
  and then refused with the same 431 by ``gateway.body_limit``.) Other malformed requests get 400
  ``bad_request`` as JSON instead of uvicorn's plain text.
- a header deadline: a timer from the connection's opening (or, on a kept-alive connection, from the
  next request's first byte) until the request's headers are complete; when it fires the client
  gets 408 ``request_timeout`` (if it sent anything) and the connection is closed.
"""

from __future__ import annotations

import asyncio
import functools
import http
import json
import sys
from typing import Any

import h11
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

from gateway._asgi import error_body
from gateway.errors import HeadersTooLarge, RequestError, RequestTimeout
from gateway.settings import Settings


def _raw_json_response(status: int, reason: str, code: str, message: str) -> bytes:
    """A complete HTTP/1.1 response with the JSON error body that closes the connection."""
    body = json.dumps(error_body(code, message)).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


class GatewayH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a header deadline and JSON 400/431 answers.

    Args:
        config, server_state, app_state, _loop: as uvicorn passes them to every protocol.
        header_timeout_s: deadline for a request's line and headers (bound with ``functools.partial``
            by :func:`uvicorn_options`).
    """

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        header_timeout_s: float = 10.0,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.header_timeout_s = header_timeout_s
        self.header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        # h11 leaves IDLE only once a request's headers are complete.
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self._arm_header_timer()
        else:
            self._disarm_header_timer()

    def _arm_header_timer(self) -> None:
        if self.header_timer is None:
            self.header_timer = self.loop.call_later(self.header_timeout_s, self._header_timeout)

    def _disarm_header_timer(self) -> None:
        if self.header_timer is not None:
            self.header_timer.cancel()
            self.header_timer = None

    def _header_timeout(self) -> None:
        self.header_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        if self.conn.trailing_data[0]:  # part of a request came: say why we hang up
            message = f"request headers not received within {self.header_timeout_s:g} s"
            status = RequestTimeout.status_code
            response = _raw_json_response(status, http.HTTPStatus(status).phrase, RequestTimeout.code, message)
            self.transport.write(response)
            self.logger.info("closing a connection whose request headers did not arrive in time")
        self.transport.close()

    def send_400_response(self, msg: str) -> None:
        """Answer a request h11 refused, as JSON: 431 for an over-long header block, else 400.

        uvicorn calls this from inside its ``except h11.RemoteProtocolError`` block, so the error
        being handled is h11's, whose ``error_status_hint`` is 431 for "receive buffer too long".
        """
        self._disarm_header_timer()
        exc = sys.exception()
        if isinstance(exc, h11.RemoteProtocolError) and exc.error_status_hint == 431:
            limit = self.config.h11_max_incomplete_event_size
            status, code = HeadersTooLarge.status_code, HeadersTooLarge.code
            message = f"request line and headers exceed {limit} bytes"
        else:
            status, code, message = RequestError.status_code, RequestError.code, "invalid HTTP request"
        body = json.dumps(error_body(code, message)).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        response = h11.Response(status_code=status, headers=headers, reason=http.HTTPStatus(status).phrase)
        for event in (response, h11.Data(data=body), h11.EndOfMessage()):
            self.transport.write(self.conn.send(event) or b"")
        self.transport.close()


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.run`` / ``uvicorn.Config``: address, logging and the request limits."""
    return {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level,
        "log_config": None,  # keep gateway.logs.configure_logging's handler (JSON or text, with request ids)
        # A partial of a module-level class stays picklable (uvicorn's worker processes are spawned).
        "http": functools.partial(GatewayH11Protocol, header_timeout_s=settings.header_timeout_s),
        "h11_max_incomplete_event_size": settings.max_header_bytes,
        "timeout_graceful_shutdown": settings.shutdown_timeout_s,  # SIGTERM: drain at most this long
    }
