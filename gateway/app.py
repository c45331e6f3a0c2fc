"""``create_app(settings)``: the FastAPI application."""

from __future__ import annotations

import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Callable

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway._asgi import error_body
from gateway._malloc import tune_malloc
from gateway.admission import AdmissionControl
from gateway.auth import ApiKeyAuth, load_api_keys
from gateway.body_limit import BufferedBody
from gateway.deadline import RequestDeadline
from gateway.errors import GatewayError
from gateway.metrics import Metrics, RequestMetrics
from gateway.rate_limit import RateLimit, TokenBuckets
from gateway.request_id import RequestId
from gateway.request_id import current as request_id_var
from gateway.routes import classify, detect, health, qa
from gateway.server_errors import ServerErrors
from gateway.services import Services
from gateway.settings import Settings
from gateway.triton import TritonClient
from gateway.workers import scrape_registry, shared_buckets

LOGGER = logging.getLogger(__name__)


def _error(status: int, code: str, message: str, details: list[dict[str, object]] | None = None) -> JSONResponse:
    return JSONResponse(error_body(code, message, details), status_code=status)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(GatewayError)
    async def gateway_error(_: Request, exc: GatewayError) -> JSONResponse:
        message = exc.message
        if exc.status_code >= 500:
            # Details (Triton's address, raw gRPC text) go to the log only, keyed by the request id.
            request_id = request_id_var.get()
            LOGGER.warning("%s [request %s]: %s (%s)", exc.code, request_id, exc.message, exc.detail)
            message = f"{exc.message} (request id {request_id})"
        response = _error(exc.status_code, exc.code, message)
        response.headers.update(exc.headers)  # e.g. Retry-After on 503
        return response

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        details = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")} for e in exc.errors()
        ]
        summary = "; ".join(f"{'.'.join(str(p) for p in d['loc'])}: {d['msg']}" for d in details)
        return _error(422, "validation_error", summary or "invalid request", details)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        response = _error(exc.status_code, "http_error", str(exc.detail))
        response.headers.update(exc.headers or {})  # e.g. Allow on 405
        return response

    # Anything else is answered by gateway.server_errors.ServerErrors (500, with the request id).


def _route_paths(app: FastAPI) -> set[str]:
    """The app's own paths: the documented ones plus the plain routes (``/metrics``, ``/docs``)."""
    paths: set[str] | None = getattr(app.state, "route_paths", None)
    if paths is None:
        plain = {path for route in app.routes if isinstance(path := getattr(route, "path", None), str)}
        paths = app.state.route_paths = set(app.openapi()["paths"]) | plain
    return paths


def create_app(settings: Settings, triton_client: Callable[[], TritonClient] | None = None) -> FastAPI:
    """The gateway app; its lifespan owns the Triton client and the task pipelines.

    ``triton_client`` makes the Triton client at start-up instead of the settings (the seam of the
    fast test tier: a real :class:`TritonClient` over a labelled fake gRPC client).
    """
    metrics = Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = Services.create(settings, metrics, triton_client() if triton_client else None)
        try:
            await services.bind(settings)  # tensor sizes from the models; a mismatch stops start-up here
        except BaseException:
            await services.close()
            raise
        app.state.services = services
        if services.prober is not None:
            services.prober.start()
        if services.sweeper is not None:
            services.sweeper.start()
        # What start-up built (modules, routes, schemas, tokenizer, clients) lives as long as the
        # app: move it out of the collector's generations, so that the collections requests trigger
        # scan only what requests allocate (a full collection walked all of it). Given back to the
        # collector at shut-down (an app torn down in a process that goes on, e.g. tests).
        gc.collect()
        gc.freeze()
        tune_malloc(settings.malloc_mmap_threshold_bytes, settings.malloc_trim_threshold_bytes)
        LOGGER.info(
            "gateway up: Triton %s, models %s",
            settings.triton_url,
            {m.name: m.weights for m in services.models},
        )
        try:
            yield
        finally:
            gc.unfreeze()
            await services.close()

    docs = settings.docs_enabled
    otel = settings.opentelemetry
    app = FastAPI(
        title="Inference gateway",
        description="BERT QA, YOLOv5n detection and ImageNet classification in front of Triton",
        version="0.1.0",
        lifespan=lifespan,
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
        # FastAPI's native OpenTelemetry only when asked for (GATEWAY_OPENTELEMETRY): otherwise FastAPI asks
        # the global OpenTelemetry providers on every request whether one is configured (10-16 us of gateway
        # CPU per request, docs/benchmarks.md). The gateway ships opentelemetry-api only (FastAPI's
        # dependency), no SDK; its own telemetry is Prometheus and the request-id logs.
        telemetry={"tracing": otel, "metrics": otel, "logs": otel},
    )
    app.state.settings = settings
    app.state.metrics = metrics
    _install_error_handlers(app)

    if settings.metrics_port is None:  # else served by gateway.metrics.metrics_app on its own port

        @app.get("/metrics", include_in_schema=False)
        async def prometheus_metrics() -> Response:
            return Response(generate_latest(scrape_registry(metrics.registry)), media_type=CONTENT_TYPE_LATEST)

    # The routers' routes go straight into the app's router. ``app.include_router`` would wrap each
    # router in FastAPI's ``_IncludedRouter``, which matches a request once to select the router and
    # again to select its route: about 20 us of gateway CPU per /qa request, 25 us per /healthz
    # (docs/benchmarks.md, "What sets the gateway's CPU"). Nothing is lost: these routers have no prefix,
    # dependencies or include options, and their tags are on their routes already. (Not carried over:
    # ``app.dependency_overrides``, which the gateway does not use; tests use the Triton client seam.)
    for module in (qa, detect, classify, health):
        app.router.routes.extend(module.router.routes)
    # Outermost last: request id, then the catch-all 500 (inside the request id, so it carries it),
    # then metrics (so shed and refused requests are counted), then the API key check and the rate
    # limit (cheap rejections, before any body is read), then the body read in full (bounded in size,
    # time and memory), then admission control, then the routes: only requests whose body has arrived
    # take a processing slot. The request deadline (X-Request-Timeout) and cancellation on disconnect
    # sit inside admission control, so a cancelled request frees its slot at once.
    app.add_middleware(
        RequestDeadline,
        metrics=metrics,
        default_s=settings.request_timeout_s,
        max_s=settings.max_request_timeout_s,
    )
    app.add_middleware(AdmissionControl, max_inflight=settings.max_inflight, latency_budget_s=settings.latency_budget_s)
    app.add_middleware(
        BufferedBody,
        max_bytes=settings.max_body_bytes,
        timeout_s=settings.body_timeout_s,
        max_concurrent=settings.max_body_reads,
        max_buffered_bytes=settings.max_buffered_body_bytes,
        max_header_bytes=settings.max_header_bytes,
        path_max_bytes={"/qa": settings.max_qa_body_bytes},
    )
    if settings.rate_limit_per_s > 0:
        buckets = shared_buckets(settings) or TokenBuckets(
            settings.rate_limit_per_s, settings.rate_limit_burst, settings.rate_limit_max_clients
        )
        app.add_middleware(RateLimit, buckets=buckets, ipv6_prefix=settings.rate_limit_ipv6_prefix)
    if keys := load_api_keys(settings):
        app.add_middleware(ApiKeyAuth, keys=keys)
    app.add_middleware(RequestMetrics, metrics=metrics, known_paths=lambda: _route_paths(app))
    app.add_middleware(ServerErrors)
    app.add_middleware(RequestId)
    return app
