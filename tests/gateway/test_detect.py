"""/detect end to end against a real tritonserver, compared with a bare ONNX Runtime run."""

from __future__ import annotations

import io

from fastapi.testclient import TestClient
from PIL import Image

from gateway import Settings
from gateway.processing.detection import postprocess_detections
from tests.helpers import direct_run, threshold_for


def test_served_detections_equal_bare_engine(
    client: TestClient, settings: Settings, engines: dict, astronaut_png: bytes
) -> None:
    prediction, box = direct_run(settings, engines["yolov5n"], astronaut_png)
    conf = threshold_for(prediction, 200)
    expected = postprocess_detections(prediction, box, conf, 0.45, settings.detect_max_det)
    assert len(expected.scores) > 0

    response = client.post(
        "/detect",
        params={"conf_threshold": conf, "iou_threshold": 0.45, "model": "yolov5n"},
        files={"file": ("a.png", astronaut_png, "image/png")},
    )
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["model"]["name"] == "yolov5n"
    assert data["image"] == {"width": 512, "height": 512}
    assert [d["class_id"] for d in data["detections"]] == expected.classes.tolist()
    assert [d["score"] for d in data["detections"]] == [float(s) for s in expected.scores]
    assert [list(d["box"]) for d in data["detections"]] == [[float(v) for v in b] for b in expected.boxes]
    for d in data["detections"]:
        x1, y1, x2, y2 = d["box"]
        assert 0 <= x1 <= x2 <= 512 and 0 <= y1 <= y2 <= 512
        assert d["label"]
    assert response.headers["X-Model-Weights"] == "untrained"


def _jpeg(image: Image.Image, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95, **kwargs)
    return buffer.getvalue()


def test_exif_orientation_is_applied(client: TestClient) -> None:
    landscape = Image.new("RGB", (320, 200), (200, 30, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    data = client.post("/detect", files={"file": ("r.jpg", _jpeg(landscape, exif=exif), "image/jpeg")}).json()
    assert data["image"] == {"width": 200, "height": 320}


def test_webp_is_accepted(client: TestClient) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (0, 128, 255)).save(buffer, format="WEBP")
    response = client.post("/detect", files={"file": ("x.webp", buffer.getvalue(), "image/webp")})
    assert response.status_code == 200, response.text
    assert response.json()["image"] == {"width": 64, "height": 48}


def test_a_raw_image_body_is_answered_as_its_multipart_upload(client: TestClient, astronaut_png: bytes) -> None:
    params = {"conf_threshold": 0.01, "model": "yolov5n"}
    multipart = client.post("/detect", params=params, files={"file": ("a.png", astronaut_png, "image/png")})
    raw = client.post("/detect", params=params, content=astronaut_png, headers={"content-type": "image/png"})
    assert raw.status_code == multipart.status_code == 200, raw.text
    assert raw.json() == multipart.json()
