"""ASGI middleware: optional API keys, checked before anything reads the request body.

With no keys configured the gateway is open (the default, as before). With keys, every path but
:data:`EXEMPT_PATHS` (the liveness and readiness probes) needs one, as ``Authorization: Bearer
<key>`` or ``X-API-Key: <key>``; otherwise the answer is 401 ``unauthorized`` with
``WWW-Authenticate``. ``/docs``, ``/redoc``, ``/openapi.json`` and ``/metrics`` are not exempt.

A key is compared by its SHA-256 digest with :func:`hmac.compare_digest`, against every configured
key without stopping at a match, so neither the position of a match nor the key's length shows in
the timing. Keys are never logged; the rate limiter only sees a key's index (``key:3``).
"""

from __future__ import annotations

import hashlib
import hmac
import pathlib

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway._asgi import send_json_error
from gateway.errors import Unauthorized
from gateway.settings import Settings

EXEMPT_PATHS = frozenset({"/healthz", "/readyz"})
# The scope key under which the authenticated client's identity (``key:<index>``) is passed on.
CLIENT_KEY = "gateway.client"
_CHALLENGE = (b"www-authenticate", b'Bearer realm="gateway"')


def parse_key_list(text: str) -> list[str]:
    """Keys from ``GATEWAY_API_KEYS``: comma-separated, surrounding whitespace ignored."""
    return [key.strip() for key in text.split(",") if key.strip()]


def parse_key_file(text: str) -> list[str]:
    """Keys from a file: one per line; blank lines and ``#`` comments (whole-line or trailing) ignored."""
    return [key for line in text.splitlines() if (key := line.split("#", 1)[0].strip())]


def load_api_keys(settings: Settings) -> list[str]:
    """Every configured key, from ``api_keys`` and ``api_keys_file``, de-duplicated, in order.

    Raises:
        ValueError: ``api_keys_file`` is set but holds no key (a typo must not open the gateway).
        OSError: ``api_keys_file`` cannot be read.
    """
    keys = parse_key_list(settings.api_keys.get_secret_value())
    if settings.api_keys_file is not None:
        from_file = parse_key_file(pathlib.Path(settings.api_keys_file).read_text())
        if not from_file:
            raise ValueError(f"GATEWAY_API_KEYS_FILE {settings.api_keys_file} holds no API key")
        keys += from_file
    return list(dict.fromkeys(keys))


def _digest(key: str | bytes) -> bytes:
    return hashlib.sha256(key.encode() if isinstance(key, str) else key).digest()


class ApiKeyAuth:
    """Args:
    app: the wrapped ASGI app.
    keys: the accepted API keys (at least one; without keys do not install the middleware).
    """

    def __init__(self, app: ASGIApp, keys: list[str]) -> None:
        if not keys:
            raise ValueError("ApiKeyAuth needs at least one key")
        self.app = app
        self._digests = [_digest(key) for key in keys]

    def match(self, given: bytes) -> int | None:
        """The index of the key ``given`` equals, or None; constant time in which key matched."""
        digest = _digest(given)
        found: int | None = None
        for index, expected in enumerate(self._digests):
            equal = hmac.compare_digest(digest, expected)  # every key compared: no early exit
            if equal:
                found = index
        return found

    @staticmethod
    def presented(scope: Scope) -> bytes | None:
        """The key the request carries: ``Authorization: Bearer <key>``, else ``X-API-Key``."""
        api_key = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, credentials = value.partition(b" ")
                if scheme.lower() == b"bearer" and credentials.strip():
                    return credentials.strip()
            elif name == b"x-api-key" and value.strip():
                api_key = value.strip()
        return api_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in EXEMPT_PATHS:
            await self.app(scope, receive, send)
            return
        given = self.presented(scope)
        index = self.match(given) if given is not None else None
        if index is None:
            message = "a valid API key is required (Authorization: Bearer <key> or X-API-Key)"
            await send_json_error(send, Unauthorized.status_code, Unauthorized.code, message, [_CHALLENGE])
            return
        scope[CLIENT_KEY] = f"key:{index}"
        await self.app(scope, receive, send)
