"""Triton dies or freezes under the gateway: every request still gets exactly one well-formed answer.

kill -9 → 503 ``triton_unavailable`` (after the gateway's bounded retries) until Triton is back on the
same ports, then 200 again. SIGSTOP for longer than ``triton_timeout_s`` → 504 ``upstream_timeout``;
SIGCONT → 200 again. Never a 500, never a hang: every request carries a client timeout, and a
timeout fails the test.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor

import httpx

from magicmind_build.specs import SPECS
from tests.helpers import GatewayProcess, OwnTriton, answer_of, gateway_env
from triton_local import stubs as triton_stubs

CLIENT_TIMEOUT_S = 30.0  # far above any answer the gateway should give here; hitting it is a hang
RECOVERY_DEADLINE_S = 60.0
QA_BODY = {"question": "Who wrote the letter?", "context": "The letter was written by Ada Lovelace in London."}
_ids = itertools.count()


def _send(url: str, kind: str, image: bytes) -> tuple[int, str | None]:
    """One request with a fresh X-Request-ID; returns (status, error code) of its well-formed answer."""
    request_id = f"fault-{next(_ids)}"
    headers = {"X-Request-ID": request_id}
    with httpx.Client(base_url=url, timeout=CLIENT_TIMEOUT_S) as client:
        if kind == "qa":
            response = client.post("/qa", json=QA_BODY, headers=headers)
        else:
            files = {"file": ("chelsea.jpg", image, "image/jpeg")}
            response = client.post("/classify?model=efficientnet_lite0", files=files, headers=headers)
    return answer_of(response, request_id)


def _burst(url: str, image: bytes, n: int) -> list[tuple[int, str | None]]:
    """``n`` concurrent requests (QA and classification alternating); all answers, in order."""
    kinds = ["qa", "classify"] * (n // 2) + ["qa"] * (n % 2)
    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(lambda kind: _send(url, kind, image), kinds))


def _wait_serving(url: str, image: bytes) -> int:
    """Send requests until one of each kind succeeds (bounded); returns how many were not 200."""
    failures = 0
    deadline = time.monotonic() + RECOVERY_DEADLINE_S
    for kind in ("qa", "classify"):
        while (status := _send(url, kind, image))[0] != 200:
            assert status[0] in {503, 504}, status
            failures += 1
            assert time.monotonic() < deadline, "gateway did not serve again after Triton came back"
            time.sleep(0.5)
    return failures


def _wait_ready(url: str) -> None:
    """Poll ``/readyz`` until 200 (bounded)."""
    deadline = time.monotonic() + RECOVERY_DEADLINE_S
    while (status := httpx.get(f"{url}/readyz", timeout=CLIENT_TIMEOUT_S).status_code) != 200:
        assert status == 503, status
        assert time.monotonic() < deadline, "/readyz did not turn 200 after Triton came back"
        time.sleep(0.2)


def test_triton_kill_and_restart_on_same_ports(
    own_triton_module: OwnTriton,
    start_gateway: Callable[[Mapping[str, str]], GatewayProcess],
    chelsea_jpeg: bytes,
) -> None:
    triton = own_triton_module
    gateway = start_gateway(gateway_env(triton.grpc_url, triton.repo))
    assert _burst(gateway.url, chelsea_jpeg, 2) == [(200, None), (200, None)]

    before = triton.stubs()
    assert {s.model for s in before} == set(SPECS), before
    triton.kill()
    # Its stubs are gone too (exited with their parent, or reaped by kill()).
    assert not [s for s in before if triton_stubs.is_running(s)], before
    # Down, and not coming back during this burst: each request is refused after the retries.
    assert _burst(gateway.url, chelsea_jpeg, 6) == [(503, "triton_unavailable")] * 6
    ready = httpx.get(f"{gateway.url}/readyz", timeout=CLIENT_TIMEOUT_S)
    assert ready.status_code == 503 and ready.json()["triton"] is False

    # Restart on the same ports while clients keep sending: each answer is a success or a 503.
    during: list[tuple[int, str | None]] = []
    restarted = threading.Event()

    def keep_sending() -> None:
        while not restarted.is_set() and len(during) < 200:
            during.append(_send(gateway.url, "qa", chelsea_jpeg))

    sender = threading.Thread(target=keep_sending)
    sender.start()
    try:
        triton.start()
    finally:
        restarted.set()
        sender.join(timeout=2 * CLIENT_TIMEOUT_S)
    assert not sender.is_alive()
    assert during, "no request was sent while Triton restarted"
    assert set(during) <= {(200, None), (503, "triton_unavailable")}, during

    _wait_serving(gateway.url, chelsea_jpeg)
    assert _burst(gateway.url, chelsea_jpeg, 4) == [(200, None)] * 4
    # Readiness follows the probes, re-run every health_probe_retry_interval_s while a model is unhealthy.
    _wait_ready(gateway.url)


def test_triton_frozen_longer_than_timeout_gives_504_then_recovers(
    own_triton_module: OwnTriton,
    start_gateway: Callable[[Mapping[str, str]], GatewayProcess],
    chelsea_jpeg: bytes,
) -> None:
    triton = own_triton_module
    gateway = start_gateway(gateway_env(triton.grpc_url, triton.repo, triton_timeout_s=2))
    assert _burst(gateway.url, chelsea_jpeg, 2) == [(200, None), (200, None)]

    triton.pause()
    try:
        # Each call's deadline (2 s) passes while Triton is frozen: 504, not a hang and not a 500.
        frozen = _burst(gateway.url, chelsea_jpeg, 4)
        assert frozen == [(504, "upstream_timeout")] * 4
        ready = httpx.get(f"{gateway.url}/readyz", timeout=CLIENT_TIMEOUT_S)
        assert ready.status_code == 503
    finally:
        triton.resume()

    _wait_serving(gateway.url, chelsea_jpeg)
    assert _burst(gateway.url, chelsea_jpeg, 4) == [(200, None)] * 4


def test_triton_frozen_before_a_detectors_first_shared_memory_request_gives_504_within_the_call_deadline(
    own_triton_module: OwnTriton,
    start_gateway: Callable[[Mapping[str, str]], GatewayProcess],
    chelsea_jpeg: bytes,
) -> None:
    """The first /detect with shared memory reads the model's configuration and registers a region: both
    calls carry the call deadline (triton_timeout_s) too. They had none, so a Triton frozen before that
    request held it until the request's own deadline (30 s here, GATEWAY_REQUEST_TIMEOUT_S)."""
    triton = own_triton_module
    timeout_s = 2.0
    env = gateway_env(triton.grpc_url, triton.repo, triton_timeout_s=timeout_s, triton_shared_memory=True)
    gateway = start_gateway(env)
    assert _send(gateway.url, "qa", chelsea_jpeg) == (200, None)

    def detect() -> tuple[tuple[int, str | None], float]:
        request_id = f"fault-{next(_ids)}"
        files = {"file": ("chelsea.jpg", chelsea_jpeg, "image/jpeg")}
        start = time.monotonic()
        with httpx.Client(base_url=gateway.url, timeout=CLIENT_TIMEOUT_S) as client:
            response = client.post("/detect", files=files, headers={"X-Request-ID": request_id})
        return answer_of(response, request_id), time.monotonic() - start

    triton.pause()
    try:
        answer, elapsed = detect()
        # A correctness bound, not a timing: the call deadline plus generous slack for a loaded host,
        # far below the 30 s the unbounded call took.
        assert answer == (504, "upstream_timeout") and elapsed < timeout_s + 5, (answer, elapsed)
    finally:
        triton.resume()
    deadline = time.monotonic() + RECOVERY_DEADLINE_S
    while (answer := detect()[0]) != (200, None):
        assert answer[0] in {503, 504} and time.monotonic() < deadline, answer
        time.sleep(0.5)
