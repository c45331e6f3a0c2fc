"""Gateway errors. Each carries its HTTP status and a stable machine-readable code.

Exception tree::

    GatewayError
    ├── RequestError                 4xx: the client's request is at fault
    │   ├── InvalidImage             400 invalid_image: not decodable as an image
    │   ├── InvalidMultipart         400 invalid_multipart: a multipart/form-data body that cannot be
    │   │                            parsed (gateway.multipart)
    │   ├── UnsupportedMediaType     415 unsupported_media_type: an image format we do not take
    │   ├── PayloadTooLarge          413 payload_too_large: upload or decoded image over the limit
    │   │   └── TooManyWindows       413 too_many_windows: a /qa context needing more windows than allowed
    │   ├── UnsupportedImageShape    422 unsupported_image_shape: aspect ratio past the limit
    │   ├── InvalidText              422 invalid_text: empty or over-long question/context
    │   ├── UnknownModel             404 unknown_model: no such model for this task
    │   ├── RequestTimeout           408 request_timeout: the body (or the headers) did not arrive in time
    │   ├── HeadersTooLarge          431 headers_too_large: request line and headers over the limit
    │   ├── InvalidRequestTimeout    400 invalid_request_timeout: X-Request-Timeout not a positive finite
    │   │                            number (answered by gateway.deadline, before any route)
    │   ├── Unauthorized             401 unauthorized: API keys are set and none valid was given
    │   │                            (answered by gateway.auth, before any route)
    │   └── RateLimited              429 rate_limited: the client's token bucket is empty
    │                                (answered by gateway.rate_limit, before any route)
    ├── Overloaded                   503 overloaded (+ Retry-After): the gateway's own bounds are full:
    │                                uploads in progress (gateway.body_limit) or the image decoding
    │                                budget (gateway.image_budget), or Triton shedding from a model's
    │                                queue, full or timed out in it (gateway.triton; never retried);
    │                                gateway.admission answers the same code itself, before any route,
    │                                also by its latency budget
    └── UpstreamError                5xx: Triton is at fault
        ├── TritonUnavailable        503 triton_unavailable: unreachable after retries, or not ready
        ├── UpstreamTimeout          504 upstream_timeout: the inference deadline passed (or that of a
        │                            configuration read or shared-memory registration, gateway.triton)
        └── InferenceFailed          502 inference_failed: Triton answered with an error

``message`` is what the client reads; ``detail`` (internal addresses, raw gRPC text) is only
logged, with the request id. Upstream errors carry a generic message and put the rest in ``detail``.
"""

from __future__ import annotations


class GatewayError(Exception):
    status_code = 500
    code = "internal_error"

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(f"{message} ({detail})" if detail else message)
        self.message = message
        self.headers: dict[str, str] = {}
        self.detail = detail


class RequestError(GatewayError):
    status_code = 400
    code = "bad_request"


class InvalidImage(RequestError):
    status_code = 400
    code = "invalid_image"


class InvalidMultipart(RequestError):
    status_code = 400
    code = "invalid_multipart"


class UnsupportedMediaType(RequestError):
    status_code = 415
    code = "unsupported_media_type"


class PayloadTooLarge(RequestError):
    status_code = 413
    code = "payload_too_large"


class UnsupportedImageShape(RequestError):
    status_code = 422
    code = "unsupported_image_shape"


class TooManyWindows(PayloadTooLarge):
    status_code = 413
    code = "too_many_windows"


class InvalidText(RequestError):
    status_code = 422
    code = "invalid_text"


class UnknownModel(RequestError):
    status_code = 404
    code = "unknown_model"


class RequestTimeout(RequestError):
    status_code = 408
    code = "request_timeout"


class HeadersTooLarge(RequestError):
    status_code = 431
    code = "headers_too_large"


class InvalidRequestTimeout(RequestError):
    status_code = 400
    code = "invalid_request_timeout"


class Overloaded(GatewayError):
    """Args:
    message: what was refused.
    retry_after_s: the ``Retry-After`` given to the client.
    detail: logged only, never sent (e.g. Triton's own text).
    """

    status_code = 503
    code = "overloaded"

    def __init__(self, message: str, retry_after_s: int = 1, detail: str = "") -> None:
        super().__init__(message, detail)
        self.headers["Retry-After"] = str(retry_after_s)


class Unauthorized(RequestError):
    status_code = 401
    code = "unauthorized"


class RateLimited(RequestError):
    status_code = 429
    code = "rate_limited"


class UpstreamError(GatewayError):
    status_code = 502
    code = "upstream_error"


class TritonUnavailable(UpstreamError):
    status_code = 503
    code = "triton_unavailable"


class UpstreamTimeout(UpstreamError):
    status_code = 504
    code = "upstream_timeout"


class InferenceFailed(UpstreamError):
    status_code = 502
    code = "inference_failed"


def is_rust_panic(exc: BaseException) -> bool:
    """Whether ``exc`` is a Rust panic raised through pyo3 (``pyo3_runtime.PanicException``, e.g. from the
    tokenizers library): a ``BaseException``, so ``except Exception`` does not catch it."""
    kind = type(exc)
    return kind.__name__ == "PanicException" and kind.__module__ == "pyo3_runtime"
