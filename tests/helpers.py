"""Test helpers shared by the test modules (the one place they live; test modules import nothing
from each other or from a conftest).

* ``ROOT``, :func:`free_port`, :func:`triton_config`: paths and ports for real servers.
* :class:`OwnTriton`: a real tritonserver a test may kill, freeze (SIGSTOP) and restart on its ports.
* :class:`RestartingTriton`: fresh tritonserver incarnations on fixed ports, and a gateway's settings for them.
* :func:`run_gateway` / :class:`GatewayProcess` / :func:`gateway_env`: ``python -m gateway`` as a subprocess.
* :func:`serve`: an app served by a real uvicorn in a thread; :func:`metric_value`: one Prometheus sample.
* :func:`prometheus_server`: a real Prometheus as a subprocess.
* :func:`direct_run`, :func:`threshold_for`: the bare-engine side of the served == bare detection tests.
* ``SHORT``, :func:`direct_answers`: a one-window question and the bare-engine side of the /qa tests.
* :func:`answer_of`: the status and answer of a /qa response, checked against its request id.
* :func:`load_benchmark`: a script of ``benchmarks/`` imported as a module (its pure functions under test).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import logging
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
from collections.abc import Iterator, Mapping
from types import ModuleType
from typing import Any

import httpx
import numpy as np
import uvicorn
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from engine_runtime.engine import OnnxRuntimeEngine
from gateway import Settings
from gateway.model_io import read_model_io
from gateway.processing.images import detect_input
from gateway.processing.qa import decode_spans, encode_qa
from gateway.tasks.qa import load_tokenizer
from triton_local import TritonServer, TritonServerConfig
from triton_local import stubs as triton_stubs
from triton_local.process import stop_process

LOGGER = logging.getLogger(__name__)

ROOT = pathlib.Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def triton_config(repo: pathlib.Path, log_file: pathlib.Path, **ports: int) -> TritonServerConfig:
    """A tritonserver on free local ports (or the given ones), logging to ``log_file``."""
    for name in ("http_port", "grpc_port", "metrics_port"):
        ports.setdefault(name, free_port())
    return TritonServerConfig(model_repository=repo, startup_timeout_s=240, log_file=log_file, **ports)


def load_benchmark(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` (not a package) imported as module ``name``, registered in ``sys.modules``
    because dataclasses look their module up there."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def direct_run(settings: Settings, engine: OnnxRuntimeEngine, data: bytes) -> tuple[np.ndarray, object]:
    s = settings
    size = read_model_io(s.model_repository, "yolov5n").image_size()  # type: ignore[union-attr]
    canvas, box = detect_input(
        data, s.max_image_pixels, s.max_image_aspect_ratio, size, reduced_decode=s.reduced_decode
    )
    return engine.run({"images": canvas[None]})["detections"][0], box


def threshold_for(prediction: np.ndarray, n: int) -> float:
    """A confidence threshold that lets about ``n`` candidates through (the model is untrained)."""
    scores = prediction[:, 4]
    for value in np.unique(scores)[::-1]:  # untrained outputs tie a lot: step over distinct values
        if (scores > value).sum() >= n:
            return float(value)
    raise AssertionError("too few distinct scores")


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


class RestartingTriton:
    """For restart tests: tritonserver incarnations on ports fixed for the test, each :meth:`server` a new
    one that the test starts and stops itself (``with triton.server(): ...``, or ``start`` in a thread
    while it polls ``is_ready``), and :meth:`settings` for a gateway that meets each at the same address.

    Args:
        repo: what Triton serves (``qa_only_repo``: it starts fast).
        gateway_repo: the gateway's model repository (every model's sizes, though Triton serves only ``repo``'s).
        log_file: where every incarnation logs.
    """

    def __init__(self, repo: pathlib.Path, gateway_repo: pathlib.Path, log_file: pathlib.Path) -> None:
        self.repo = repo
        self.gateway_repo = gateway_repo
        self.log_file = log_file
        self.ports = {"http_port": free_port(), "grpc_port": free_port(), "metrics_port": free_port()}

    def server(self) -> TritonServer:
        """A new, not yet started, tritonserver on the fixed ports."""
        return TritonServer(triton_config(self.repo, self.log_file, **self.ports))

    def settings(self, **overrides: object) -> Settings:
        """The gateway's settings in front of it; ``overrides`` by field name (e.g. ``triton_retries``)."""
        return Settings(
            triton_url=f"127.0.0.1:{self.ports['grpc_port']}",
            model_repository=self.gateway_repo,
            _env_file=None,  # type: ignore[call-arg]
            **overrides,  # type: ignore[arg-type]
        )


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
            stop_process(process, stop_timeout_s, signal.SIGTERM)


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


@contextlib.contextmanager
def serve(app: FastAPI, **options: Any) -> Iterator[str]:
    """``app`` served by uvicorn on a free port in a thread; yields its base URL.

    ``options``: ``uvicorn.Config`` keywords over the defaults (``127.0.0.1``, a free port, log level
    ``warning``), e.g. ``gateway.server.uvicorn_options(settings)`` for the gateway's own protocol and limits.
    """
    config = {"host": "127.0.0.1", "log_level": "warning", **options}
    if "port" not in config:
        config["port"] = free_port()
    server = uvicorn.Server(uvicorn.Config(app, **config))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "gateway did not start"
        assert thread.is_alive(), "gateway exited"
        time.sleep(0.05)
    try:
        yield f"http://{config['host']}:{config['port']}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


@contextlib.contextmanager
def prometheus_server(config: str, workdir: pathlib.Path) -> Iterator[str]:
    """A real ``prometheus`` on a free port with ``config`` (its YAML) as ``workdir/prometheus.yml``, its
    data in ``workdir/data`` and its stderr in ``workdir/prometheus.log``; yields its URL at once (the
    caller waits for the series it needs), terminates it on exit (killed when it has not stopped 30 s later)."""
    config_file = workdir / "prometheus.yml"
    config_file.write_text(config)
    port = free_port()
    with (workdir / "prometheus.log").open("wb") as log:
        process = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={config_file}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            stop_process(process, 30, signal.SIGTERM)


def metric_value(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text (0 when absent)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


SHORT = {
    "question": "Who wrote the report?",
    "context": "The report on the analytical engine was written by Ada Lovelace in 1843 in London.",
}


def direct_answers(
    settings: Settings, engine: OnnxRuntimeEngine, question: str, context: str, top_k: int
) -> list[dict]:
    tokenizer = load_tokenizer(settings)
    features = encode_qa(tokenizer, question, context, settings.qa_max_question_tokens)
    out = engine.run({n: getattr(features, n) for n in ("input_ids", "attention_mask", "token_type_ids")})
    spans = decode_spans(
        out["start_logits"],
        out["end_logits"],
        features,
        context,
        settings.qa_n_best,
        settings.qa_max_answer_tokens,
        top_k,
    )
    return [
        {"text": s.text, "start": s.start, "end": s.end, "score": s.score, "probability": s.probability} for s in spans
    ]
