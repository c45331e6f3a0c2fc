"""A real Prometheus scrapes both tiers: the gateway's /metrics and Triton's metrics port.

``test_dashboard_panels_return_data`` runs every query of the Grafana dashboard against a live
Prometheus scraping a real ``python -m gateway`` process and the real tritonserver (tiny engines)
after a small load, the way Grafana would send it (see :func:`grafana_expr`).
"""

from __future__ import annotations

import contextlib
import json
import math
import pathlib
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator

from tests.helpers import GatewayProcess, gateway_env, prometheus_server, run_gateway
from triton_local import TritonServer

DASHBOARD = pathlib.Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "dashboards" / "inference-gateway.json"
SCRAPE_INTERVAL_S = 1
# Grafana's $__rate_interval is max($__interval + scrape interval, 4 x scrape interval), the scrape
# interval being the data source's setting (15 s by default, which the provisioned data source keeps):
# on a 30-minute dashboard $__interval is a few seconds, so 4 x 15 s = 1m wins.
RATE_INTERVAL = "1m"
# Multi-value variables with "All" selected: Grafana substitutes the variable's allValue.
ALL = ".*"


def grafana_expr(expr: str, variables: dict[str, str]) -> str:
    """``expr`` as Grafana sends it: ``$__rate_interval`` and the template variables substituted.

    Variables are replaced as ``$name`` and ``${name}`` by their value (for "All": the allValue,
    ``.*``, inside ``=~`` matchers); ``$__rate_interval`` by :data:`RATE_INTERVAL`.
    """
    expr = expr.replace("$__rate_interval", RATE_INTERVAL)
    for name, value in variables.items():
        expr = expr.replace("${" + name + "}", value)
        expr = re.sub(rf"\${name}\b", lambda _: value, expr)  # noqa: B023 - used at once
    assert "$" not in expr, f"unsubstituted variable in {expr}"
    return expr


def _query(prometheus: str, expr: str) -> list[dict]:
    url = f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)["data"]["result"]  # type: ignore[no-any-return]


def _label_values(prometheus: str, label: str, match: str) -> list[str]:
    url = f"{prometheus}/api/v1/label/{label}/values?" + urllib.parse.urlencode({"match[]": match})
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)["data"]  # type: ignore[no-any-return]


@contextlib.contextmanager
def run_prometheus(tmp_path: pathlib.Path, gateway_url: str, triton: TritonServer) -> Iterator[str]:
    """A real Prometheus scraping ``gateway_url`` (job ``gateway``) and Triton (job ``triton``) every second,
    as the deploy configs name the jobs; yields its URL once both targets are up."""
    gateway_target = gateway_url.removeprefix("http://")
    triton_target = triton.metrics_url.removeprefix("http://").removesuffix("/metrics")
    config = (
        f"global: {{scrape_interval: {SCRAPE_INTERVAL_S}s}}\nscrape_configs:\n"
        f"  - job_name: gateway\n    static_configs: [{{targets: ['{gateway_target}']}}]\n"
        f"  - job_name: triton\n    static_configs: [{{targets: ['{triton_target}']}}]\n"
    )
    with prometheus_server(config, tmp_path) as prometheus:
        wait_for(
            prometheus,
            "up",
            lambda r: {x["metric"]["job"]: x["value"][1] for x in r} == {"gateway": "1", "triton": "1"},
            tmp_path / "prometheus.log",
        )
        yield prometheus


def wait_for(prometheus: str, expr: str, done: object, log: pathlib.Path, timeout_s: float = 60) -> list[dict]:
    """Poll ``expr`` until ``done(result)`` (a callable) is true; fails with Prometheus's log tail."""
    assert callable(done)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            result = _query(prometheus, expr)
            if done(result):
                return result
        except OSError:
            pass
        assert time.monotonic() < deadline, f"{expr}: not there in {timeout_s}s\n{log.read_text()[-2000:]}"
        time.sleep(0.5)


def test_prometheus_scrapes_gateway_and_triton(gateway_url: str, triton: TritonServer, tmp_path: pathlib.Path) -> None:
    body = json.dumps({"question": "Who?", "context": "Ada wrote it."}).encode()
    request = urllib.request.Request(f"{gateway_url}/qa", body, {"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200

    with run_prometheus(tmp_path, gateway_url, triton) as prometheus:
        log = tmp_path / "prometheus.log"
        qa = wait_for(prometheus, 'gateway_requests_total{route="/qa",status="200"}', bool, log)
        triton_ok = wait_for(prometheus, 'nv_inference_request_success{model="bert_qa"}', bool, log)
        assert float(qa[0]["value"][1]) >= 1
        assert float(triton_ok[0]["value"][1]) >= 1


# --- the Grafana dashboard against live data -------------------------------------------------


def _dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())  # type: ignore[no-any-return]


def _targets(dashboard: dict) -> list[tuple[str, str]]:
    return [(panel["title"], target["expr"]) for panel in dashboard["panels"] for target in panel.get("targets", [])]


def test_dashboard_uses_rate_interval_and_template_variables() -> None:
    dashboard = _dashboard()
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert {"model", "route"} <= variables.keys()
    for variable in variables.values():
        assert variable["includeAll"] and variable["allValue"] == ALL
    targets = _targets(dashboard)
    for title, expr in targets:
        # Every range is Grafana's $__rate_interval, never a fixed window.
        ranges = re.findall(r"\[([^\]]+)\]", expr)
        assert all(r == "$__rate_interval" for r in ranges), (title, expr)
        assert "histogram_quantile(0.5, sum by (le, model) (rate(gateway_inference_rows" not in expr, title
    exprs = " ".join(expr for _, expr in targets)
    assert "$model" in exprs and "$route" in exprs
    for needed in ("0.5", "0.95", "0.99"):  # p50/p95/p99 of routes and stages
        assert f"histogram_quantile({needed}, sum by (le, route) (rate(gateway_request_seconds_bucket" in exprs
        assert f'quantile="{needed}"' in exprs  # Triton's summary quantiles
    for metric in (
        "nv_inference_queue_duration_us",
        "nv_inference_compute_input_duration_us",
        "nv_inference_compute_infer_duration_us",
        "nv_inference_compute_output_duration_us",
        "gateway_inflight_requests",
        "nv_inference_pending_request_count",
        'code="overloaded"',
        "gateway_errors_total",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "nv_cpu_utilization",
        "nv_gpu_utilization",
    ):
        assert metric in exprs, metric


def _triton_successes(triton: TritonServer) -> float:
    """``sum(nv_inference_request_success)`` as Triton's metrics port reports it now."""
    with urllib.request.urlopen(triton.metrics_url, timeout=10) as response:
        text = response.read().decode()
    return sum(float(m) for m in re.findall(r"^nv_inference_request_success\{[^}]*\} (\S+)$", text, re.MULTILINE))


def _send(url: str, path: str, request_id: str, body: bytes, content_type: str) -> int:
    request = urllib.request.Request(
        f"{url}{path}", body, {"content-type": content_type, "x-request-id": request_id}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def _multipart(data: bytes) -> tuple[bytes, str]:
    boundary = "dashboard-test-boundary"
    body = (
        (
            f'--{boundary}\r\ncontent-disposition: form-data; name="file"; filename="x.jpg"\r\n'
            "content-type: image/jpeg\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def _load(gateway: GatewayProcess, jpeg: bytes, round_: int) -> dict[str, int]:
    """A few requests per route, one of them a 400; returns status by request id."""
    image, image_type = _multipart(jpeg)
    garbage, _ = _multipart(b"not an image")
    qa = json.dumps({"question": "Who wrote it?", "context": "Ada wrote the report."}).encode()
    requests = {
        f"qa-{round_}": ("/qa", qa, "application/json"),
        f"detect-{round_}": ("/detect", image, image_type),
        f"classify-{round_}": ("/classify", image, image_type),
        f"classify-lite-{round_}": ("/classify?model=efficientnet_lite0", image, image_type),
        f"bad-image-{round_}": ("/detect", garbage, image_type),
    }
    return {rid: _send(gateway.url, path, rid, body, ctype) for rid, (path, body, ctype) in requests.items()}


def _finite(result: list[dict]) -> list[float]:
    return [v for r in result if math.isfinite(v := float(r["value"][1]))]


def test_dashboard_panels_return_data(
    triton: TritonServer, model_repo: pathlib.Path, chelsea_jpeg: bytes, tmp_path: pathlib.Path
) -> None:
    env = gateway_env(triton.grpc_url, model_repo, health_probe_interval_s=0, latency_budget_s=0, log_format="json")
    with (
        run_gateway(env, tmp_path / "gateway.log") as gateway,
        run_prometheus(tmp_path, gateway.url, triton) as prometheus,
    ):
        log = tmp_path / "prometheus.log"
        statuses = _load(gateway, chelsea_jpeg, 1)
        # Round 2 once Prometheus holds round 1's series, so every rate() sees an increase: wait for its last
        # request, the bad image (a scrape between the classify requests and it held no error series yet, and
        # under load the next scrape came only after round 2: one sample, no rate, the errors panel empty).
        wait_for(prometheus, 'gateway_requests_total{route="/detect",status="400"}', bool, log)
        statuses |= _load(gateway, chelsea_jpeg, 2)
        assert statuses == {rid: 400 if rid.startswith("bad-") else 200 for rid in statuses}, statuses
        wait_for(
            prometheus,
            'sum(gateway_requests_total{route=~"/qa|/detect|/classify"})',
            lambda r: bool(r) and float(r[0]["value"][1]) >= 10,
            log,
        )
        # Triton is the session's server: its counters already held other tests' requests, so wait for
        # the count it reports now (round 2 included), not a small constant that was true before round 1.
        served = _triton_successes(triton)
        assert served >= 8, served  # round 1 and 2 ran on Triton
        wait_for(
            prometheus,
            "sum(nv_inference_request_success)",
            lambda r: bool(r) and float(r[0]["value"][1]) >= served,
            log,
        )

        dashboard = _dashboard()
        for variable in dashboard["templating"]["list"]:
            query = re.fullmatch(r"label_values\((\w+), (\w+)\)", variable["query"]["query"])
            assert query, variable["query"]
            assert _label_values(prometheus, query[2], query[1]), variable["name"]
        variables = {v["name"]: ALL for v in dashboard["templating"]["list"]}
        empty = []
        for title, expr in _targets(dashboard):
            result = _query(prometheus, grafana_expr(expr, variables))
            if not _finite(result):
                empty.append(f"{title}: {expr} -> {result}")
        assert not empty, "panels without data:\n" + "\n".join(empty)

        # The rows panel is the mean (every call here has one row of one request: they come one at a time),
        # not the interpolated median (0.5).
        rows_expr, calls_expr = [e for t, e in _targets(dashboard) if t.startswith("Rows per request")]
        assert set(_finite(_query(prometheus, grafana_expr(rows_expr, variables)))) == {1.0}
        assert set(_finite(_query(prometheus, grafana_expr(calls_expr, variables)))) == {1.0}
        (errors_expr,) = [e for t, e in _targets(dashboard) if t.startswith("Gateway errors/s")]
        codes = {r["metric"].get("code") for r in _query(prometheus, grafana_expr(errors_expr, variables))}
        assert "invalid_image" in codes

    # The gateway's own log: JSON lines, each request's access line carrying its id.
    lines = [json.loads(line) for line in (tmp_path / "gateway.log").read_text().splitlines()]
    access = {line["request_id"]: line for line in lines if line["logger"] == "uvicorn.access"}
    for rid, status in statuses.items():
        assert access[rid]["status"] == status, rid
