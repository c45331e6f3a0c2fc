"""``GATEWAY_WORKERS=2``: two real worker processes behind one port, one scrape counts both, and
each worker's shared-memory regions are its own and gone after shutdown."""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import tritonclient.grpc as grpcclient
from prometheus_client.mmap_dict import MmapedDict

from tests.helpers import ROOT, free_port
from triton_local import TritonServer
from triton_local.process import stop_process

ROUTE = "/classify"


def _regions(triton: TritonServer) -> set[str]:
    status = grpcclient.InferenceServerClient(triton.grpc_url).get_system_shared_memory_status(as_json=True)
    return set(status.get("regions", {}))


def _answered_by_pid(directory: pathlib.Path, route: str) -> dict[int, float]:
    """Each worker's own count of 200s on ``route``, read from its multiprocess file."""
    counts: dict[int, float] = defaultdict(float)
    for path in directory.glob("counter_*.db"):
        pid = int(path.stem.split("_")[-1])
        db = MmapedDict(str(path), read_mode=True)
        try:
            for key, value, _ in db.read_all_values():
                _name, sample, labels, _help = json.loads(key)
                if sample == "gateway_requests_total" and labels == {"route": route, "status": "200"}:
                    counts[pid] += value
        finally:
            db.close()
    return dict(counts)


@pytest.fixture
def two_workers(
    triton: TritonServer, model_repo: pathlib.Path, tmp_path: pathlib.Path
) -> Iterator[tuple[str, pathlib.Path, subprocess.Popen[bytes]]]:
    metrics_dir = tmp_path / "prom"
    metrics_dir.mkdir()
    # A stale sample of an earlier run: the gateway must clear it, or the count below is off by 1000.
    stale = "from prometheus_client import Counter; Counter('gateway_requests', '', ['route', 'status'])"
    stale += f".labels({ROUTE!r}, '200').inc(1000)"
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    subprocess.run([sys.executable, "-c", stale], env=env, check=True)
    assert list(metrics_dir.glob("counter_*.db"))

    env["GATEWAY_TRITON_SHARED_MEMORY"] = "true"
    with _serve_workers(triton, model_repo, tmp_path, env) as served:
        yield served


@contextlib.contextmanager
def _serve_workers(
    triton: TritonServer, model_repo: pathlib.Path, tmp_path: pathlib.Path, env: dict[str, str]
) -> Iterator[tuple[str, pathlib.Path, subprocess.Popen[bytes]]]:
    """``python -m gateway`` with 2 workers and ``env`` (``PROMETHEUS_MULTIPROC_DIR`` among them), until ready."""
    metrics_dir = pathlib.Path(env["PROMETHEUS_MULTIPROC_DIR"])
    port = free_port()
    env = {
        **env,
        "GATEWAY_WORKERS": "2",
        "GATEWAY_PORT": str(port),
        "GATEWAY_TRITON_URL": triton.grpc_url,
        "GATEWAY_MODEL_REPOSITORY": str(model_repo),
        "GATEWAY_LOG_LEVEL": "warning",
    }
    log = open(tmp_path / "gateway.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen([sys.executable, "-m", "gateway"], cwd=ROOT, env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180  # spawned workers import everything afresh: slow on a busy host
        while True:
            assert process.poll() is None, (tmp_path / "gateway.log").read_text()
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "gateway workers did not start"
            time.sleep(0.3)
        yield url, metrics_dir, process
    finally:
        stop_process(process, 30)
        log.close()


def _refused_by_pid(directory: pathlib.Path) -> dict[tuple[str, str], set[int]]:
    """Which workers counted an error answer, by (route, code), read from their multiprocess files."""
    pids: dict[tuple[str, str], set[int]] = defaultdict(set)
    for path in directory.glob("counter_*.db"):
        db = MmapedDict(str(path), read_mode=True)
        try:
            for key, value, _ in db.read_all_values():
                _name, sample, labels, _help = json.loads(key)
                if sample == "gateway_errors_total" and value:
                    pids[labels["route"], labels["code"]].add(int(path.stem.split("_")[-1]))
        finally:
            db.close()
    return dict(pids)


def _refusals() -> dict[str, tuple[bytes, int, str]]:
    """Uploads the image routes refuse, each with the status and error code a client must see from any worker."""
    import io

    from PIL import Image

    def progressive(size: tuple[int, int]) -> bytes:
        buffer = io.BytesIO()
        Image.radial_gradient("L").resize(size).convert("RGB").save(buffer, "JPEG", progressive=True)
        return buffer.getvalue()

    small, large = progressive((64, 48)), progressive((8000, 5000))  # 10 scans each
    last, end = small.rindex(b"\xff\xda"), small.rindex(b"\xff\xd9")
    tga = io.BytesIO()
    Image.new("RGB", (16, 16)).save(tga, "TGA")
    return {
        "garbage": (b"not an image", 400, "invalid_image"),
        "tga": (tga.getvalue(), 415, "unsupported_media_type"),
        "101 scans": (small[:end] + small[last:end] * 91 + small[end:], 413, "payload_too_large"),
        # 40 MP x 13 scans: past the default max_jpeg_scan_pixels (40 MP x 12)
        "40 MP x 13 scans": (
            large[:-2] + large[large.rindex(b"\xff\xda") : -2] * 3 + large[-2:],
            413,
            "payload_too_large",
        ),
    }


def _assert_refused_alike(url: str, metrics_dir: pathlib.Path) -> None:
    """Each worker refuses the same upload with the same status, error code and message (each counts its own)."""
    refusals = _refusals()

    def post(name: str) -> tuple[int, str, str]:
        files = {"file": ("upload", refusals[name][0], "application/octet-stream")}
        response = httpx.post(f"{url}/classify", files=files, headers={"Connection": "close"}, timeout=60)
        error = response.json()["error"]
        return response.status_code, error["code"], error["message"]

    deadline = time.monotonic() + 120
    with ThreadPoolExecutor(max_workers=4) as pool:
        while True:  # until both workers have refused (the kernel picks who accepts)
            for name, (_, status, code) in refusals.items():
                answers = set(pool.map(post, [name] * 4))
                assert len(answers) == 1 and next(iter(answers))[:2] == (status, code), (name, answers)
            counted = _refused_by_pid(metrics_dir)
            if all(len(counted.get(("/classify", code), ())) == 2 for _, _, code in refusals.values()):
                break
            assert time.monotonic() < deadline, counted


def _owners(regions: set[str]) -> set[int]:
    """The worker PIDs named in shared-memory region names (``gw-<pid>-<token>-<index>``)."""
    return {int(name.split("-")[1]) for name in regions}


def test_two_workers_one_scrape_counts_every_request(
    two_workers: tuple[str, pathlib.Path, subprocess.Popen[bytes]],
    triton: TritonServer,
    chelsea_jpeg: bytes,
    astronaut_png: bytes,
) -> None:
    url, metrics_dir, process = two_workers
    before = _regions(triton)

    def classify(_: int) -> int:
        # A new connection per request, so the kernel hands requests to both workers.
        headers = {"Connection": "close"}
        files = {"file": ("c.jpg", chelsea_jpeg, "image/jpeg")}
        return httpx.post(f"{url}{ROUTE}", files=files, headers=headers, timeout=60).status_code

    def detect(_: int) -> int:
        files = {"file": ("a.png", astronaut_png, "image/png")}
        return httpx.post(
            f"{url}/detect?model=yolov5n", files=files, headers={"Connection": "close"}, timeout=60
        ).status_code

    sent = 0
    deadline = time.monotonic() + 180
    with ThreadPoolExecutor(max_workers=4) as pool:
        # Until both workers have answered: the kernel picks who accepts, and the second worker
        # may still be starting when the first answers /readyz.
        while time.monotonic() < deadline:
            assert set(pool.map(classify, range(6))) == {200}
            assert set(pool.map(detect, range(2))) == {200}
            sent += 6
            answered = set(_answered_by_pid(metrics_dir, ROUTE))
            # Both workers have answered /classify and each has its own regions (one worker may hold
            # several regions, so counting regions is not enough).
            if len(answered) == 2 and _owners(_regions(triton) - before) == answered:
                break
    per_worker = _answered_by_pid(metrics_dir, ROUTE)
    assert len(per_worker) == 2 and all(n > 0 for n in per_worker.values()), per_worker

    text = httpx.get(f"{url}/metrics", timeout=10).text  # one scrape, whichever worker answers it
    counted = re.search(rf'^gateway_requests_total{{route="{ROUTE}",status="200"}} (\S+)$', text, re.M)
    assert counted is not None, text
    assert float(counted.group(1)) == sent
    latency = re.search(rf'^gateway_request_seconds_count{{route="{ROUTE}"}} (\S+)$', text, re.M)
    assert latency is not None and float(latency.group(1)) == sent
    # CPU and memory of the whole group (supervisor, workers, and any helper child of the supervisor).
    group = {m[0]: float(m[1]) for m in re.findall(r"^(process_\w+|gateway_processes) (\S+)$", text, re.M)}
    assert group["gateway_processes"] >= 3, group
    assert group["process_cpu_seconds_total"] > 0, group
    status = pathlib.Path(f"/proc/{process.pid}/status").read_text()
    supervisor_rss = int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M).group(1)) * 1024  # type: ignore[union-attr]
    assert group["process_resident_memory_bytes"] > supervisor_rss, (group, supervisor_rss)
    assert re.search(r"^gateway_inflight_requests \S+$", text, re.M), "in-flight gauge missing"

    # Each worker registered its own regions, named after its PID.
    mine = _regions(triton) - before
    assert _owners(mine) == set(per_worker), (mine, per_worker)
    _assert_refused_alike(url, metrics_dir)  # here: a second pair of workers would cost half a minute to start

    assert stop_process(process, 30) == 0  # a clean exit on SIGINT
    assert _regions(triton) == before
    assert not [name for name in mine if pathlib.Path("/dev/shm", name).exists()]
    assert not list(metrics_dir.glob("*.db"))  # cleaned at exit


def _inflight(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    match = re.search(r"^gateway_inflight_requests (\S+)$", text, re.M)
    assert match is not None, text
    return float(match.group(1))


def test_a_killed_worker_is_replaced_and_leaves_no_gauge_or_shared_memory_behind(
    two_workers: tuple[str, pathlib.Path, subprocess.Popen[bytes]], triton: TritonServer, astronaut_png: bytes
) -> None:
    """SIGKILL both workers while requests are in flight: uvicorn starts new ones; the in-flight gauge
    drops back to 0 (the dead workers' live-gauge files counted their requests for ever) and their
    shared-memory regions leave Triton and /dev/shm (Triton kept them registered and mapped)."""
    url, metrics_dir, process = two_workers
    before = _regions(triton)
    files = {"file": ("a.png", astronaut_png, "image/png")}
    deadline = time.monotonic() + 120
    while len(_owners(_regions(triton) - before)) < 2:  # the kernel picks the worker: until both hold regions
        assert time.monotonic() < deadline, "both workers did not answer /detect"
        response = httpx.post(f"{url}/detect?model=yolov5n", files=files, headers={"Connection": "close"}, timeout=60)
        assert response.status_code == 200, response.text
    workers = _owners(_regions(triton) - before)
    # Uploads that never finish: in flight (counted in the gauge) until their worker dies.
    uploads = []
    for _ in range(4):
        upload = socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=10)
        upload.sendall(
            b"POST /qa HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
        )
        uploads.append(upload)
    while _inflight(url) < 1:
        assert time.monotonic() < deadline, "the uploads were not counted in flight"
        time.sleep(0.1)
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    for upload in uploads:
        upload.close()

    def settled() -> bool:
        try:
            ready = httpx.get(f"{url}/readyz", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False
        left = {name for name in _regions(triton) if _owners({name}) & workers}
        in_dev_shm = [p for pid in workers for p in pathlib.Path("/dev/shm").glob(f"gw-{pid}-*")]
        return ready and not left and not in_dev_shm and _inflight(url) == 0

    deadline = time.monotonic() + 120
    while not settled():
        assert time.monotonic() < deadline, (
            _inflight(url),
            sorted(_regions(triton) - before),
            sorted(metrics_dir.glob("gauge_*")),
        )
        time.sleep(0.5)
    assert not [path for pid in workers for path in metrics_dir.glob(f"gauge_live*_{pid}.db")]
    # The new workers answer, and the dead workers' counts are kept (counters are not live gauges).
    response = httpx.post(f"{url}/detect?model=yolov5n", files=files, timeout=60)
    assert response.status_code == 200, response.text
    text = httpx.get(f"{url}/metrics", timeout=10).text
    detected = re.search(r'^gateway_requests_total{route="/detect",status="200"} (\S+)$', text, re.M)
    assert detected is not None and float(detected.group(1)) >= 3, text
    # Nothing left for multiprocessing's resource tracker to unlink (and warn about) when the supervisor exits.
    assert stop_process(process, 30) == 0
    log = (metrics_dir.parent / "gateway.log").read_text()
    assert "resource_tracker" not in log, log


def _statuses(url: str, key: str, n: int = 12) -> set[int]:
    """``n`` requests on new connections (the kernel spreads them over the workers)."""
    headers = {"X-API-Key": key, "Connection": "close"}
    return {httpx.get(f"{url}/models", headers=headers, timeout=10).status_code for _ in range(n)}


def _replace_workers(url: str, process: subprocess.Popen[bytes]) -> None:
    """SIGKILL every worker, then wait until uvicorn's replacements answer."""
    children = pathlib.Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
    workers = [
        int(pid) for pid in children if b"resource_tracker" not in pathlib.Path(f"/proc/{pid}/cmdline").read_bytes()
    ]
    assert len(workers) == 2, children
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 120
    while True:
        now = pathlib.Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
        if not set(map(str, workers)) & set(now):
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
        assert process.poll() is None and time.monotonic() < deadline, "no replacement workers"
        time.sleep(0.3)


def test_workers_keep_the_keys_read_at_start_when_the_file_changes_or_goes(
    triton: TritonServer, model_repo: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    """Replacement workers use the keys the gateway started with: a rotated keys file gave them the new
    keys (the old key 200 from one worker, 401 from the other) and a removed one made each replacement
    fail at start-up, again and again."""
    keys = tmp_path / "keys"
    keys.write_text("started-with\n")
    metrics_dir = tmp_path / "prom"
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir), "GATEWAY_API_KEYS_FILE": str(keys)}
    snapshots = set(pathlib.Path(tempfile.gettempdir()).glob("gateway-keys-*"))
    with _serve_workers(triton, model_repo, tmp_path, env) as (url, _, process):
        assert _statuses(url, "started-with") == {200}
        keys.write_text("rotated-in\n")
        _replace_workers(url, process)
        assert _statuses(url, "started-with") == {200}
        assert _statuses(url, "rotated-in") == {401}
        keys.unlink()
        _replace_workers(url, process)
        assert _statuses(url, "started-with") == {200}
        assert stop_process(process, 30) == 0
    assert set(pathlib.Path(tempfile.gettempdir()).glob("gateway-keys-*")) <= snapshots  # the copy is removed


def _statuses_by_pid(directory: pathlib.Path, route: str) -> dict[int, dict[str, float]]:
    """Each worker's own count of answers on ``route`` by status, read from its multiprocess file."""
    counts: dict[int, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for path in directory.glob("counter_*.db"):
        pid = int(path.stem.split("_")[-1])
        db = MmapedDict(str(path), read_mode=True)
        try:
            for key, value, _ in db.read_all_values():
                _name, sample, labels, _help = json.loads(key)
                if sample == "gateway_requests_total" and labels.get("route") == route:
                    counts[pid][labels["status"]] += value
        finally:
            db.close()
    return counts


def test_the_rate_limit_is_the_gateways_whichever_workers_a_client_reaches(
    triton: TritonServer, model_repo: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    """A client over many connections, spread by the kernel over both workers, gets ``burst`` requests
    in all (each worker's own buckets gave it up to twice that), then 429s from both workers."""
    burst = 5
    metrics_dir = tmp_path / "prom"
    env = {
        **os.environ,
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        "GATEWAY_RATE_LIMIT_PER_S": "0.01",
        "GATEWAY_RATE_LIMIT_BURST": str(burst),
    }
    with _serve_workers(triton, model_repo, tmp_path, env) as (url, _, process):
        statuses: list[int] = []
        deadline = time.monotonic() + 60
        # New connections until both workers have answered (refused or not) after the burst is spent.
        while len(statuses) < 2 * burst or len(_statuses_by_pid(metrics_dir, "/models")) < 2:
            assert time.monotonic() < deadline, _statuses_by_pid(metrics_dir, "/models")
            statuses.append(httpx.get(f"{url}/models", headers={"Connection": "close"}, timeout=10).status_code)
        by_worker = _statuses_by_pid(metrics_dir, "/models")
        assert statuses.count(200) == burst and set(statuses) == {200, 429}, (statuses, by_worker)
        assert sum(counts["200"] for counts in by_worker.values()) == burst
        assert stop_process(process, 30) == 0
    table = metrics_dir / "rate-limit.table"
    assert not table.exists()  # removed at exit
