"""Slow and oversized clients against the real server: ``python -m gateway`` (uvicorn) on a real tritonserver.

Raw sockets play the slow clients: uploads that trickle their body a few bytes at a time, headers
that never end, a 1 MB header. Small limits (GATEWAY_* env) keep the whole module to seconds.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.helpers import free_port
from triton_local import TritonServer
from triton_local.process import stop_process

MAX_INFLIGHT = 4
MAX_BODY_READS = 10
BODY_TIMEOUT_S = 8.0  # long enough for a /classify to finish on a busy 2-core machine meanwhile
HEADER_TIMEOUT_S = 1.0
MAX_HEADER_BYTES = 8192


@pytest.fixture(scope="module")
def server(triton: TritonServer, model_repo: pathlib.Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """``python -m gateway`` on a free port with small limits; yields the port."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update(
        GATEWAY_HOST="127.0.0.1",
        GATEWAY_PORT=str(port),
        GATEWAY_TRITON_URL=triton.grpc_url,
        GATEWAY_MODEL_REPOSITORY=str(model_repo),
        GATEWAY_LOG_LEVEL="warning",
        GATEWAY_MAX_INFLIGHT=str(MAX_INFLIGHT),
        GATEWAY_MAX_BODY_READS=str(MAX_BODY_READS),
        GATEWAY_BODY_TIMEOUT_S=str(BODY_TIMEOUT_S),
        GATEWAY_HEADER_TIMEOUT_S=str(HEADER_TIMEOUT_S),
        GATEWAY_MAX_HEADER_BYTES=str(MAX_HEADER_BYTES),
    )
    log = tmp_path_factory.mktemp("gateway") / "gateway.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "gateway"], cwd=tmp_path_factory.mktemp("cwd"), env=env,
                                stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"gateway exited: {log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"gateway did not start: {log.read_text()[-3000:]}"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            time.sleep(0.2)
        yield port
        assert proc.poll() is None, f"gateway died: {log.read_text()[-3000:]}"
    finally:
        stop_process(proc, 15, signal.SIGTERM)


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _read_response(sock: socket.socket, timeout_s: float = 15.0) -> tuple[int, dict[str, str], bytes]:
    """Read one response (its body by Content-Length); returns status, headers, body."""
    sock.settimeout(timeout_s)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a response: {data[:200]!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].startswith("HTTP/1.1 "), data[:200]
    headers = {name.lower(): value for name, value in (line.split(": ", 1) for line in lines[1:])}
    while len(body) < int(headers["content-length"]):
        chunk = sock.recv(65536)
        assert chunk, "connection closed mid-body"
        body += chunk
    return int(lines[0].split()[1]), headers, body


def _assert_closed(sock: socket.socket, timeout_s: float = 15.0) -> None:
    """The server has closed the connection (EOF, or a reset for data it did not read)."""
    sock.settimeout(timeout_s)
    with contextlib.suppress(ConnectionResetError):
        assert sock.recv(65536) == b""


def _assert_json_error(response: tuple[int, dict[str, str], bytes], status: int, code: str) -> None:
    got_status, headers, body = response
    assert got_status == status, body
    assert headers["content-type"] == "application/json"
    error = json.loads(body)["error"]
    assert error["code"] == code and error["message"]


def _multipart(image: bytes) -> tuple[bytes, str]:
    boundary = "slowclientboundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="cat.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + image
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


class SlowUploads:
    """Uploads to /classify that send their headers, then the body two bytes every 0.2 s."""

    def __init__(self, port: int, image: bytes) -> None:
        self.port = port
        self.body, self.content_type = _multipart(image)
        self.sockets: list[socket.socket] = []
        self.sent: list[int] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._trickle, daemon=True)

    def open(self, n: int) -> None:
        for _ in range(n):
            sock = _connect(self.port)
            head = (
                f"POST /classify HTTP/1.1\r\nHost: test\r\nContent-Type: {self.content_type}\r\n"
                f"Content-Length: {len(self.body)}\r\n\r\n"
            )
            sock.sendall(head.encode() + self.body[:10])
            self.sockets.append(sock)
            self.sent.append(10)
        if not self.thread.is_alive():
            self.thread.start()

    def _trickle(self) -> None:
        deadline = time.monotonic() + 4 * BODY_TIMEOUT_S  # bounded even if the server never answers
        while not self.stop.wait(0.2) and time.monotonic() < deadline:
            for i, sock in enumerate(list(self.sockets)):
                with contextlib.suppress(OSError):  # the server answered 408 and closed it
                    sock.sendall(self.body[self.sent[i] : self.sent[i] + 2])
                    self.sent[i] += 2

    def answered(self) -> list[int]:
        """Indices of the uploads the server has answered (or closed) so far."""
        readable, _, _ = select.select(self.sockets, [], [], 0)
        return [self.sockets.index(s) for s in readable]

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        for sock in self.sockets:
            sock.close()


def test_slow_uploads_hold_no_processing_slot_and_time_out_with_408(server: int, chelsea_jpeg: bytes) -> None:
    url = f"http://127.0.0.1:{server}"
    uploads = SlowUploads(server, chelsea_jpeg)
    try:
        started = time.monotonic()
        uploads.open(2 * MAX_INFLIGHT)
        time.sleep(0.5)  # the server has taken them all and is reading their bodies

        # More uploads in progress than processing slots, yet a normal request is served.
        response = httpx.post(f"{url}/classify", files={"file": ("cat.jpg", chelsea_jpeg, "image/jpeg")}, timeout=30)
        assert response.status_code == 200, response.text
        assert len(response.json()["predictions"]) == 5
        assert httpx.get(f"{url}/readyz", timeout=10).status_code == 200
        assert uploads.answered() == [], "the slow uploads were answered before their deadline"

        # Past max_body_reads uploads in progress, a new upload is shed with 503 + Retry-After.
        uploads.open(MAX_BODY_READS - 2 * MAX_INFLIGHT)
        time.sleep(0.3)
        shed = httpx.post(f"{url}/classify", files={"file": ("cat.jpg", chelsea_jpeg, "image/jpeg")}, timeout=30)
        assert shed.status_code == 503 and shed.headers["retry-after"] == "1"
        assert shed.json()["error"]["code"] == "overloaded"

        # At the body deadline every slow upload gets 408 with the JSON error, and the connection closes.
        for sock in uploads.sockets:
            _assert_json_error(_read_response(sock, timeout_s=4 * BODY_TIMEOUT_S), 408, "request_timeout")
            _assert_closed(sock)
        assert time.monotonic() - started >= BODY_TIMEOUT_S
    finally:
        uploads.close()
    response = httpx.post(f"{url}/classify", files={"file": ("cat.jpg", chelsea_jpeg, "image/jpeg")}, timeout=30)
    assert response.status_code == 200, response.text


def _refusals(port: int) -> dict[str, float]:
    """``gateway_http_refusals_total`` by code, from the gateway's /metrics."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    found = re.findall(r'^gateway_http_refusals_total\{code="([a-z_]+)"\} ([0-9.e+]+)$', text, re.MULTILINE)
    return {code: float(value) for code, value in found}


def test_a_1mb_header_gets_431_and_the_server_stays_up(server: int) -> None:
    before = _refusals(server)
    sock = _connect(server)
    request = b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Request-ID: big-1\r\nX-Big: " + b"a" * 1_000_000 + b"\r\n\r\n"
    with contextlib.suppress(OSError):  # the server may hang up before it has all of it
        for i in range(0, len(request), 65536):
            sock.sendall(request[i : i + 65536])
    response = _read_response(sock)
    _assert_json_error(response, 431, "headers_too_large")
    assert response[1]["x-request-id"] == "big-1"  # httptools (the default) had parsed it
    assert _refusals(server)["headers_too_large"] == before["headers_too_large"] + 1
    _assert_closed(sock)
    sock.close()
    # Over the limit but complete in one read: h11 parses it, the body stage refuses it.
    sock = _connect(server)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Big: " + b"a" * (MAX_HEADER_BYTES + 100) + b"\r\n\r\n")
    _assert_json_error(_read_response(sock), 431, "headers_too_large")
    _assert_closed(sock)
    sock.close()
    assert httpx.get(f"http://127.0.0.1:{server}/healthz", timeout=10).status_code == 200


def test_a_connection_trickling_its_headers_is_closed_at_the_header_deadline(server: int) -> None:
    sock = _connect(server)
    started = time.monotonic()
    sock.sendall(b"POST /classify HTTP/1.1\r\nHost: test\r\nX-Slow: ")
    for _ in range(int(10 * HEADER_TIMEOUT_S / 0.1)):  # a byte every 0.1 s, ten times the deadline at most
        if select.select([sock], [], [], 0.1)[0]:
            break
        try:
            sock.sendall(b"a")
        except OSError:
            break
    response = _read_response(sock)
    _assert_json_error(response, 408, "request_timeout")
    assert re.fullmatch(r"[0-9a-f]{32}", response[1]["x-request-id"])  # none sent: a generated one
    assert time.monotonic() - started >= HEADER_TIMEOUT_S
    _assert_closed(sock)
    sock.close()
    assert _refusals(server)["request_timeout"] >= 1

    idle = _connect(server)  # sends nothing at all: closed without a response
    started = time.monotonic()
    idle.settimeout(10 * HEADER_TIMEOUT_S)
    assert idle.recv(1) == b""
    assert time.monotonic() - started >= HEADER_TIMEOUT_S * 0.9
    idle.close()

    # A kept-alive connection gets the deadline again for its next request's headers.
    kept = _connect(server)
    kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
    assert _read_response(kept)[0] == 200
    kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: te")
    _assert_json_error(_read_response(kept), 408, "request_timeout")
    _assert_closed(kept)
    kept.close()
