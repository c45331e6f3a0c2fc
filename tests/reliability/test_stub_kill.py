"""Kill -9 one model's Python-backend stub: readiness says so, the others keep serving, it heals.

A dedicated tritonserver (real, tiny engines) since this test kills its processes.
"""

from __future__ import annotations

import logging
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from gateway import Settings, create_app
from tests.helpers import triton_config
from triton_local import TritonServer, stubs
from triton_local.heal import HealConfig, Supervisor

LOGGER = logging.getLogger(__name__)


def stub_pid(server_pid: int, model: str) -> int:
    """The stub serving ``model``: a child of tritonserver whose command line names the model."""
    found = stubs.stubs(server_pid, model)
    assert found, f"no stub process for {model} under {server_pid}"
    return found[0].pid


def wait_for(what: str, check: Callable[[], Any], timeout_s: float) -> Any:
    """Poll ``check`` until it returns something truthy; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"{what} not within {timeout_s}s (last: {last!r})")


def probe_cli(url: str, *models: str, reload_dead: bool = False) -> subprocess.CompletedProcess[str]:
    args = [a for m in models for a in ("--model", m)] + (["--reload-dead"] if reload_dead else [])
    return subprocess.run(
        [sys.executable, "-m", "triton_local", "probe", "--http-url", url, "--timeout", "10", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def own_triton(model_repo: pathlib.Path, tmp_path: pathlib.Path) -> Iterator[TritonServer]:
    server = TritonServer(triton_config(model_repo, tmp_path / "tritonserver.log"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_killed_stub_is_reported_and_healed(
    own_triton: TritonServer, model_repo: pathlib.Path, chelsea_jpeg: bytes
) -> None:
    settings = Settings(
        triton_url=own_triton.grpc_url,
        model_repository=model_repo,
        triton_retries=0,
        health_probe_interval_s=0.5,
        health_probe_timeout_s=10,
        _env_file=None,  # type: ignore[call-arg]
    )
    image = {"file": ("cat.jpg", chelsea_jpeg, "image/jpeg")}
    with TestClient(create_app(settings)) as client:
        wait_for("ready before the kill", lambda: client.get("/readyz").status_code == 200, 30)
        pid = own_triton.pid
        assert pid is not None
        os.kill(stub_pid(pid, "resnet50_vd"), signal.SIGKILL)
        killed = time.monotonic()

        # Readiness reflects the dead model (Triton's own model-ready still says ready).
        def not_ready() -> dict[str, Any] | None:
            response = client.get("/readyz")
            return response.json() if response.status_code == 503 else None

        body = wait_for("/readyz 503", not_ready, 20)
        LOGGER.info("/readyz 503 %.2fs after the kill", time.monotonic() - killed)
        assert body["models"]["resnet50_vd"] is False
        assert "not healthy" in body["not_ready"]["resnet50_vd"]
        assert set(body["not_ready"]) == {"resnet50_vd"}
        models = {m["name"]: m for m in client.get("/models").json()["models"]}
        assert models["resnet50_vd"]["ready"] is False and "not healthy" in models["resnet50_vd"]["reason"]

        # The dead model answers 502; every other model keeps serving.
        dead = client.post("/classify?model=resnet50_vd", files=image)
        assert dead.status_code == 502 and dead.json()["error"]["code"] == "inference_failed"
        assert client.post("/classify?model=efficientnet_lite0", files=image).status_code == 200
        assert client.post("/detect", files=image).status_code == 200
        assert client.post("/qa", json={"question": "who?", "context": "Ada wrote it."}).status_code == 200

        # The probe CLI (the liveness check) fails for the dead model only.
        failed = probe_cli(own_triton.http_url)
        assert failed.returncode == 1 and "resnet50_vd: FAILED" in failed.stderr, failed.stderr
        assert probe_cli(own_triton.http_url, "efficientnet_lite0", "bert_qa").returncode == 0

        # The supervisor reloads the model; it serves again and readiness comes back.
        supervisor = Supervisor(own_triton, HealConfig(interval_s=0.2, probe_interval_s=0))
        stop = threading.Event()
        thread = threading.Thread(target=supervisor.run, args=(stop,), daemon=True)
        thread.start()
        healing = time.monotonic()
        try:
            wait_for("/readyz 200 after healing", lambda: client.get("/readyz").status_code == 200, 60)
            LOGGER.info("/readyz 200 %.2fs after the supervisor started", time.monotonic() - healing)
        finally:
            stop.set()
            thread.join(timeout=150)
        assert supervisor.reloads == 1 and supervisor.restarts == 0
        assert client.post("/classify?model=resnet50_vd", files=image).status_code == 200
        assert probe_cli(own_triton.http_url).returncode == 0
        metrics = client.get("/metrics").text
        assert 'gateway_probes_total{model="resnet50_vd",result="fail"}' in metrics
        assert 'gateway_probes_total{model="resnet50_vd",result="ok"}' in metrics
        assert 'gateway_requests_total{route="/classify",status="502"} 1.0' in metrics

    # The reload left the dead stub's segment behind; stop removes exactly this server's.
    assert own_triton.shm_segments(), "expected this server's segments while it runs"
    stopping = time.monotonic()
    own_triton.stop()
    LOGGER.info("stop took %.2fs", time.monotonic() - stopping)
    assert own_triton.shm_segments() == []


def test_health_check_with_reload_dead_heals_a_killed_stub(own_triton: TritonServer) -> None:
    """No supervisor (Compose, Kubernetes): the health check itself reloads the dead model."""
    pid = own_triton.pid
    assert pid is not None
    os.kill(stub_pid(pid, "resnet50_vd"), signal.SIGKILL)
    wait_for("the dead stub seen by a plain probe", lambda: probe_cli(own_triton.http_url).returncode == 1, 20)

    healed = probe_cli(own_triton.http_url, reload_dead=True)
    assert healed.returncode == 0, healed.stderr
    assert "resnet50_vd: stub process died; reloading" in healed.stderr
    assert probe_cli(own_triton.http_url).returncode == 0  # healthy without reloading again
    assert stub_pid(pid, "resnet50_vd") > 0
    own_triton.stop()
    assert own_triton.shm_segments() == []


def test_dead_server_is_restarted(own_triton: TritonServer) -> None:
    supervisor = Supervisor(own_triton, HealConfig(interval_s=0.2, probe_interval_s=0))
    stop = threading.Event()
    thread = threading.Thread(target=supervisor.run, args=(stop,), daemon=True)
    thread.start()
    try:
        pid = own_triton.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        wait_for("a new tritonserver", lambda: supervisor.restarts == 1 and own_triton.pid not in (None, pid), 120)
    finally:
        stop.set()
        thread.join(timeout=150)
    assert own_triton.is_ready()
    assert probe_cli(own_triton.http_url).returncode == 0
    own_triton.stop()
    assert own_triton.shm_segments() == []
