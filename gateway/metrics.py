"""Prometheus metrics of the gateway: one histogram per stage, plus request counts and latency.

Each app gets its own registry so several apps (tests) can live in one process.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import HeadersTooLarge, RequestError, RequestTimeout

# Not counted as in flight: probes and scrapes (the same paths admission control never sheds).
_NOT_INFLIGHT = frozenset({"/healthz", "/readyz", "/metrics", "/models", "/openapi.json", "/docs"})
_ERROR_BODY_LIMIT = 64 * 1024  # error bodies are small JSON; past this the code is "unknown"
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """The gateway's collectors, registered in ``registry``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.preprocess = Histogram(
            "gateway_preprocess_seconds",
            "Pre-processing time (decode, tokenise, resize)",
            ["task"],
            registry=r,
            buckets=_LATENCY_BUCKETS,
        )
        self.inference = Histogram(
            "gateway_inference_seconds",
            "Time waiting for Triton, all calls of one request",
            ["task", "model"],
            registry=r,
            buckets=_LATENCY_BUCKETS,
        )
        self.postprocess = Histogram(
            "gateway_postprocess_seconds",
            "Post-processing time (span decode, NMS, top-k)",
            ["task"],
            registry=r,
            buckets=_LATENCY_BUCKETS,
        )
        self.requests = Counter(
            "gateway_requests", "Requests answered, by route and HTTP status", ["route", "status"], registry=r
        )
        self.request_latency = Histogram(
            "gateway_request_seconds", "End-to-end request latency", ["route"], registry=r, buckets=_LATENCY_BUCKETS
        )
        self.batch_rows = Histogram(
            "gateway_inference_rows",
            "Rows (windows or images) a request sends to Triton per call, before coalescing",
            ["model"],
            registry=r,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
        )
        self.call_requests = Histogram(
            "gateway_triton_call_requests",
            "Requests per Triton inference call: above 1 when concurrent requests were merged (coalescing)",
            ["model"],
            registry=r,
            buckets=(1, 2, 4, 8, 16, 32, 64),
        )
        self.errors = Counter(
            "gateway_errors",
            "Error answers (4xx/5xx) by route and JSON error code (e.g. overloaded, triton_unavailable)",
            ["route", "code"],
            registry=r,
        )
        self.cancelled = Counter(
            "gateway_cancelled_requests",
            "Requests whose work was cancelled, by route and reason (deadline, client_disconnect)",
            ["route", "reason"],
            registry=r,
        )
        self.shared_memory_swept = Counter(
            "gateway_shared_memory_swept",
            "Shared-memory regions of dead gateway processes unregistered from Triton and unlinked",
            registry=r,
        )
        # Health probes (gateway.health): counted apart from user traffic.
        self.probes = Counter(
            "gateway_probes", "Probe inferences by model and result (ok, fail)", ["model", "result"], registry=r
        )
        self.probe_latency = Histogram(
            "gateway_probe_seconds", "Probe inference time", ["model"], registry=r, buckets=_LATENCY_BUCKETS
        )
        # Requests between arrival and answer (body upload, admission, work), probes and scrapes apart;
        # summed over live worker processes in multiprocess mode.
        self.inflight = Gauge(
            "gateway_inflight_requests",
            "Requests received and not yet answered (health, readiness, metrics and models excluded)",
            registry=r,
            multiprocess_mode="livesum",
        )
        # Answered by the HTTP layer itself, before any app code (gateway.server): 408 request_timeout
        # (header deadline), 431 headers_too_large, 400 bad_request (malformed request).
        self.http_refusals = Counter(
            "gateway_http_refusals",
            "Requests refused by the HTTP layer before the app (header deadline, header size, malformed), by code",
            ["code"],
            registry=r,
        )
        for error in (RequestTimeout, HeadersTooLarge, RequestError):  # every series exists, at 0 until used
            self.http_refusals.labels(error.code)
        # process_cpu_seconds_total, process_resident_memory_bytes, ... of this process (one-process
        # mode; with workers see gateway.workers.WorkerGroupCollector).
        ProcessCollector(registry=r)


def error_code(body: bytes) -> str:
    """The ``error.code`` of the gateway's JSON error body, else ``unknown``."""
    try:
        code = json.loads(body)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return "unknown"
    return code if isinstance(code, str) else "unknown"


class RequestMetrics:
    """ASGI middleware counting every HTTP answer by route and status, and timing it.

    Installed outside admission control and the body limit, so shed (503) and refused (413)
    requests are counted too. The route label is the matched route's template, else the path
    when it is one of the app's own paths, else ``unmatched`` (bounded label cardinality).
    Error answers are also counted by their JSON error code (``gateway_errors_total``), which
    tells a shed request (``overloaded``) from an outage (``triton_unavailable``).
    """

    def __init__(self, app: ASGIApp, metrics: Metrics, known_paths: Callable[[], set[str]]) -> None:
        self.app = app
        self.metrics = metrics
        self.known_paths = known_paths
        # The labelled children, resolved once per label set: ``labels()`` validates and locks on every call.
        # Bounded: routes are the app's own paths or ``unmatched``, statuses and error codes few.
        self._counts: dict[tuple[str, int], Any] = {}
        self._errors: dict[tuple[str, str], Any] = {}
        self._latency: dict[str, Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        body = bytearray()
        counted = scope["path"] not in _NOT_INFLIGHT
        if counted:
            self.metrics.inflight.inc()

        async def record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and status >= 400 and len(body) <= _ERROR_BODY_LIMIT:
                body.extend(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            if counted:
                self.metrics.inflight.dec()
            route = getattr(scope.get("route"), "path", None)
            if route is None:
                route = scope["path"] if scope["path"] in self.known_paths() else "unmatched"
            m = self.metrics
            if (count := self._counts.get((route, status))) is None:
                count = self._counts[route, status] = m.requests.labels(route, str(status))
            count.inc()
            if status >= 400:
                code = error_code(bytes(body)) if len(body) <= _ERROR_BODY_LIMIT else "unknown"
                if (errors := self._errors.get((route, code))) is None:
                    errors = self._errors[route, code] = m.errors.labels(route, code)
                errors.inc()
            if (latency := self._latency.get(route)) is None:
                latency = self._latency[route] = m.request_latency.labels(route)
            latency.observe(time.perf_counter() - start)


def metrics_app(metrics: Metrics) -> Starlette:
    """A separate app serving only ``GET /metrics`` (``GATEWAY_METRICS_PORT``); anything else is 404."""

    async def prometheus_metrics(_: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return Starlette(routes=[Route("/metrics", prometheus_metrics, methods=["GET"])])
