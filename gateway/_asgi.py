"""Answering from raw ASGI middleware, before FastAPI's exception handlers are in reach."""

from __future__ import annotations

import json
from collections.abc import Iterable

from starlette.types import Send


def error_body(code: str, message: str, details: list[dict[str, object]] | None = None) -> dict[str, object]:
    """The gateway's one JSON error shape: ``{"error": {"code", "message"[, "details"]}}``."""
    error: dict[str, object] = {"code": code, "message": message}
    if details is not None:
        error["details"] = details
    return {"error": error}


async def send_json_error(
    send: Send, status: int, code: str, message: str, headers: Iterable[tuple[bytes, bytes]] = ()
) -> None:
    """Send the gateway's JSON error body (``{"error": {"code", "message"}}``) as a complete response."""
    body = json.dumps(error_body(code, message)).encode()
    all_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers]
    await send({"type": "http.response.start", "status": status, "headers": all_headers})
    await send({"type": "http.response.body", "body": body})
