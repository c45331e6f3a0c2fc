"""/detect with the pretrained NanoDet on photos scikit-image ships, against a real tritonserver.

The expected boxes were measured once by eye on the photos (original pixels, x1, y1, x2, y2).
"""

from __future__ import annotations

import io
import pathlib
from collections.abc import Callable

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from skimage import data as skdata

from engine_runtime.engine import OnnxRuntimeEngine
from gateway import Settings
from gateway.catalog import ModelInfo
from gateway.processing.detection import Detections, box_iou, postprocess_detections
from gateway.processing.images import detect_input
from gateway.services import default_detector

CONF = 0.2

PHOTOS: dict[str, tuple[Callable[[], np.ndarray], str, tuple[float, float, float, float]]] = {
    "astronaut": (skdata.astronaut, "person", (20, 15, 365, 512)),
    "coffee": (skdata.coffee, "cup", (172, 18, 412, 305)),
    "chelsea": (skdata.chelsea, "cat", (0, 0, 400, 300)),
    "motorcycle": (lambda: skdata.stereo_motorcycle()[0], "motorcycle", (92, 78, 690, 455)),
}


def _png(name: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(PHOTOS[name][0]()).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def photos() -> dict[str, bytes]:
    return {name: _png(name) for name in PHOTOS}


def bare_nanodet(settings: Settings, engine: OnnxRuntimeEngine, data: bytes, conf: float) -> Detections:
    """The same artifact under ONNX Runtime with the gateway's pre/post code, no Triton."""
    s = settings
    canvas, box = detect_input(data, s.max_image_pixels, s.max_image_aspect_ratio, 416, reduced_decode=s.reduced_decode)
    rows = engine.run({"images": canvas[None]})["detections"][0]
    return postprocess_detections(rows, box, conf, settings.detect_iou_threshold, settings.detect_max_det)


@pytest.mark.parametrize("name", sorted(PHOTOS))
def test_pretrained_nanodet_finds_the_object(client: TestClient, photos: dict[str, bytes], name: str) -> None:
    _, label, expected_box = PHOTOS[name]
    response = client.post(
        "/detect", params={"conf_threshold": CONF}, files={"file": (f"{name}.png", photos[name], "image/png")}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"]["name"] == "nanodet"  # the default: the detector with real weights
    assert body["model"]["weights"] == "pretrained"
    assert response.headers["X-Model-Weights"] == "pretrained"
    found = [d for d in body["detections"] if d["label"] == label]
    assert found, f"no {label} in {[(d['label'], round(d['score'], 2)) for d in body['detections']]}"
    ious = box_iou(np.array(expected_box, dtype=np.float32), np.array([d["box"] for d in found], dtype=np.float32))
    assert ious.max() >= 0.5, (label, found, ious)


@pytest.mark.parametrize("name", sorted(PHOTOS))
def test_served_nanodet_equals_bare_engine(
    client: TestClient, settings: Settings, engines: dict, photos: dict[str, bytes], name: str
) -> None:
    expected = bare_nanodet(settings, engines["nanodet"], photos[name], CONF)
    assert len(expected.scores) > 0
    response = client.post(
        "/detect",
        params={"conf_threshold": CONF, "model": "nanodet"},
        files={"file": (f"{name}.png", photos[name], "image/png")},
    )
    data = response.json()
    assert [d["class_id"] for d in data["detections"]] == expected.classes.tolist()
    assert [d["score"] for d in data["detections"]] == [float(s) for s in expected.scores]
    assert [list(d["box"]) for d in data["detections"]] == [[float(v) for v in b] for b in expected.boxes]


def test_yolov5n_is_still_selectable(client: TestClient, photos: dict[str, bytes]) -> None:
    response = client.post("/detect", params={"model": "yolov5n"}, files={"file": ("a.png", photos["chelsea"])})
    assert response.status_code == 200, response.text
    assert response.json()["model"]["name"] == "yolov5n"
    assert response.headers["X-Model-Weights"] == "untrained"


def test_unknown_detect_model_is_404(client: TestClient, photos: dict[str, bytes]) -> None:
    response = client.post("/detect", params={"model": "nope"}, files={"file": ("a.png", photos["chelsea"])})
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "unknown_model"
    assert "nanodet" in response.json()["error"]["message"]


def _info(name: str, weights: str) -> ModelInfo:
    return ModelInfo(name=name, task="detect", weights=weights)


def test_default_detector_prefers_real_weights() -> None:
    assert default_detector([_info("yolov5n", "untrained"), _info("nanodet", "pretrained")]) == "nanodet"
    assert default_detector([_info("nanodet", "pretrained"), _info("yolov5n", "checkpoint")]) == "yolov5n"
    assert default_detector([_info("yolov5n", "untrained"), _info("nanodet", "unknown")]) == "yolov5n"


def test_readme_example_photo_finds_a_person_with_default_settings(client: TestClient) -> None:
    """README's first /detect curl: the bundled ``examples/astronaut.jpg``, default model and thresholds."""
    photo = pathlib.Path(__file__).resolve().parents[2] / "examples" / "astronaut.jpg"
    response = client.post("/detect", files={"file": ("astronaut.jpg", photo.read_bytes(), "image/jpeg")})
    assert response.status_code == 200, response.text
    people = [d for d in response.json()["detections"] if d["label"] == "person"]
    assert people
    iou = box_iou(np.array(PHOTOS["astronaut"][2], dtype=np.float32), np.array([d["box"] for d in people]))
    assert iou.max() >= 0.5
