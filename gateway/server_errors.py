"""ASGI middleware: any unhandled exception becomes the JSON 500, answered like every other error.

Starlette's own catch-all (``ServerErrorMiddleware``) sits outside every user middleware, so its
500 carried no ``X-Request-ID``, and it re-raises, so the server closed the connection. Installed
just inside :class:`gateway.request_id.RequestId`, this one answers ``500 internal_error`` with the
request id, logs the traceback with that id, and re-raises nothing: the keep-alive connection
serves the next request. A Rust panic raised through pyo3 (``PanicException``, a ``BaseException``) is
answered so too; other ``BaseException``s (cancellation, exit) are re-raised.
"""

from __future__ import annotations

import logging

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway import request_id
from gateway._asgi import send_json_error
from gateway.errors import GatewayError, is_rust_panic

LOGGER = logging.getLogger(__name__)


class ServerErrors:
    """Args:
    app: the wrapped ASGI app.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except BaseException as exc:
            if not isinstance(exc, Exception) and not is_rust_panic(exc):
                raise  # cancellation, exit: not an error of this request
            LOGGER.exception(
                "unhandled error in %s %s (request id %s)", scope["method"], scope["path"], request_id.current.get()
            )
            if started:
                return  # the status line is out: nothing more can be said; the server ends the response
            await send_json_error(send, GatewayError.status_code, GatewayError.code, "internal error")
