"""Access control end to end, against a real tritonserver: API keys, rate limits, error bodies
that keep Triton's address and gRPC text to the log, and ``/metrics`` on its own port."""

from __future__ import annotations

import logging
import os
import pathlib
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from gateway import Settings, create_app
from gateway.server import uvicorn_options
from tests.helpers import free_port, serve
from triton_local import TritonServer
from triton_local.process import stop_process

QA = {"question": "Who wrote the letter?", "context": "The letter was written by Ada in London."}
RATE = 0.1  # tokens per second: no token comes back within one test
BURST = 3


def _assert_error(response, status: int, code: str) -> dict:  # type: ignore[no-untyped-def,type-arg]
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers["x-request-id"]
    body = response.json()
    assert body["error"]["code"] == code and body["error"]["message"]
    return body  # type: ignore[no-any-return]


def _key(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def keyed(settings: Settings) -> Iterator[TestClient]:
    """The gateway with four API keys and a small rate: 3 requests at once, then 1 per 10 s per key."""
    update = {
        "api_keys": SecretStr("alpha,beta,gamma,delta"),
        "rate_limit_per_s": RATE,
        "rate_limit_burst": BURST,
    }
    with TestClient(create_app(settings.model_copy(update=update))) as client:
        yield client


def test_missing_or_wrong_key_is_401_with_a_request_id(keyed: TestClient) -> None:
    for headers in ({}, _key("wrong"), {"X-API-Key": "alph"}, {"Authorization": "Basic YWxwaGE="}):
        for path in ("/qa", "/docs", "/openapi.json", "/metrics", "/models"):
            response = keyed.post(path, json=QA, headers=headers) if path == "/qa" else keyed.get(path, headers=headers)
            _assert_error(response, 401, "unauthorized")
            assert response.headers["www-authenticate"].startswith("Bearer")
    given = keyed.post("/qa", json=QA, headers={"X-Request-ID": "probe-401"})
    assert given.headers["x-request-id"] == "probe-401"


def test_probes_need_no_key(keyed: TestClient) -> None:
    assert keyed.get("/healthz").status_code == 200
    assert keyed.get("/readyz").status_code == 200


def test_right_key_is_answered(keyed: TestClient) -> None:
    qa = keyed.post("/qa", json=QA, headers=_key("alpha"))
    assert qa.status_code == 200, qa.text
    assert qa.json()["answers"]
    assert keyed.get("/openapi.json", headers={"X-API-Key": "alpha"}).json()["paths"]["/qa"]
    assert keyed.get("/docs", headers={"X-API-Key": "alpha"}).status_code == 200


def test_burst_plus_one_is_429_with_retry_after_and_counted(keyed: TestClient) -> None:
    statuses = [keyed.post("/qa", json=QA, headers=_key("beta")).status_code for _ in range(BURST)]
    assert statuses == [200] * BURST
    refused = keyed.post("/qa", json=QA, headers=_key("beta"))
    _assert_error(refused, 429, "rate_limited")
    retry_after = int(refused.headers["retry-after"])
    assert 1 <= retry_after <= 1 / RATE
    # Another key has its own bucket.
    assert keyed.post("/qa", json=QA, headers=_key("gamma")).status_code == 200
    metrics = keyed.get("/metrics", headers=_key("delta")).text
    assert 'gateway_requests_total{route="/qa",status="429"} 1.0' in metrics
    assert 'gateway_requests_total{route="/qa",status="401"}' in metrics


def test_without_keys_the_limit_is_per_client_ip(settings: Settings) -> None:
    limited = settings.model_copy(update={"rate_limit_per_s": RATE, "rate_limit_burst": 2})
    with TestClient(create_app(limited)) as client:
        assert [client.get("/models").status_code for _ in range(2)] == [200, 200]
        _assert_error(client.get("/models"), 429, "rate_limited")
        assert client.get("/healthz").status_code == 200  # probes are never limited


def test_docs_can_be_turned_off(settings: Settings) -> None:
    with TestClient(create_app(settings.model_copy(update={"docs_enabled": False}))) as client:
        for path in ("/docs", "/redoc", "/openapi.json"):
            _assert_error(client.get(path), 404, "http_error")
        assert client.post("/qa", json=QA).status_code == 200


def test_unreachable_triton_503_keeps_the_address_in_the_log(
    model_repo: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    address = f"127.0.0.1:{free_port()}"
    dead = Settings(triton_url=address, model_repository=model_repo, triton_retries=0, _env_file=None)  # type: ignore[call-arg]
    with TestClient(create_app(dead)) as client, caplog.at_level(logging.WARNING, logger="gateway.app"):
        response = client.post("/qa", json=QA, headers={"X-Request-ID": "dead-triton-1"})
    body = _assert_error(response, 503, "triton_unavailable")
    message = body["error"]["message"]
    assert address not in response.text and "127.0.0.1" not in response.text
    assert "connect" not in message.lower() and "ipv4" not in message
    assert "dead-triton-1" in message
    logged = [r.getMessage() for r in caplog.records if "dead-triton-1" in r.getMessage()]
    assert logged and address in logged[0]


def test_triton_error_502_keeps_the_grpc_text_in_the_log(
    settings: Settings, triton: TritonServer, ghost_model_repo: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    broken = settings.model_copy(update={"qa_model": "no_such_model", "model_repository": ghost_model_repo})
    with TestClient(create_app(broken)) as client, caplog.at_level(logging.WARNING, logger="gateway.app"):
        response = client.post("/qa", json=QA, headers={"X-Request-ID": "bad-model-1"})
    body = _assert_error(response, 502, "inference_failed")
    assert triton.grpc_url not in response.text and "unknown model" not in response.text.lower()
    assert "bad-model-1" in body["error"]["message"]
    logged = [r.getMessage() for r in caplog.records if "bad-model-1" in r.getMessage()]
    assert logged and triton.grpc_url in logged[0] and "no_such_model" in logged[0]


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_metrics_port_serves_metrics_and_the_main_port_does_not(
    settings: Settings, model_repo: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    port, metrics_port = free_port(), free_port()
    env = {
        **os.environ,
        "GATEWAY_PORT": str(port),
        "GATEWAY_METRICS_PORT": str(metrics_port),
        "GATEWAY_TRITON_URL": settings.triton_url,
        "GATEWAY_MODEL_REPOSITORY": str(model_repo),
        "GATEWAY_LOG_LEVEL": "warning",
    }
    log = tmp_path / "gateway.log"
    with log.open("w") as out:
        process = subprocess.Popen([sys.executable, "-m", "gateway"], cwd=tmp_path, env=env, stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                main_up = _get(f"http://127.0.0.1:{port}/healthz")[0] == 200
                if main_up and _get(f"http://127.0.0.1:{metrics_port}/metrics")[0] == 200:
                    break
            except OSError:
                pass
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        status, text = _get(f"http://127.0.0.1:{port}/metrics")
        assert status == 404 and '"http_error"' in text
        status, text = _get(f"http://127.0.0.1:{metrics_port}/metrics")
        assert status == 200
        assert 'gateway_requests_total{route="unmatched",status="404"} 1.0' in text
        assert 'gateway_requests_total{route="/healthz",status="200"}' in text
        assert _get(f"http://127.0.0.1:{metrics_port}/qa")[0] == 404  # nothing else on the metrics port
    finally:
        stop_process(process, 20)
    assert process.returncode == 0, log.read_text()


@pytest.mark.parametrize(("trusted", "spoofed_status"), [(None, 429), ("127.0.0.1", 200)])
def test_x_forwarded_for_names_the_client_only_from_a_trusted_proxy(
    settings: Settings, trusted: str | None, spoofed_status: int
) -> None:
    """Over a real uvicorn with the gateway's options: a local client that sends a new X-Forwarded-For
    is a new rate-limit identity only when 127.0.0.1 is a trusted proxy (uvicorn trusted it by default)."""
    limited = settings.model_copy(
        update={"rate_limit_per_s": RATE, "rate_limit_burst": 1, "forwarded_allow_ips": trusted}
    )
    with serve(create_app(limited), **{**uvicorn_options(limited), "port": free_port()}) as url:
        assert httpx.get(f"{url}/models", timeout=10).status_code == 200
        _assert_error(httpx.get(f"{url}/models", timeout=10), 429, "rate_limited")
        spoofed = httpx.get(f"{url}/models", headers={"X-Forwarded-For": "203.0.113.9"}, timeout=10)
        assert spoofed.status_code == spoofed_status, spoofed.text


def test_ipv6_clients_behind_a_trusted_proxy_are_limited_by_their_slash_64(settings: Settings) -> None:
    """Over a real uvicorn with the gateway's options: addresses of one /64 share a bucket (a host can
    rotate through its whole /64), the next /64 has its own."""
    limited = settings.model_copy(
        update={"rate_limit_per_s": RATE, "rate_limit_burst": 1, "forwarded_allow_ips": "127.0.0.1"}
    )

    def get(client: str) -> httpx.Response:
        return httpx.get(f"{url}/models", headers={"X-Forwarded-For": client}, timeout=10)

    with serve(create_app(limited), **{**uvicorn_options(limited), "port": free_port()}) as url:
        assert get("2001:db8:0:1::1").status_code == 200
        _assert_error(get("2001:db8:0:1::2"), 429, "rate_limited")
        _assert_error(get("2001:db8:0:1:ffff:ffff:ffff:fffe"), 429, "rate_limited")
        assert get("2001:db8:0:2::1").status_code == 200
