"""How uvicorn serves the gateway: the HTTP/1.1 protocol with header limits, and its options from settings.

uvicorn's parsers buffer request headers without limit (httptools) or up to a size (h11), and
neither puts a deadline on a connection before its first request is complete (``timeout_keep_alive``
only runs between requests), so a client trickling its headers holds the connection for ever. The
gateway serves with one of two protocols, ``settings.http_parser`` picking:

:class:`GatewayHttpToolsProtocol` (``httptools``, the default: its C parser costs about 1.8 ms less
gateway CPU per request than h11's pure Python, see ``benchmarks/gateway_cpu.py``): uvicorn's
httptools protocol with the same two limits as below, enforced around the parser: the bytes a
request's line and headers have taken so far are counted as they arrive, and past
``max_header_bytes`` the client gets 431 ``headers_too_large`` and the connection is closed (a header
block that arrives complete in one socket read is refused with the same 431 by
``gateway.body_limit``); the header deadline is the same as h11's; malformed requests get 400
``bad_request`` as JSON.

:class:`GatewayH11Protocol` (``h11``): uvicorn's h11 protocol with

- ``h11_max_incomplete_event_size`` set to ``max_header_bytes``: h11 stops buffering an incomplete
  request line plus headers at that size; the client gets 431 ``headers_too_large`` (JSON) and the
  connection is closed. (A header block that arrives complete in one socket read is parsed by h11
  and then refused with the same 431 by ``gateway.body_limit``.) Other malformed requests get 400
  ``bad_request`` as JSON instead of uvicorn's plain text.
- a header deadline: a timer from the connection's opening (or, on a kept-alive connection, from the
  next request's first byte) until the request's headers are complete; when it fires the client
  gets 408 ``request_timeout`` (if it sent anything) and the connection is closed.

Every such refusal (408, 431, 400) is answered before the app, so its middlewares never see it: the
protocol itself adds ``X-Request-ID`` (the client's where httptools had parsed a valid one, else a
generated one; h11 hands over no header of an incomplete block), logs it with that id and counts it in
``gateway_http_refusals_total{code}`` of the app's :class:`~gateway.metrics.Metrics`.
"""

from __future__ import annotations

import asyncio
import functools
import http
import json
import logging
import sys
from typing import Any

import h11
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from gateway import request_id
from gateway._asgi import error_body
from gateway.errors import HeadersTooLarge, RequestError, RequestTimeout
from gateway.metrics import Metrics
from gateway.settings import Settings

LOGGER = logging.getLogger(__name__)


def _raw_json_response(error: type[RequestError], message: str, rid: str) -> bytes:
    """A complete HTTP/1.1 response with ``error``'s status, JSON error body and ``X-Request-ID`` that
    closes the connection."""
    body = json.dumps(error_body(error.code, message)).encode()
    status = error.status_code
    head = (
        f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nx-request-id: {rid}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


def app_metrics(app: Any) -> Metrics | None:
    """The gateway's :class:`Metrics` (``app.state.metrics``) behind uvicorn's wrappers of the app, if any."""
    for _ in range(16):  # ProxyHeadersMiddleware, MessageLoggerMiddleware, ... each hold the next as .app
        metrics = getattr(getattr(app, "state", None), "metrics", None)
        if isinstance(metrics, Metrics):
            return metrics
        app = getattr(app, "app", None)
        if app is None:
            break
    return None


class _HeaderDeadline:
    """The header deadline both protocols share: one timer per connection, armed while a request's
    line and headers are awaited; :meth:`_header_timeout` (each protocol's) runs when it fires. Also
    how both answer a request they refuse before the app (:meth:`_refused`)."""

    header_timeout_s: float
    header_timer: asyncio.TimerHandle | None
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    logger: Any

    app: Any

    def _header_timeout(self) -> None:
        raise NotImplementedError

    def _client_request_id(self) -> str | None:
        """The ``X-Request-ID`` of the request being refused, where its headers were parsed (else None)."""
        return None

    def _refused(self, error: type[RequestError], message: str) -> str:
        """Count a refusal (``gateway_http_refusals_total{code}``), log it; returns its request id (the
        client's when parsed and valid, else a new one) for the answer's ``X-Request-ID``."""
        rid = request_id.choose(self._client_request_id())
        metrics = app_metrics(self.app)
        if metrics is not None:
            metrics.http_refusals.labels(error.code).inc()
        token = request_id.current.set(rid)
        try:
            LOGGER.info("refused before the app: %s %s (%s)", error.status_code, error.code, message)
        finally:
            request_id.current.reset(token)
        return rid

    def _refuse(self, error: type[RequestError], message: str) -> None:
        """Answer ``error`` as JSON with an ``X-Request-ID``, count it, and close the connection."""
        self.transport.write(_raw_json_response(error, message, self._refused(error, message)))
        self.transport.close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[misc]  # the protocol class after this mixin
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)  # type: ignore[misc]

    def _arm_header_timer(self) -> None:
        if self.header_timer is None:
            self.header_timer = self.loop.call_later(self.header_timeout_s, self._header_timeout)

    def _disarm_header_timer(self) -> None:
        if self.header_timer is not None:
            self.header_timer.cancel()
            self.header_timer = None

    def _close_late(self, partial_request: bool) -> None:
        """Close a connection whose request headers did not arrive in time (408 if part of one came)."""
        if partial_request:  # say why we hang up
            self._refuse(RequestTimeout, f"request headers not received within {self.header_timeout_s:g} s")
        else:
            self.transport.close()


class GatewayH11Protocol(_HeaderDeadline, H11Protocol):
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

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        # h11 leaves IDLE only once a request's headers are complete.
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self._arm_header_timer()
        else:
            self._disarm_header_timer()

    def _header_timeout(self) -> None:
        self.header_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        self._close_late(partial_request=bool(self.conn.trailing_data[0]))

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
        rid = self._refused(HeadersTooLarge if status == HeadersTooLarge.status_code else RequestError, message)
        body = json.dumps(error_body(code, message)).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"x-request-id", rid.encode()),
            (b"connection", b"close"),
        ]
        response = h11.Response(status_code=status, headers=headers, reason=http.HTTPStatus(status).phrase)
        for event in (response, h11.Data(data=body), h11.EndOfMessage()):
            self.transport.write(self.conn.send(event) or b"")
        self.transport.close()


class GatewayHttpToolsProtocol(_HeaderDeadline, HttpToolsProtocol):
    """uvicorn's httptools protocol with a header size limit, a header deadline and JSON 400/431 answers.

    Args:
        config, server_state, app_state, _loop: as uvicorn passes them to every protocol.
        header_timeout_s: deadline for a request's line and headers.
        max_header_bytes: most bytes a request's line and headers may take before they are complete
            (0: no limit). Both bound with ``functools.partial`` by :func:`uvicorn_options`.
    """

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        header_timeout_s: float = 10.0,
        max_header_bytes: int = 0,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.header_timeout_s = header_timeout_s
        self.max_header_bytes = max_header_bytes
        self.header_timer: asyncio.TimerHandle | None = None
        self.in_headers = False  # a request has begun and its headers are not complete yet
        self.header_bytes = 0  # bytes received since that request began (counted per socket read)

    def data_received(self, data: bytes) -> None:
        if self.transport.is_closing():
            return  # refused (431, 408, 400): the rest is not parsed
        super().data_received(data)
        if self.in_headers and not self.transport.is_closing():
            self.header_bytes += len(data)
            if self.max_header_bytes and self.header_bytes > self.max_header_bytes:
                self._disarm_header_timer()
                self._refuse(HeadersTooLarge, f"request line and headers exceed {self.max_header_bytes} bytes")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.in_headers, self.header_bytes = True, 0
        self._arm_header_timer()

    def on_headers_complete(self) -> None:
        self.in_headers = False
        self._disarm_header_timer()
        super().on_headers_complete()

    def _header_timeout(self) -> None:
        self.header_timer = None
        if self.transport.is_closing() or (self.cycle is not None and not self.in_headers):
            return  # a request is being served: its body has its own deadline
        self._close_late(partial_request=self.in_headers)

    def send_400_response(self, msg: str) -> None:
        """Answer a request httptools refused as malformed, as JSON 400, and close the connection."""
        self._disarm_header_timer()
        self._refuse(RequestError, "invalid HTTP request")

    def _client_request_id(self) -> str | None:
        # httptools hands over each header once complete: those of the refused request parsed so far.
        if not self.in_headers:
            return None
        return next((v.decode("latin-1") for k, v in self.headers if k == request_id.HEADER.encode()), None)


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.run`` / ``uvicorn.Config``: address, logging and the request limits."""
    # A partial of a module-level class stays picklable (uvicorn's worker processes are spawned).
    http: functools.partial[Any]
    if settings.http_parser == "h11":
        http = functools.partial(GatewayH11Protocol, header_timeout_s=settings.header_timeout_s)
    else:
        http = functools.partial(
            GatewayHttpToolsProtocol,
            header_timeout_s=settings.header_timeout_s,
            max_header_bytes=settings.max_header_bytes,
        )
    return {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level,
        "log_config": None,  # keep gateway.logs.configure_logging's handler (JSON or text, with request ids)
        "http": http,
        "h11_max_incomplete_event_size": settings.max_header_bytes,
        "timeout_graceful_shutdown": settings.shutdown_timeout_s,  # SIGTERM: drain at most this long
        # No WebSocket routes: an Upgrade request is answered as plain HTTP (uvicorn's handshake answered
        # every one with a bare 403, no JSON body, no X-Request-ID).
        "ws": "none",
        # X-Forwarded-For only from the proxies named in settings (none by default; uvicorn's default
        # trusted any local process, a way around the rate limit).
        "proxy_headers": bool(settings.forwarded_allow_ips),
        "forwarded_allow_ips": settings.forwarded_allow_ips or None,
    }
