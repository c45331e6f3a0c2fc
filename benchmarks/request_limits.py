"""CPU cost of the request limits: uvicorn's h11 protocol vs httptools, and the buffered body stage.

Runs in one process, no network: each uvicorn protocol is fed raw request bytes through an in-memory
transport (a stand-in for the socket, so only parsing and ASGI plumbing are timed) on keep-alive, in
64 KiB reads like a socket's, and answers from a small ASGI app that reads the whole body. Prints CPU
microseconds per request (``time.process_time``, so other load on the machine matters less than for
wall time)::

    .venv/bin/python benchmarks/request_limits.py --requests 2000
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from gateway.body_limit import BufferedBody
from gateway.server import GatewayH11Protocol
from gateway.settings import Settings

READ_SIZE = 65536


class MemoryTransport(asyncio.Transport):
    """In-memory stand-in for a socket transport: collects what the protocol writes."""

    def __init__(self) -> None:
        super().__init__()
        self.out = bytearray()
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.out += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8080)}.get(name, default)


class Answer:
    """The app under the protocol: reads the whole body, answers 200, signals the response is out."""

    def __init__(self) -> None:
        self.done = asyncio.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        more = True
        while more:
            message = await receive()
            more = message.get("more_body", False)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})
        self.done.set()


def _requests(upload_bytes: int) -> dict[str, bytes]:
    headers = (
        "Host: gateway\r\nUser-Agent: python-httpx/0.28.1\r\nAccept: */*\r\nAccept-Encoding: gzip, deflate\r\n"
        "Connection: keep-alive\r\nX-Request-ID: 0123456789abcdef0123456789abcdef\r\n"
    )
    boundary = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="cat.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + os.urandom(upload_bytes)
        + f"\r\n--{boundary}--\r\n".encode()
    )
    upload = (
        f"POST /classify?top_k=5 HTTP/1.1\r\n{headers}Content-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    return {"GET /healthz": f"GET /healthz HTTP/1.1\r\n{headers}\r\n".encode(), f"POST {len(body) // 1000} KB": upload}


async def _serve(protocol_class: Callable[..., asyncio.Protocol], wrap: bool, request: bytes, n: int) -> float:
    """CPU seconds per request, over ``n`` requests on one keep-alive connection."""
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    answer = Answer()
    app: ASGIApp = answer
    if wrap:
        app = BufferedBody(
            answer,
            max_bytes=settings.max_body_bytes,
            timeout_s=settings.body_timeout_s,
            max_concurrent=settings.max_body_reads,
            max_buffered_bytes=settings.max_buffered_body_bytes,
            max_header_bytes=settings.max_header_bytes,
        )
    config = uvicorn.Config(app, log_level="warning", h11_max_incomplete_event_size=settings.max_header_bytes)
    config.load()
    protocol: Any = protocol_class(config=config, server_state=ServerState(), app_state={})
    transport = MemoryTransport()
    protocol.connection_made(transport)
    reads = [request[i : i + READ_SIZE] for i in range(0, len(request), READ_SIZE)]
    start = time.process_time()
    for _ in range(n):
        answer.done.clear()
        for chunk in reads:
            protocol.data_received(chunk)
            await asyncio.sleep(0)
        await answer.done.wait()
        await asyncio.sleep(0)
        assert transport.out.startswith(b"HTTP/1.1 200"), bytes(transport.out[:200])
        transport.out.clear()
    elapsed = time.process_time() - start
    protocol.connection_lost(None)
    return elapsed / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000, help="requests per row and repeat")
    parser.add_argument("--repeats", type=int, default=5, help="repeats per row; the median is shown")
    parser.add_argument("--upload-bytes", type=int, default=200_000)
    args = parser.parse_args()

    protocols: dict[str, Callable[..., asyncio.Protocol]] = {
        "httptools": HttpToolsProtocol,
        "h11 (gateway)": functools.partial(GatewayH11Protocol, header_timeout_s=10.0),
    }
    print(f"{'request':<14} {'protocol':<14} {'body stage':<11} {'CPU us/req':>11} {'min':>9} {'max':>9}")
    for request_name, request in _requests(args.upload_bytes).items():
        for protocol_name, protocol_class in protocols.items():
            for wrap in (False, True):
                runs = [
                    asyncio.run(_serve(protocol_class, wrap, request, args.requests)) * 1e6 for _ in range(args.repeats)
                ]
                print(
                    f"{request_name:<14} {protocol_name:<14} {'buffered' if wrap else 'none':<11} "
                    f"{statistics.median(runs):>11.1f} {min(runs):>9.1f} {max(runs):>9.1f}"
                )


if __name__ == "__main__":
    main()
