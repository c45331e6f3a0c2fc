"""Prometheus metrics of the gateway: one histogram per stage, plus request counts and latency.

Each app gets its own registry so several apps (tests) can live in one process.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

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
            "Rows (windows or images) sent to Triton per request",
            ["model"],
            registry=r,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
        )
