"""/classify end to end against a real tritonserver, compared with a bare ONNX Runtime run."""

from __future__ import annotations

import pytest
import tritonclient.grpc as grpcclient
from fastapi.testclient import TestClient

from gateway import Settings, create_app
from gateway.labels import imagenet
from gateway.processing.classification import top_k
from gateway.processing.images import classify_input
from triton_local import TritonServer

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


@pytest.mark.parametrize("model", ["resnet50_vd", "efficientnet_lite0"])
def test_input_through_shared_memory_answers_as_bare_and_over_grpc(
    client: TestClient, settings: Settings, engines: dict, chelsea_jpeg: bytes, triton: TritonServer, model: str
) -> None:
    s = settings
    crop = classify_input(chelsea_jpeg, s.max_image_pixels, s.max_image_aspect_ratio, 256, 224, s.reduced_decode)
    logits = engines[model].run({"images": crop[None]})["logits"][0]
    expected = [{"class_id": i, "label": imagenet()[i], "probability": p} for i, p in top_k(logits, 10)]
    params = {"model": model, "top_k": 10}
    files = {"file": ("c.jpg", chelsea_jpeg, "image/jpeg")}
    over_grpc = client.post("/classify", params=params, files=files)

    before = _regions(triton)
    enabled = settings.model_copy(update={"triton_shared_memory": True, "triton_shared_memory_regions": 2})
    with TestClient(create_app(enabled)) as shm_client:
        placed = shm_client.post("/classify", params=params, files=files)
        # The crop went through a region of this gateway's own, named for the model's input.
        mine = _regions(triton) - before
        assert len(mine) == 1, mine
    assert over_grpc.status_code == placed.status_code == 200, placed.text
    assert placed.json()["predictions"] == over_grpc.json()["predictions"] == expected
    assert _regions(triton) == before  # unregistered at shutdown


def _regions(triton: TritonServer) -> set[str]:
    status = grpcclient.InferenceServerClient(triton.grpc_url).get_system_shared_memory_status(as_json=True)
    return set(status.get("regions", {}))
