"""Small HTTP helpers shared by the routes."""

from __future__ import annotations

from typing import Any

from fastapi import Response, UploadFile

from gateway.catalog import ModelInfo
from gateway.errors import PayloadTooLarge, UnsupportedMediaType
from gateway.schemas import ErrorResponse

ACCEPTED_CONTENT_TYPES = frozenset({"image/jpeg", "image/png", "image/webp", "application/octet-stream"})
_CHUNK = 1 << 20


# Every POST route: 400 unparseable body, 413 body over the limit, 422 invalid fields, 5xx from Triton.
_COMMON_ERRORS = (400, 413, 422, 502, 503, 504)


def error_responses(*extra: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the JSON error body of a route's error statuses."""
    return {code: {"model": ErrorResponse} for code in sorted({*_COMMON_ERRORS, *extra})}


async def read_upload(upload: UploadFile, max_bytes: int) -> bytes:
    """The uploaded bytes; 415 for a declared non-image type, 413 past ``max_bytes``."""
    declared = (upload.content_type or "application/octet-stream").split(";")[0].strip().lower()
    if declared not in ACCEPTED_CONTENT_TYPES:
        raise UnsupportedMediaType(
            f"content type {declared!r} is not supported; send image/jpeg, image/png or image/webp"
        )
    chunks: list[bytes] = []
    total = 0
    while chunk := await upload.read(_CHUNK):
        total += len(chunk)
        if total > max_bytes:
            raise PayloadTooLarge(f"upload exceeds {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def set_model_headers(response: Response, model: ModelInfo) -> None:
    """``X-Model-Name`` and ``X-Model-Weights`` (``untrained`` means outputs are not meaningful)."""
    response.headers["X-Model-Name"] = model.name
    response.headers["X-Model-Weights"] = model.weights
