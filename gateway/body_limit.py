"""ASGI middleware: refuse request bodies over a size limit before they are parsed or spooled.

Checks ``Content-Length`` up front and counts streamed (chunked) bodies as they arrive; either
way the client gets a 413 JSON error and the body is never buffered in full.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway._asgi import send_json_error


class BodySizeLimit:
    """Args:
    app: the wrapped ASGI app.
    max_bytes: the largest request body accepted.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def _reject(self, send: Send) -> None:
        await send_json_error(send, 413, "payload_too_large", f"request body exceeds {self.max_bytes} bytes")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await self._reject(send)
                return

        received = 0
        started = rejected = False

        async def limited_receive() -> Message:
            # Past the limit: answer 413 ourselves, then tell the app the client went away, so
            # it stops reading (frameworks turn exceptions raised here into their own 400s).
            nonlocal received, rejected
            if rejected:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    rejected = True
                    if not started:
                        await self._reject(send)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if rejected:
                return  # the 413 has been sent; drop whatever the app answers to the disconnect
            started = started or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, limited_receive, guarded_send)
