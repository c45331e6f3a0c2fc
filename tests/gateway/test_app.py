"""The whole app over the FAKE gRPC client (unit tier): routing, error mapping to HTTP, headers.

The real Triton client runs (retry, error mapping); only the gRPC client under it is the labelled
fake of tests/fakes.py. The same paths against a real tritonserver: tests/gateway/test_classify.py,
test_errors.py, test_resilience.py and tests/reliability/test_overload.py.
"""

from __future__ import annotations

import gc
import io
from collections.abc import Iterator, Mapping

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from gateway import Settings, create_app
from gateway.triton import TritonClient
from tests.fakes import DEADLINE_EXCEEDED, INTERNAL, ROOT, UNAVAILABLE, FakeTritonGrpc, grpc_error

pytestmark = pytest.mark.unit

TABBY = 281


def tabby_logits(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    logits = np.zeros((len(inputs["images"]), 1000), np.float32)
    logits[:, TABBY] = 10.0
    return {"logits": logits}


def qa_logits(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Points every window's best span at the tokens 'ada lovelace' (found by their ids)."""
    ids = inputs["input_ids"]
    start = np.full(ids.shape, -10.0, np.float32)
    end = np.full(ids.shape, -10.0, np.float32)
    for row, tokens in enumerate(ids):
        (first,) = np.nonzero(tokens == ADA_ID)[0][-1:]
        start[row, first] = 10.0
        end[row, first + 2] = 10.0  # ada love ##lace
    return {"start_logits": start, "end_logits": end}


ADA_ID = 15262  # "ada" in bert-base-uncased


@pytest.fixture
def fake() -> FakeTritonGrpc:
    return FakeTritonGrpc(responders={"resnet50_vd": tabby_logits, "bert_qa": qa_logits})


@pytest.fixture
def app_client(fake: FakeTritonGrpc) -> Iterator[TestClient]:
    settings = Settings(
        model_repository=ROOT / "triton_repo",
        health_probe_interval_s=0,
        latency_budget_s=0,
        triton_retries=1,
        triton_retry_backoff_s=0.001,
        _env_file=None,  # type: ignore[call-arg]
    )
    app = create_app(settings, triton_client=lambda: TritonClient.from_settings(settings, grpc_client=fake))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client
    assert fake.closed  # the lifespan closed the client


@pytest.fixture(scope="module")
def jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((300, 400, 3), 128, np.uint8)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def test_classify_answers_from_the_model_outputs(app_client: TestClient, fake: FakeTritonGrpc, jpeg: bytes) -> None:
    response = app_client.post("/classify?top_k=3", files={"file": ("x.jpg", jpeg, "image/jpeg")})
    assert response.status_code == 200, response.text
    best = response.json()["predictions"][0]
    assert best["class_id"] == TABBY and best["label"] == "tabby" and best["probability"] > 0.9
    (call,) = fake.calls
    assert call.model == "resnet50_vd" and call.inputs["images"].shape == (1, 224, 224, 3)
    assert call.request_id == response.headers["x-request-id"]


def test_qa_decodes_the_span_the_logits_point_at(app_client: TestClient) -> None:
    body = {"question": "Who wrote the report?", "context": "The report was written by Ada Lovelace in 1843."}
    response = app_client.post("/qa", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["answer"] == "Ada Lovelace"


@pytest.mark.parametrize(
    ("error", "status", "code", "calls"),
    [
        (grpc_error(UNAVAILABLE, "Exceeds maximum queue size"), 503, "overloaded", 1),
        (grpc_error(UNAVAILABLE, "failed to connect to all addresses; 10.0.0.7:8001"), 503, "triton_unavailable", 2),
        (grpc_error(DEADLINE_EXCEEDED, "Deadline Exceeded"), 504, "upstream_timeout", 1),
        (grpc_error(INTERNAL, "onnxruntime: bad alloc at 10.0.0.7"), 502, "inference_failed", 1),
    ],
)
def test_triton_failures_map_to_json_errors_without_internals(
    app_client: TestClient,
    fake: FakeTritonGrpc,
    jpeg: bytes,
    error: Exception,
    status: int,
    code: str,
    calls: int,
) -> None:
    fake.fail_next(*[error] * calls)  # type: ignore[arg-type]
    response = app_client.post("/classify", files={"file": ("x.jpg", jpeg, "image/jpeg")})
    assert response.status_code == status
    body = response.json()
    assert body["error"]["code"] == code
    assert "10.0.0.7" not in response.text and "StatusCode" not in response.text
    assert response.headers["x-request-id"]
    if code == "overloaded":
        assert int(response.headers["retry-after"]) >= 1
    assert len(fake.calls) == calls  # only the outage was retried (triton_retries=1)
    metrics = app_client.get("/metrics").text
    assert f'gateway_errors_total{{code="{code}",route="/classify"}} 1.0' in metrics


def test_bad_input_is_refused_before_triton(app_client: TestClient, fake: FakeTritonGrpc) -> None:
    response = app_client.post("/classify", files={"file": ("x.jpg", b"not an image", "image/jpeg")})
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_image"
    response = app_client.post("/classify?model=nope", files={"file": ("x.jpg", b"x", "image/jpeg")})
    assert response.status_code == 404 and response.json()["error"]["code"] == "unknown_model"
    assert fake.calls == []


def test_readyz_follows_the_server(app_client: TestClient, fake: FakeTritonGrpc) -> None:
    assert app_client.get("/readyz").status_code == 200
    fake.server_is_ready = False
    response = app_client.get("/readyz")
    assert response.status_code == 503


def test_a_raw_jpeg_body_is_classified_like_its_upload(
    app_client: TestClient, fake: FakeTritonGrpc, jpeg: bytes
) -> None:
    raw = app_client.post("/classify?top_k=3", content=jpeg, headers={"content-type": "image/jpeg"})
    upload = app_client.post("/classify?top_k=3", files={"file": ("x.jpg", jpeg, "image/jpeg")})
    assert raw.status_code == upload.status_code == 200, raw.text
    assert raw.json() == upload.json()
    assert np.array_equal(fake.calls[0].inputs["images"], fake.calls[1].inputs["images"])
    # Counted per route and status (the labelled children are cached: the second request adds to the first).
    metrics = app_client.get("/metrics").text
    assert 'gateway_requests_total{route="/classify",status="200"} 2.0' in metrics
    assert 'gateway_request_seconds_count{route="/classify"} 2.0' in metrics


def test_start_up_freezes_what_it_built_out_of_the_collector(fake: FakeTritonGrpc) -> None:
    gc.unfreeze()  # another app of this process may have frozen already
    settings = Settings(model_repository=ROOT / "triton_repo", health_probe_interval_s=0, _env_file=None)  # type: ignore[call-arg]
    app = create_app(settings, triton_client=lambda: TritonClient.from_settings(settings, grpc_client=fake))
    assert gc.get_freeze_count() == 0
    with TestClient(app):
        assert gc.get_freeze_count() > 0
    assert gc.get_freeze_count() == 0  # shut down: collectable again


def test_routing_answers_of_the_flat_routes(app_client: TestClient) -> None:
    """The routers' routes sit directly in the app's router (gateway.app): matching answers as FastAPI's did."""
    from fastapi.routing import APIRoute

    from gateway.routes import classify, detect, health, qa

    app_routes = app_client.app.router.routes  # type: ignore[attr-defined]
    for module in (qa, detect, classify, health):
        assert all(route in app_routes and isinstance(route, APIRoute) for route in module.router.routes)
    wrong_method = app_client.get("/qa")
    assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "POST"
    assert wrong_method.json() == {"error": {"code": "http_error", "message": "Method Not Allowed"}}
    unknown = app_client.get("/nope")
    assert unknown.status_code == 404 and unknown.json() == {"error": {"code": "http_error", "message": "Not Found"}}
    slash = app_client.get("/healthz/", follow_redirects=False)
    assert slash.status_code == 307 and slash.headers["location"] == "http://testserver/healthz"
    assert app_client.get("/healthz").json() == {"status": "ok"}
    metrics = app_client.get("/metrics").text
    assert 'gateway_requests_total{route="/qa",status="405"} 1.0' in metrics
    assert 'gateway_requests_total{route="unmatched",status="404"} 1.0' in metrics


def test_fastapis_own_opentelemetry_stays_off(fake: FakeTritonGrpc, monkeypatch: pytest.MonkeyPatch) -> None:
    """gateway.app turns FastAPI's native OpenTelemetry off unless GATEWAY_OPENTELEMETRY: even a configured
    provider is never asked.

    The control (a plain FastAPI app asks it) fails when FastAPI changes how it finds the provider, so an
    upgrade cannot silently make the gateway's setting meaningless.
    """
    from fastapi import FastAPI
    from opentelemetry import trace

    asked: list[str] = []

    class RecordingProvider(trace.TracerProvider):
        def get_tracer(self, instrumenting_module_name: str, *args: object, **kwargs: object) -> trace.Tracer:
            asked.append(instrumenting_module_name)
            return trace.NoOpTracer()

    monkeypatch.setattr(trace, "get_tracer_provider", RecordingProvider)  # as if an SDK had configured one
    plain = FastAPI()
    plain.get("/ping")(lambda: "pong")
    with TestClient(plain) as client:
        assert client.get("/ping").status_code == 200
    assert asked, "FastAPI no longer asks the global tracer provider: re-check gateway.app's telemetry setting"

    asked.clear()
    settings = Settings(model_repository=ROOT / "triton_repo", health_probe_interval_s=0, _env_file=None)  # type: ignore[call-arg]
    app = create_app(settings, triton_client=lambda: TritonClient.from_settings(settings, grpc_client=fake))
    with TestClient(app) as client:
        assert client.get("/healthz").status_code == 200
        assert client.post("/qa", json={"question": "Who?", "context": "Ada wrote it."}).status_code == 200
    assert asked == []

    # GATEWAY_OPENTELEMETRY=true: FastAPI's instrumentation is back and asks the configured provider.
    traced = settings.model_copy(update={"opentelemetry": True})
    app = create_app(traced, triton_client=lambda: TritonClient.from_settings(traced, grpc_client=fake))
    with TestClient(app) as client:
        assert client.get("/healthz").status_code == 200
    assert asked
