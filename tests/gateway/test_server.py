"""The uvicorn options built from settings: the gateway's HTTP protocol with the configured limits."""

from __future__ import annotations

import contextlib
import json
import pickle
import re
import socket
import time
from collections.abc import Iterator

import pytest
import uvicorn

from gateway import Settings, create_app
from gateway.metrics import Metrics
from gateway.server import GatewayH11Protocol, GatewayHttpToolsProtocol, uvicorn_options
from tests.helpers import free_port, serve


@pytest.mark.parametrize(
    ("parser", "protocol", "keywords"),
    [
        ("httptools", GatewayHttpToolsProtocol, {"header_timeout_s": 2.5, "max_header_bytes": 4096}),
        ("h11", GatewayH11Protocol, {"header_timeout_s": 2.5}),
    ],
)
def test_options_carry_the_limits_and_survive_pickling_for_worker_processes(
    parser: str, protocol: type, keywords: dict[str, float]
) -> None:
    settings = Settings(max_header_bytes=4096, header_timeout_s=2.5, port=24017, http_parser=parser, _env_file=None)  # type: ignore[call-arg, arg-type]
    options = uvicorn_options(settings)
    config = uvicorn.Config(create_app(settings), **options)
    config.load()
    assert (config.port, config.h11_max_incomplete_event_size) == (24017, 4096)
    protocol_class = pickle.loads(pickle.dumps(options["http"]))  # uvicorn spawns its workers
    assert protocol_class.func is protocol
    assert protocol_class.keywords == keywords


def test_httptools_is_the_default_parser() -> None:
    assert Settings(_env_file=None).http_parser == "httptools"  # type: ignore[call-arg]


@pytest.fixture(params=["httptools", "h11"])
def raw_server(request: pytest.FixtureRequest) -> Iterator[tuple[str, int, Metrics]]:
    """The gateway's HTTP protocol (uvicorn, in a thread) in front of an app that is never reached:
    the refusals under test are answered before it (no lifespan, so no Triton)."""
    settings = Settings(
        host="127.0.0.1",
        port=free_port(),
        header_timeout_s=0.5,
        max_header_bytes=2048,
        http_parser=request.param,
        _env_file=None,  # type: ignore[call-arg]
    )
    app = create_app(settings)
    with serve(app, **uvicorn_options(settings), lifespan="off"):
        yield request.param, settings.port, app.state.metrics


def _refusal(port: int, data: bytes, chunked: bool = False) -> tuple[int, dict[str, str], dict[str, str]]:
    """Send ``data`` (in 512-byte pieces when ``chunked``), read the answer; returns status, headers, error."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        with contextlib.suppress(OSError):  # the server may hang up before it has all of it
            for i in range(0, len(data), 512 if chunked else len(data)):
                sock.sendall(data[i : i + (512 if chunked else len(data))])
                time.sleep(0.01 if chunked else 0)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value for name, value in (line.split(": ", 1) for line in lines[1:])}
    assert headers["content-type"] == "application/json" and headers["connection"] == "close"
    return int(lines[0].split()[1]), headers, json.loads(body)["error"]


def _count(metrics: Metrics, code: str) -> float:
    value = metrics.registry.get_sample_value("gateway_http_refusals_total", {"code": code})
    assert value is not None, f"no series for {code}"
    return value


def test_http_layer_refusals_carry_a_request_id_and_are_counted(raw_server: tuple[str, int, Metrics]) -> None:
    parser, port, metrics = raw_server
    codes = ("request_timeout", "headers_too_large", "bad_request")
    assert [_count(metrics, c) for c in codes] == [0, 0, 0]  # every series exists before any refusal
    generated = re.compile(r"^[0-9a-f]{32}$")

    def assert_id(headers: dict[str, str], given: str) -> None:
        # httptools hands over each complete header, so the client's id is known; h11 buffers the whole
        # header block, so a refused one has none parsed and the gateway makes one up.
        if parser == "httptools":
            assert headers["x-request-id"] == given
        else:
            assert generated.match(headers["x-request-id"]), headers

    status, headers, error = _refusal(port, b"GET /healthz HTTP/1.1\r\nX-Request-ID: slow-1\r\nX-Slow: ab")
    assert (status, error["code"]) == (408, "request_timeout") and error["message"]
    assert_id(headers, "slow-1")

    big = b"GET /healthz HTTP/1.1\r\nX-Request-ID: big-1\r\nX-Big: " + b"a" * 8192 + b"\r\n\r\n"
    status, headers, error = _refusal(port, big, chunked=True)
    assert (status, error["code"]) == (431, "headers_too_large")
    assert_id(headers, "big-1")

    # Not a valid id (over 128 characters): a generated one, as for any request.
    status, headers, error = _refusal(port, b"GET /healthz HTTP/1.1\r\nX-Request-ID: " + b"x" * 129 + b"\r\nX: ")
    assert status == 408 and generated.match(headers["x-request-id"])

    status, headers, error = _refusal(port, b"NOT HTTP AT ALL\r\n\r\n")
    assert (status, error["code"]) == (400, "bad_request") and generated.match(headers["x-request-id"])

    assert [_count(metrics, c) for c in codes] == [2, 1, 1]


@pytest.mark.parametrize("path", ["/healthz", "/no-such-path"])
def test_a_websocket_upgrade_is_answered_as_plain_http(raw_server: tuple[str, int, Metrics], path: str) -> None:
    """The gateway has no WebSocket route: uvicorn's handshake answered every upgrade with a bare 403 (no
    JSON body, no X-Request-ID; found by fuzzing); it is plain HTTP now."""
    _, port, _ = raw_server
    upgrade = (
        f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(upgrade)
        received = b""
        while b"\r\n\r\n" not in received or not received.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    assert b"x-request-id" in head.lower()
    if path == "/healthz":
        assert (status, json.loads(body)) == (200, {"status": "ok"})
    else:
        assert (status, json.loads(body)["error"]["code"]) == (404, "http_error")
