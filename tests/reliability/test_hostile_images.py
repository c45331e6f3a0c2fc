"""Hostile images against a real gateway process under an address-space limit.

The gateway runs as ``python -m gateway`` (``GATEWAY_*`` settings, the real tritonserver of the
session) under ``prlimit --as``: the limit is what the warmed-up idle gateway was measured to need
(a first, unlimited run) plus the image decoding budget plus headroom. Before the budget and the
bounded resizing, these images needed gigabytes (40000x1 to /classify: ~22 GB; ten 6000x6000 1-bit
PNGs: ~3.2 GB) and would fail to allocate under the limit. Every answer must be a 200 or a
documented JSON error carrying ``X-Request-ID``, and the process must still serve a normal request.
"""

from __future__ import annotations

import asyncio
import functools
import io
import os
import pathlib
import signal
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterator

import httpx
import pytest
from PIL import Image

from gateway import Settings
from tests.helpers import free_port
from triton_local.process import stop_process

MAX_PIXELS = 6000 * 6000
BUDGET_BYTES = 400 * 1024 * 1024
# Beyond the measured idle need and the budget: uploads in flight, thread stacks, allocator slack.
HEADROOM_BYTES = 512 * 1024 * 1024
DOCUMENTED = {
    400: {"invalid_image"},
    413: {"payload_too_large"},
    415: {"unsupported_media_type"},
    422: {"unsupported_image_shape"},
    503: {"overloaded"},
}


def _png(mode: str, size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size).save(buffer, format="PNG")
    return buffer.getvalue()


def _jpeg(size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (90, 140, 200)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose IHDR (CRC fixed up) claims ``width`` x ``height``."""
    data = bytearray(_png("RGB", (8, 8)))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def _jpeg_claiming(width: int, height: int) -> bytes:
    """A small JPEG whose SOF0 header claims ``width`` x ``height``."""
    data = bytearray(_jpeg((16, 16)))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _vm_kb(pid: int) -> dict[str, int]:
    status = pathlib.Path(f"/proc/{pid}/status").read_text()
    return {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in status.splitlines()) if k.startswith("Vm")}


class GatewayProcess:
    """``python -m gateway`` in its own process, optionally under ``prlimit --as``.

    Args:
        settings: the session's settings (Triton URL, model repository).
        log: where the process's output goes.
        as_limit_bytes: the address-space limit (None: none).
    """

    def __init__(self, settings: Settings, log: pathlib.Path, as_limit_bytes: int | None = None) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        env = {
            **os.environ,
            "GATEWAY_PORT": str(port),
            "GATEWAY_TRITON_URL": settings.triton_url,
            "GATEWAY_MODEL_REPOSITORY": str(settings.model_repository),
            "GATEWAY_LOG_LEVEL": "warning",
            "GATEWAY_MAX_IMAGE_PIXELS": str(MAX_PIXELS),
            "GATEWAY_IMAGE_DECODE_BUDGET_BYTES": str(BUDGET_BYTES),
            "GATEWAY_IMAGE_DECODE_WAIT_S": "0.5",
            # No aspect-ratio limit: extreme shapes must reach the resizing, whose intermediates are bounded.
            "GATEWAY_MAX_IMAGE_ASPECT_RATIO": "0",
        }
        command = [sys.executable, "-m", "gateway"]
        if as_limit_bytes is not None:
            command = ["prlimit", f"--as={as_limit_bytes}", "--", *command]  # prlimit execs: same pid
        self.log = log
        self._log_file = log.open("w")
        self.process = subprocess.Popen(
            command, env=env, cwd=log.parent, stdout=self._log_file, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 120
        while True:
            assert self.process.poll() is None, f"gateway exited: {log.read_text()}"
            assert time.monotonic() < deadline, f"gateway not ready: {log.read_text()}"
            try:
                if httpx.get(f"{self.url}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)

    def alive(self) -> bool:
        return self.process.poll() is None

    def vm_kb(self) -> dict[str, int]:
        return _vm_kb(self.process.pid)

    def stop(self) -> None:
        stop_process(self.process, 20, signal.SIGTERM)
        self._log_file.close()


def _warm_up(url: str, image: bytes, concurrency: int) -> None:
    """Normal traffic, ``concurrency`` at a time on each image route, so threads and channels exist."""

    async def run() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=120) as client:
            for route in ("/classify", "/detect"):
                files = {"file": ("c.jpg", image, "image/jpeg")}
                responses = await asyncio.gather(*(client.post(route, files=files) for _ in range(concurrency)))
                assert all(r.status_code == 200 for r in responses), [r.text for r in responses]

    asyncio.run(run())


@pytest.fixture(scope="module")
def limited_gateway(
    settings: Settings, chelsea_jpeg: bytes, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    logs = tmp_path_factory.mktemp("hostile")
    probe = GatewayProcess(settings, logs / "probe.log")
    try:
        _warm_up(probe.url, chelsea_jpeg, concurrency=10)
        idle_kb = probe.vm_kb()["VmPeak"]
    finally:
        probe.stop()
    limit = idle_kb * 1024 + BUDGET_BYTES + HEADROOM_BYTES
    gateway = GatewayProcess(settings, logs / "limited.log", as_limit_bytes=limit)
    try:
        _warm_up(gateway.url, chelsea_jpeg, concurrency=1)
        print(f"idle VmPeak {idle_kb / 1024:.0f} MiB; address-space limit {limit / 2**20:.0f} MiB")
        yield gateway
        print(f"after the tests: {gateway.vm_kb()}")
    finally:
        gateway.stop()


def _assert_answered(response: httpx.Response, ok: set[int]) -> None:
    """A status in ``ok``, or a documented JSON error; ``X-Request-ID`` either way."""
    assert response.headers.get("x-request-id"), response.headers
    if response.status_code in ok:
        return
    assert response.status_code in DOCUMENTED, (response.status_code, response.text)
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"]["code"] in DOCUMENTED[response.status_code], response.text
    if response.status_code == 503:
        assert response.headers["retry-after"]


def _post(url: str, route: str, data: bytes, content_type: str) -> httpx.Response:
    return httpx.post(f"{url}{route}", files={"file": ("upload", data, content_type)}, timeout=120)


@pytest.mark.parametrize(
    ("route", "image", "content_type", "ok"),
    [
        ("/classify", functools.partial(_png, "RGB", (40000, 1)), "image/png", {200}),
        ("/classify", functools.partial(_png, "RGB", (1, 40000)), "image/png", {200}),
        ("/detect", functools.partial(_png, "RGB", (1, 4000)), "image/png", {200}),
        ("/detect", functools.partial(_png, "RGB", (40000, 1)), "image/png", {200}),
        ("/detect", functools.partial(_png_claiming, 100_000, 100_000), "image/png", {413}),
        ("/classify", functools.partial(_png_claiming, 6001, 6000), "image/png", {413}),
        ("/classify", functools.partial(_jpeg_claiming, 6000, 6001), "image/jpeg", {413}),
        ("/detect", functools.partial(_jpeg, (6000, 6000)), "image/jpeg", {200}),  # exactly at max_image_pixels
    ],
    ids=[
        "40000x1",
        "1x40000",
        "detect-1x4000",
        "detect-40000x1",
        "png-claims-1e10",
        "png-over",
        "jpeg-over",
        "jpeg-at-limit",
    ],
)
def test_hostile_image_is_answered_and_the_gateway_lives(
    limited_gateway: GatewayProcess,
    chelsea_jpeg: bytes,
    route: str,
    image: Callable[[], bytes],
    content_type: str,
    ok: set[int],
) -> None:
    response = _post(limited_gateway.url, route, image(), content_type)
    _assert_answered(response, ok)
    assert response.status_code in ok, response.text
    assert limited_gateway.alive(), limited_gateway.log.read_text()
    normal = _post(limited_gateway.url, "/classify", chelsea_jpeg, "image/jpeg")
    assert normal.status_code == 200, normal.text


def test_concurrent_bilevel_bombs_share_the_budget(limited_gateway: GatewayProcess, chelsea_jpeg: bytes) -> None:
    bomb = _png("1", (6000, 6000))  # a few KB; 36 M pixels
    assert len(bomb) < 10_000

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=limited_gateway.url, timeout=120) as client:
            files = {"file": ("b.png", bomb, "image/png")}
            return list(await asyncio.gather(*(client.post("/detect", files=files) for _ in range(10))))

    responses = asyncio.run(run())
    for response in responses:
        _assert_answered(response, {200})
    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) <= {200, 503} and 200 in statuses, statuses
    print(f"ten concurrent 6000x6000 1-bit PNGs: {statuses}; gateway {limited_gateway.vm_kb()}")
    assert limited_gateway.alive(), limited_gateway.log.read_text()
    normal = _post(limited_gateway.url, "/detect", chelsea_jpeg, "image/jpeg")
    assert normal.status_code == 200, normal.text
