"""Recovery after a Triton outage, and a bounded drain on SIGTERM.

Recovery: the gateway's gRPC channel caps its reconnect back-off (settings), so once a restarted
Triton is ready the gateway serves again within about a second, not gRPC's default of up to two
minutes. ``benchmarks/recovery.py`` measures it against gRPC's defaults; here the bound is generous.
"""

from __future__ import annotations

import os
import pathlib
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest
from fastapi.testclient import TestClient

from gateway import create_app
from tests.helpers import ROOT, RestartingTriton, free_port, metric_value
from triton_local import TritonServer
from triton_local.process import stop_process

QA = {"question": "Who wrote it?", "context": "The letter was written by Ada in London."}


def test_gateway_serves_again_soon_after_triton_restart(restarting_triton: RestartingTriton) -> None:
    server = restarting_triton.server
    # One attempt per request: each answer shows the channel's state.
    settings = restarting_triton.settings(triton_retries=0)
    with TestClient(create_app(settings)) as client:
        with server():
            # Bounded: the health prober may have met the channel before Triton was up (it is then in back-off).
            deadline = time.monotonic() + 10
            while client.post("/qa", json=QA).status_code != 200:
                assert time.monotonic() < deadline, "the gateway never served before the outage"
                time.sleep(0.1)

        # Down for 15 s with traffic: gRPC's default back-off would have grown to ~10 s by now.
        down_until = time.monotonic() + 15
        while time.monotonic() < down_until:
            response = client.post("/qa", json=QA)
            assert response.status_code == 503, response.text
            assert response.json()["error"]["code"] == "triton_unavailable"
            time.sleep(0.25)

        restarted = server()
        starter = threading.Thread(target=restarted.start)
        starter.start()
        try:
            deadline = time.monotonic() + 240
            while not restarted.is_ready():
                assert time.monotonic() < deadline, "tritonserver did not become ready"
                time.sleep(0.02)
            ready_at = time.monotonic()
            recovered_at = None
            while recovered_at is None and time.monotonic() < ready_at + 10:  # generous bound; target <= 2 s
                if client.post("/qa", json=QA).status_code == 200:
                    recovered_at = time.monotonic()
                else:
                    time.sleep(0.05)
            assert recovered_at is not None, "the gateway still failed 10 s after Triton was ready"
            print(f"recovery: first 200 {recovered_at - ready_at:.2f}s after Triton was ready")
            metrics = client.get("/metrics").text
        finally:
            starter.join(timeout=300)
            restarted.stop()
    # The outage is counted as such, apart from overload.
    assert metric_value(metrics, "gateway_errors_total", route="/qa", code="triton_unavailable") >= 10
    assert metric_value(metrics, "gateway_errors_total", route="/qa", code="overloaded") == 0


def _wait_healthy(url: str, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, "gateway exited at startup"
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    raise AssertionError("gateway did not become healthy")


def test_sigterm_drain_is_capped(triton: TritonServer, model_repo: pathlib.Path, tmp_path: pathlib.Path) -> None:
    cap_s = 2
    port = free_port()
    env = dict(
        os.environ,
        GATEWAY_PORT=str(port),
        GATEWAY_TRITON_URL=triton.grpc_url,
        GATEWAY_MODEL_REPOSITORY=str(model_repo),
        GATEWAY_SHUTDOWN_TIMEOUT_S=str(cap_s),
        GATEWAY_LOG_LEVEL="info",
    )
    log = tmp_path / "gateway.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_healthy(url, process, 60)
        # A slow in-flight request: the client sends its headers and a little of its body, then stalls.
        with socket.create_connection(("127.0.0.1", port), timeout=30) as slow:
            slow.sendall(
                b"POST /qa HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                b'Content-Length: 1000\r\n\r\n{"question": '
            )
            time.sleep(0.5)
            signalled = time.monotonic()
            if stop_process(process, cap_s + 15, signal.SIGTERM) is None:
                pytest.fail(f"gateway still draining {cap_s + 15}s after SIGTERM (cap {cap_s}s); killed")
            print(f"drain: exited {time.monotonic() - signalled:.2f}s after SIGTERM (cap {cap_s}s)")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    text = log.read_text()
    assert "timeout graceful shutdown exceeded" in text, text[-2000:]  # the cap, not the client, ended it
    # uvicorn re-raises the signal it caught once shut down: a clean exit reads as SIGTERM.
    assert process.returncode in (0, -signal.SIGTERM), text[-2000:]
