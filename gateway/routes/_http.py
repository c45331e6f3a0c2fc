"""Small HTTP helpers shared by the routes."""

from __future__ import annotations

from fastapi import Response, UploadFile

from gateway.catalog import ModelInfo
from gateway.errors import PayloadTooLarge, UnsupportedMediaType

ACCEPTED_CONTENT_TYPES = frozenset({"image/jpeg", "image/png", "image/webp", "application/octet-stream"})
_CHUNK = 1 << 20


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
