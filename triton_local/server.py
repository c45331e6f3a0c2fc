"""The tritonserver subprocess as a context manager.

Start it, wait for readiness with a deadline, stop it with SIGINT and then SIGKILL.
Each server gets its own Python-backend shared-memory prefix, so that its ``/dev/shm``
segments (leaked by a dead stub or a model reload) can be removed after it stops without
touching any other server's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.util
import logging
import os
import pathlib
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import IO

from triton_local import probe, stubs
from triton_local.process import stop_process

LOGGER = logging.getLogger(__name__)

_BACKEND_FILES = ("libtriton_python.so", "triton_python_backend_utils.py")


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@functools.cache
def _env_resets_signals() -> bool:
    """Whether this system's ``env`` has ``--default-signal`` (GNU coreutils 8.31 and later)."""
    try:
        return subprocess.run(["env", "--default-signal=INT", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def sigint_restored(cmd: list[str]) -> tuple[list[str], Callable[[], None] | None]:
    """``cmd`` and a ``preexec_fn`` such that the child gets SIGINT's default disposition back.

    A parent started in the background by a shell ignores SIGINT, and children inherit that, so
    stop()'s SIGINT would not reach tritonserver. ``env --default-signal=INT`` restores it in the
    exec'd program; only without it, a ``preexec_fn``. That forces a full ``fork()`` with Python code
    in the child, which gRPC's fork handlers (grpcio 1.80 and later, grpc/grpc#43055) can abort (-6,
    "epoll_wait error: Bad file descriptor") while this process's gRPC clients are busy: seen on a
    loaded host, four tritonservers of the fault tests dead before they started.
    """
    if signal.getsignal(signal.SIGINT) != signal.SIG_IGN:
        return cmd, None
    if _env_resets_signals():
        return ["env", "--default-signal=INT", *cmd], None
    return cmd, _default_sigint


class TritonServerError(RuntimeError):
    """tritonserver could not be found, did not become ready, or died."""


@dataclasses.dataclass
class TritonServerConfig:
    """How to run tritonserver.

    Args:
        model_repository: directory holding one folder per model (``config.pbtxt`` + version dirs).
        http_port: port of the HTTP/REST endpoint (also used for the readiness probe).
        grpc_port: port of the gRPC endpoint the gateway talks to.
        metrics_port: port of the Prometheus metrics endpoint.
        host: address all endpoints bind to.
        work_dir: where the backend directory is laid out; a temporary one when None.
        startup_timeout_s: deadline for the server and all models to become ready.
        shutdown_timeout_s: how long to wait after SIGINT before SIGKILL.
        log_verbose: tritonserver ``--log-verbose`` level.
        log_file: where the server's stdout/stderr go; inherited from this process when None.
        extra_args: further command-line arguments passed to tritonserver verbatim.
        model_control_mode: ``explicit`` (all models loaded at start, and one model can be
            reloaded through the repository API, which respawns a dead stub) or ``none``.
        dead_stub_shutdown_timeout_s: the wait after SIGINT instead of ``shutdown_timeout_s``
            when a model's stub process is dead: tritonserver then waits out its whole exit
            timeout (30 s) for that model, so it is killed sooner.
        shm_prefix: Python-backend shared-memory prefix; a unique one per server when None.
        env: extra environment variables of the server (and its Python-backend stubs), e.g.
            ``{"MM_ALLOW_NULL_ENGINE": "1"}`` for a benchmark's null engines.
    """

    model_repository: pathlib.Path
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    host: str = "127.0.0.1"
    work_dir: pathlib.Path | None = None
    startup_timeout_s: float = 300.0
    shutdown_timeout_s: float = 30.0
    log_verbose: int = 0
    log_file: pathlib.Path | None = None
    extra_args: tuple[str, ...] = ()
    model_control_mode: str = "explicit"
    dead_stub_shutdown_timeout_s: float = 5.0
    shm_prefix: str | None = None
    env: dict[str, str] = dataclasses.field(default_factory=dict)


def _pytriton_root() -> pathlib.Path:
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise TritonServerError("nvidia-pytriton is not installed; `pip install nvidia-pytriton==0.7.0`")
    return pathlib.Path(next(iter(spec.submodule_search_locations))) / "tritonserver"


def tritonserver_binary() -> pathlib.Path:
    """Path of the tritonserver executable shipped in the nvidia-pytriton wheel."""
    binary = _pytriton_root() / "bin" / "tritonserver"
    if not binary.exists():
        raise TritonServerError(f"tritonserver binary not found at {binary}")
    return binary


def prepare_backend_dir(work_dir: pathlib.Path) -> pathlib.Path:
    """Lay out ``<work_dir>/backends/python`` with the Python backend and this interpreter's stub."""
    root = _pytriton_root()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    sources = {name: root / "backends" / "python" / name for name in _BACKEND_FILES}
    sources["triton_python_backend_stub"] = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    backend_dir = work_dir / "backends"
    python_dir = backend_dir / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    for name, source in sources.items():
        if not source.exists():
            raise TritonServerError(f"missing Python backend file {source}")
        link = python_dir / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(source)
    return backend_dir


class TritonServer:
    """A running tritonserver; use as ``with TritonServer(config) as server: ...``."""

    def __init__(self, config: TritonServerConfig) -> None:
        self.config = config
        self.shm_prefix = config.shm_prefix or f"triton_local_{os.getpid()}_{secrets.token_hex(4)}_"
        self._process: subprocess.Popen[bytes] | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._log: IO[bytes] | None = None
        # Model instance name -> model, for every stub seen alive (to tell when one is gone).
        self._instances: dict[str, str] = {}
        # A stub of this server died: its model object never unloads, so shutdown would hang.
        self._stub_died = False

    @property
    def http_url(self) -> str:
        return f"http://{self.config.host}:{self.config.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.config.host}:{self.config.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.config.host}:{self.config.metrics_port}/metrics"

    @property
    def pid(self) -> int | None:
        """The tritonserver process id while it runs (for signals and /proc), else None."""
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    def command(self, backend_dir: pathlib.Path) -> list[str]:
        cfg = self.config
        return [
            str(tritonserver_binary()),
            f"--model-repository={pathlib.Path(cfg.model_repository).resolve()}",
            f"--backend-directory={backend_dir}",
            f"--http-address={cfg.host}",
            f"--http-port={cfg.http_port}",
            f"--grpc-address={cfg.host}",
            f"--grpc-port={cfg.grpc_port}",
            f"--metrics-address={cfg.host}",
            f"--metrics-port={cfg.metrics_port}",
            "--allow-metrics=true",
            "--allow-gpu-metrics=false",
            "--metrics-config=summary_latencies=true",  # p50/p90/p95/p99 per stage (queue, compute) per model
            "--strict-readiness=true",
            "--exit-on-error=true",
            f"--log-verbose={cfg.log_verbose}",
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
            f"--model-control-mode={cfg.model_control_mode}",
            *(["--load-model=*"] if cfg.model_control_mode == "explicit" else []),
            *cfg.extra_args,
        ]

    def environment(self) -> dict[str, str]:
        """The server's environment: this interpreter's bin dir first on PATH.

        The Python-backend stub embeds the system libpython and resolves its prefix from
        ``python3`` on PATH, so the virtualenv's packages are what ``model.py`` imports.
        """
        env = dict(os.environ)
        bin_dir = str(pathlib.Path(sys.executable).parent)
        env["PATH"] = os.pathsep.join([bin_dir, env.get("PATH", "")])
        env.update(self.config.env)
        return env

    def start(self) -> None:
        if self._process is not None:
            raise TritonServerError("already started")
        if self.config.work_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="tritonserver-")
            work_dir = pathlib.Path(self._tmp.name)
        else:
            work_dir = pathlib.Path(self.config.work_dir)
        backend_dir = prepare_backend_dir(work_dir)
        cmd = self.command(backend_dir)
        LOGGER.info("starting %s", " ".join(cmd))
        stdout: IO[bytes] | None = None
        if self.config.log_file is not None:
            self.config.log_file.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(self.config.log_file, "ab")  # noqa: SIM115 - closed in stop()
            stdout = self._log
        cmd, preexec_fn = sigint_restored(cmd)  # stop()'s SIGINT reaches tritonserver
        self._process = subprocess.Popen(
            cmd,
            env=self.environment(),
            stdout=stdout,
            stderr=subprocess.STDOUT if stdout else None,
            preexec_fn=preexec_fn,
        )
        try:
            self.wait_ready(self.config.startup_timeout_s)
        except BaseException:
            self.stop()
            raise

    def is_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.http_url}/v2/health/ready", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process is None or self._process.poll() is not None:
                code = None if self._process is None else self._process.returncode
                raise TritonServerError(f"tritonserver exited with code {code} before becoming ready{self._log_tail()}")
            if self.is_ready():
                LOGGER.info("tritonserver ready at %s (gRPC %s)", self.http_url, self.grpc_url)
                self.dead_models()  # record the stubs now alive
                return
            time.sleep(0.5)
        raise TritonServerError(f"tritonserver not ready after {timeout_s:.0f}s{self._log_tail()}")

    def _log_tail(self, max_bytes: int = 3000) -> str:
        """The end of the server's log, to say why it failed (empty when it logs to our stdout)."""
        path = self.config.log_file
        if path is None or not path.exists():
            return ""
        with open(path, "rb") as f:
            f.seek(max(0, path.stat().st_size - max_bytes))
            return "; log ends:\n" + f.read().decode(errors="replace")

    def stub_processes(self) -> list[stubs.Stub]:
        """The live Python-backend stubs of this server."""
        pid = self.pid
        return [] if pid is None else stubs.stubs(pid)

    def dead_models(self) -> list[str]:
        """Models with an instance whose stub was seen alive and now has no live process."""
        live = {s.instance: s.model for s in self.stub_processes()}
        dead = {model for instance, model in self._instances.items() if instance not in live}
        self._instances.update(live)
        self._stub_died = self._stub_died or bool(dead)
        return sorted(dead)

    def reload_model(self, model: str, timeout_s: float = 120.0) -> None:
        """Unload ``model``, then load it again at once (see :func:`triton_local.probe.reload_model`)."""
        try:
            probe.reload_model(self.http_url, model, timeout_s)
        except (urllib.error.URLError, OSError) as exc:
            raise TritonServerError(f"reloading {model} failed: {exc}") from exc

    def shm_segments(self) -> list[pathlib.Path]:
        """This server's Python-backend segments in /dev/shm (exactly its prefix; no one else's)."""
        return sorted(pathlib.Path("/dev/shm").glob(f"{self.shm_prefix}*"))

    def stop(self) -> None:
        process = self._process
        if process is not None:
            self.dead_models()
        live_stubs = self.stub_processes()
        self._process = None
        if process is not None and process.poll() is None:
            died = self._stub_died
            timeout = self.config.dead_stub_shutdown_timeout_s if died else self.config.shutdown_timeout_s
            LOGGER.info("stopping tritonserver (SIGINT)%s", "; a stub process died, waiting less" if died else "")
            stop_process(process, timeout)  # SIGINT, then SIGKILL after the timeout
        # Stubs exit on their own once tritonserver is gone; make sure of it (they are ours).
        for stub in live_stubs:
            with contextlib.suppress(ProcessLookupError):
                if stubs.is_running(stub):
                    os.kill(stub.pid, signal.SIGKILL)
        for segment in self.shm_segments():
            LOGGER.info("removing leftover shared memory %s", segment)
            segment.unlink(missing_ok=True)
        self._instances.clear()
        self._stub_died = False
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def wait(self) -> int:
        """Block until the server exits; returns its exit code."""
        if self._process is None:
            raise TritonServerError("not started")
        return self._process.wait()

    def __enter__(self) -> TritonServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
