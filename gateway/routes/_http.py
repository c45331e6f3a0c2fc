"""Small HTTP helpers shared by the routes."""

from __future__ import annotations

from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel

from gateway import multipart
from gateway.catalog import ModelInfo
from gateway.errors import PayloadTooLarge, UnsupportedMediaType
from gateway.schemas import ErrorResponse

ACCEPTED_CONTENT_TYPES = frozenset({"image/jpeg", "image/png", "image/webp", "application/octet-stream"})
RAW_IMAGE_TYPES = ("image/jpeg", "image/png", "image/webp")

# Every POST route: 400 unparseable body, 413 body over the limit, 422 invalid fields, 5xx from Triton.
_COMMON_ERRORS = (400, 413, 422, 502, 503, 504)
_BINARY = {"type": "string", "format": "binary"}

IMAGE_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": (
            "The image: a multipart/form-data upload with one `file` part (JPEG, PNG or WebP), or the image "
            "itself as the body with its type as Content-Type."
        ),
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": {**_BINARY, "description": "JPEG, PNG or WebP image"}},
                    "required": ["file"],
                },
            },
            **{media_type: {"schema": _BINARY} for media_type in RAW_IMAGE_TYPES},
        },
    }
}
"""OpenAPI ``requestBody`` of the image routes (``openapi_extra``): they parse their body themselves."""


def error_responses(*extra: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the JSON error body of a route's error statuses."""
    return {code: {"model": ErrorResponse} for code in sorted({*_COMMON_ERRORS, *extra})}


def _invalid_file(message: str, error_type: str) -> RequestValidationError:
    """The 422 FastAPI itself answers for a missing or invalid ``file`` form field."""
    return RequestValidationError([{"loc": ("body", "file"), "msg": message, "type": error_type}])


async def image_upload(request: Request, max_parts: int, max_header_bytes: int = 0) -> multipart.Part:
    """The uploaded image: the one ``file`` part of a multipart body, or a raw ``image/*`` body.

    400 ``invalid_multipart`` for a multipart body that cannot be parsed (or a part's headers over
    ``max_header_bytes``, 0: no limit), 413 for more than
    ``max_parts`` parts, 422 ``validation_error`` for no ``file`` part (or no image body), a ``file``
    field that is not a file upload, or more than one ``file`` part.
    """
    content_type = request.headers.get("content-type", "")
    media_type = content_type.partition(";")[0].strip().lower()
    body = await request.body()  # already in memory: gateway.body_limit.BufferedBody read it
    if media_type == "multipart/form-data":
        parts = multipart.parse(body, multipart.boundary(content_type), max_parts, max_header_bytes)
        files = [p for p in parts if p.name == "file"]
        if not files:
            raise _invalid_file("Field required", "missing")
        if len(files) > 1:
            raise _invalid_file(f"Expected one file, got {len(files)} `file` parts", "value_error")
        if files[0].filename is None:
            raise _invalid_file(
                "Expected a file upload (a part with a filename), got a plain form field", "value_error"
            )
        return files[0]
    if media_type.startswith("image/") and body:
        return multipart.Part("file", None, media_type, body)
    raise _invalid_file("Field required", "missing")


def read_upload(upload: multipart.Part, max_bytes: int) -> bytes:
    """The uploaded bytes; 415 for a declared non-image type, 413 past ``max_bytes``."""
    declared = upload.content_type or "application/octet-stream"
    if declared not in ACCEPTED_CONTENT_TYPES:
        raise UnsupportedMediaType(
            f"content type {declared!r} is not supported; send image/jpeg, image/png or image/webp"
        )
    if len(upload.data) > max_bytes:
        raise PayloadTooLarge(f"upload exceeds {max_bytes} bytes")
    return upload.data


def set_model_headers(response: Response, model: ModelInfo) -> None:
    """``X-Model-Name`` and ``X-Model-Weights`` (``untrained`` means outputs are not meaningful)."""
    response.headers["X-Model-Name"] = model.name
    response.headers["X-Model-Weights"] = model.weights


def model_response(content: BaseModel, model: ModelInfo) -> Response:
    """The 200 answer: ``content`` as JSON, with the model headers of :func:`set_model_headers`.

    The same bytes and headers FastAPI sends for a route returning ``content`` under its
    ``response_model`` (``content`` was validated when it was built; its own serializer writes the
    JSON), without FastAPI's second validation and its response assembly. The route keeps
    ``response_model=`` for the OpenAPI schema.
    """
    response = Response(content.__pydantic_serializer__.to_json(content), media_type="application/json")
    set_model_headers(response, model)
    return response
