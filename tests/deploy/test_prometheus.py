"""A real Prometheus scrapes both tiers: the gateway's /metrics and Triton's metrics port."""

from __future__ import annotations

import json
import pathlib
import subprocess
import time
import urllib.parse
import urllib.request

from tests.conftest import free_port
from triton_local import TritonServer


def _query(prometheus: str, expr: str) -> list[dict]:
    url = f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310
        return json.load(response)["data"]["result"]  # type: ignore[no-any-return]


def test_prometheus_scrapes_gateway_and_triton(gateway_url: str, triton: TritonServer, tmp_path: pathlib.Path) -> None:
    body = json.dumps({"question": "Who?", "context": "Ada wrote it."}).encode()
    request = urllib.request.Request(f"{gateway_url}/qa", body, {"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
        assert response.status == 200

    config = tmp_path / "prometheus.yml"
    gateway_target = gateway_url.removeprefix("http://")
    triton_target = triton.metrics_url.removeprefix("http://").removesuffix("/metrics")
    config.write_text(
        "global: {scrape_interval: 1s}\nscrape_configs:\n"
        f"  - job_name: gateway\n    static_configs: [{{targets: ['{gateway_target}']}}]\n"
        f"  - job_name: triton\n    static_configs: [{{targets: ['{triton_target}']}}]\n"
    )
    port = free_port()
    prometheus = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "prometheus.log").open("wb"),
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                up = {r["metric"]["job"]: r["value"][1] for r in _query(prometheus, "up")}
                qa = _query(prometheus, 'gateway_requests_total{route="/qa",status="200"}')
                triton_ok = _query(prometheus, 'nv_inference_request_success{model="bert_qa"}')
                if up == {"gateway": "1", "triton": "1"} and qa and triton_ok:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "prometheus.log").read_text()[-2000:]
            time.sleep(0.5)
        assert float(qa[0]["value"][1]) >= 1
        assert float(triton_ok[0]["value"][1]) >= 1
    finally:
        process.terminate()
        process.wait(timeout=30)
