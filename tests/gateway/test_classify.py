"""/classify end to end against a real tritonserver, compared with a bare ONNX Runtime run."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from gateway import Settings
from gateway.labels import imagenet
from gateway.processing.classification import top_k
from gateway.processing.images import classify_input

CATS = {"tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"}


@pytest.mark.parametrize("model", ["resnet50_vd", "efficientnet_lite0"])
def test_served_top_k_equals_bare_engine(
    client: TestClient, settings: Settings, engines: dict, chelsea_jpeg: bytes, model: str
) -> None:
    s = settings
    crop = classify_input(chelsea_jpeg, s.max_image_pixels, s.max_image_aspect_ratio, 256, 224, s.reduced_decode)
    logits = engines[model].run({"images": crop[None]})["logits"][0]
    expected = [{"class_id": i, "label": imagenet()[i], "probability": p} for i, p in top_k(logits, 10)]

    response = client.post(
        "/classify", params={"model": model, "top_k": 10}, files={"file": ("c.jpg", chelsea_jpeg, "image/jpeg")}
    )
    assert response.status_code == 200, response.text
    assert response.json()["predictions"] == expected
    assert response.json()["model"]["name"] == model


def test_pretrained_efficientnet_sees_a_cat(client: TestClient, chelsea_jpeg: bytes) -> None:
    response = client.post(
        "/classify",
        params={"model": "efficientnet_lite0", "top_k": 3},
        files={"file": ("c.jpg", chelsea_jpeg, "image/jpeg")},
    )
    labels = [p["label"] for p in response.json()["predictions"]]
    assert CATS & set(labels), labels
    assert response.headers["X-Model-Weights"] == "pretrained"


def test_default_model_is_resnet50_vd(client: TestClient, chelsea_jpeg: bytes, settings: Settings) -> None:
    data = client.post("/classify", files={"file": ("c.jpg", chelsea_jpeg, "image/jpeg")}).json()
    assert data["model"]["name"] == "resnet50_vd"
    assert len(data["predictions"]) == settings.classify_top_k
    probabilities = [p["probability"] for p in data["predictions"]]
    assert probabilities == sorted(probabilities, reverse=True)


def test_a_raw_image_body_is_answered_as_its_multipart_upload(client: TestClient, chelsea_jpeg: bytes) -> None:
    params = {"model": "efficientnet_lite0", "top_k": 5}
    multipart = client.post("/classify", params=params, files={"file": ("c.jpg", chelsea_jpeg, "image/jpeg")})
    raw = client.post("/classify", params=params, content=chelsea_jpeg, headers={"content-type": "image/jpeg"})
    assert raw.status_code == multipart.status_code == 200, raw.text
    assert raw.json() == multipart.json()
