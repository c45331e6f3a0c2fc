"""Shared fixtures of the reliability tier: a tritonserver a test may break, a gateway in its own process.

* :class:`OwnTriton` (fixtures ``own_triton``, function-scoped, and ``own_triton_module``): a real
  tritonserver on the session's tiny engines, on ports fixed for its whole life, which a test may
  ``kill()`` (SIGKILL), ``pause()`` / ``resume()`` (SIGSTOP / SIGCONT) and ``start()`` again on the
  same ports. It never touches any other tritonserver on the machine.
* :func:`run_gateway` (fixture ``start_gateway``): ``python -m gateway`` as a subprocess on a free
  port with the given ``GATEWAY_*`` environment; yields its URL and PID (for RSS via ``/proc``) and
  stops it with SIGTERM, then SIGKILL, each wait bounded.

Every test under ``tests/reliability/`` is marked ``reliability`` (``pytest -m reliability``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import pathlib
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping

import httpx
import pytest

from tests.conftest import ROOT, free_port, triton_config
from triton_local import TritonServer
from triton_local import stubs as triton_stubs

HERE = pathlib.Path(__file__).resolve().parent
LOGGER = logging.getLogger(__name__)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in pathlib.Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.reliability)


class OwnTriton:
    """A tritonserver owned by one test (or module) that the test may kill, freeze and restart.

    Args:
        repo: the model repository (tiny engines).
        log_file: where every incarnation's log is appended.
    """

    def __init__(self, repo: pathlib.Path, log_file: pathlib.Path) -> None:
        self.repo = repo
        self.log_file = log_file
        self.ports = {"http_port": free_port(), "grpc_port": free_port(), "metrics_port": free_port()}
        self._server: TritonServer | None = None
        self._paused = False
        self.orphans: list[triton_stubs.Stub] = []

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.ports['grpc_port']}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['http_port']}"

    @property
    def pid(self) -> int:
        pid = None if self._server is None else self._server.pid
        assert pid is not None, "tritonserver is not running"
        return pid

    def start(self) -> None:
        """Start (or start again) on the same ports; returns when the server and its models are ready."""
        assert self._server is None, "already running"
        server = TritonServer(triton_config(self.repo, self.log_file, **self.ports))
        server.start()
        self._server = server

    def kill(self) -> None:
        """SIGKILL tritonserver (no clean shutdown), reap it, and clean up after its stubs (bounded).

        ``orphans`` lists the stubs that outlived it and had to be killed (a stub busy at that
        moment can); their ``/dev/shm`` regions are removed too.
        """
        server, self._server = self._server, None
        assert server is not None and server.pid is not None, "tritonserver is not running"
        stale = triton_stubs.stubs(server.pid)
        os.kill(server.pid, signal.SIGKILL)
        self._paused = False
        server.stop()  # reaps the killed process, closes the log, removes the backend dir
        self.orphans = triton_stubs.reap(stale, timeout_s=10)
        if self.orphans:
            LOGGER.warning("stubs that outlived the killed tritonserver: %s", [s.instance for s in self.orphans])

    def pause(self) -> None:
        """SIGSTOP tritonserver: it accepts connections but answers nothing."""
        os.kill(self.pid, signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)
        self._paused = False

    def stubs(self, model: str | None = None) -> list[triton_stubs.Stub]:
        """The live Python-backend stubs (of ``model``), e.g. to SIGKILL one."""
        return triton_stubs.stubs(self.pid, model)

    def stop(self) -> None:
        """Clean stop (SIGCONT first when frozen, then tritonserver's own SIGINT-then-kill)."""
        server, self._server = self._server, None
        if server is None:
            return
        stale = [] if server.pid is None else triton_stubs.stubs(server.pid)
        if self._paused and server.pid is not None:
            os.kill(server.pid, signal.SIGCONT)
            self._paused = False
        server.stop()
        triton_stubs.reap(stale, timeout_s=10)  # a server killed after ignoring SIGINT can leave stubs


@pytest.fixture
def own_triton(model_repo: pathlib.Path, tmp_path: pathlib.Path) -> Iterator[OwnTriton]:
    """A running tritonserver this test alone uses and may break; stopped afterwards."""
    triton = OwnTriton(model_repo, tmp_path / "tritonserver.log")
    triton.start()
    try:
        yield triton
    finally:
        triton.stop()


@pytest.fixture(scope="module")
def own_triton_module(model_repo: pathlib.Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnTriton]:
    """Like ``own_triton``, shared by one module: a test that breaks it must leave it serving."""
    triton = OwnTriton(model_repo, tmp_path_factory.mktemp("own_triton") / "tritonserver.log")
    triton.start()
    try:
        yield triton
    finally:
        triton.stop()


@dataclasses.dataclass(frozen=True)
class GatewayProcess:
    """Args:
    url: ``http://127.0.0.1:<port>``.
    pid: the gateway's process id (``/proc/<pid>/status`` for VmRSS / VmHWM).
    log_file: its stdout and stderr.
    """

    url: str
    pid: int
    log_file: pathlib.Path


def gateway_env(triton_grpc_url: str, model_repo: pathlib.Path, **settings: object) -> dict[str, str]:
    """``GATEWAY_*`` variables for a gateway in front of ``triton_grpc_url``; ``settings`` by field name."""
    env = {"GATEWAY_TRITON_URL": triton_grpc_url, "GATEWAY_MODEL_REPOSITORY": str(model_repo)}
    env.update({f"GATEWAY_{name.upper()}": str(value) for name, value in settings.items()})
    return env


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


@contextlib.contextmanager
def run_gateway(
    env: Mapping[str, str], log_file: pathlib.Path, startup_timeout_s: float = 60, stop_timeout_s: float = 10
) -> Iterator[GatewayProcess]:
    """Run ``python -m gateway`` on a free port with ``env`` (over this process's environment)."""
    port = free_port()
    full_env = {**os.environ, "GATEWAY_HOST": "127.0.0.1", "GATEWAY_PORT": str(port), **env}
    log_file.parent.mkdir(parents=True, exist_ok=True)
    url = f"http://127.0.0.1:{port}"
    with open(log_file, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway"], cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            deadline = time.monotonic() + startup_timeout_s
            while not _healthy(url):
                if process.poll() is not None:
                    raise RuntimeError(f"gateway exited with {process.returncode}: {log_file.read_text()[-3000:]}")
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"gateway not healthy after {startup_timeout_s}s: {log_file.read_text()[-3000:]}"
                    )
                time.sleep(0.2)
            yield GatewayProcess(url=url, pid=process.pid, log_file=log_file)
        finally:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=stop_timeout_s)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=stop_timeout_s)


@pytest.fixture
def start_gateway(tmp_path: pathlib.Path) -> Iterator[Callable[[Mapping[str, str]], GatewayProcess]]:
    """A factory: ``start_gateway(env)`` runs a gateway subprocess, stopped when the test ends."""
    with contextlib.ExitStack() as stack:
        count = 0

        def start(env: Mapping[str, str]) -> GatewayProcess:
            nonlocal count
            count += 1
            return stack.enter_context(run_gateway(env, tmp_path / f"gateway-{count}.log"))

        yield start


def answer_of(response: httpx.Response, request_id: str) -> tuple[int, str | None]:
    """Check one answer is well formed; returns ``(status, error code or None)``.

    Well formed: the ``X-Request-ID`` sent is echoed, the body is JSON, and an error body is
    exactly the gateway's shape ``{"error": {"code": str, "message": str[, "details"]}}``.
    """
    assert response.headers.get("x-request-id") == request_id, (response.status_code, dict(response.headers))
    assert response.headers.get("content-type", "").startswith("application/json"), response.headers
    body = response.json()
    if response.status_code < 400:
        return response.status_code, None
    assert set(body) == {"error"}, body
    error = body["error"]
    assert isinstance(error.get("code"), str) and isinstance(error.get("message"), str), body
    assert set(error) <= {"code", "message", "details"}, body
    return response.status_code, error["code"]
