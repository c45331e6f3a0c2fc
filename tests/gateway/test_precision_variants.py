"""Precision variants served side by side: built by the CLI, loaded by a real tritonserver, chosen with
``?model=`` on /classify, /qa and /detect; each served answer equals its own bare engine's."""

from __future__ import annotations

import json
import pathlib
import shutil
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from engine_runtime.engine import OnnxRuntimeEngine
from gateway import Settings, create_app
from gateway.labels import imagenet
from gateway.processing.classification import top_k
from gateway.processing.detection import postprocess_detections
from gateway.processing.images import decode_image, resize_center_crop
from magicmind_build import cli
from magicmind_build.datasets import qa_pairs, set_sha256, write_qa
from tests.helpers import SHORT, direct_answers, direct_run, threshold_for, triton_config
from triton_local import TritonServer

VARIANTS = {  # served model -> (task, precision)
    "resnet50_vd_fp16": ("classify", "fp16"),
    "resnet50_vd_int8": ("classify", "int8"),
    "bert_qa_int8": ("qa", "int8"),
    "yolov5n_fp16": ("detect", "fp16"),
}


@pytest.fixture(scope="module")
def calibration(tmp_path_factory: pytest.TempPathFactory, chelsea_jpeg: bytes, astronaut_png: bytes) -> dict:
    root = tmp_path_factory.mktemp("calibration")
    images = root / "images"
    images.mkdir()
    (images / "a.jpg").write_bytes(chelsea_jpeg)
    (images / "b.png").write_bytes(astronaut_png)
    qa = write_qa(root / "qa.jsonl", qa_pairs(4, 7, ("Ada", "Alan"), ("Lovelace", "Turing")))
    return {"images": images, "qa": qa}


@pytest.fixture(scope="module")
def variant_repo(model_repo: pathlib.Path, tmp_path_factory: pytest.TempPathFactory, calibration: dict) -> pathlib.Path:
    """bert_qa, resnet50_vd and yolov5n (tiny, as the suite builds them) plus variants built by the CLI."""
    repo = tmp_path_factory.mktemp("variants") / "repo"
    for name in ("bert_qa", "resnet50_vd", "yolov5n"):
        shutil.copytree(model_repo / name, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
    common = ["--repo", str(repo), "--size", "tiny", "--calibration-count", "4"]
    images, qa = f"resnet50_vd={calibration['images']}", f"bert_qa={calibration['qa']}"
    assert cli.main([*common, "--models", "resnet50_vd", "bert_qa", "--precision", "fp16,int8",
                     "--calibration", images, "--calibration", qa]) == 0  # fmt: skip
    assert cli.main([*common, "--models", "yolov5n", "--precision", "fp16"]) == 0
    shutil.rmtree(repo / "bert_qa_fp16")  # not served here: fewer models for Triton to load
    return repo


@pytest.fixture(scope="module")
def variant_client(variant_repo: pathlib.Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    log = tmp_path_factory.mktemp("triton_variants") / "tritonserver.log"
    with TritonServer(triton_config(variant_repo, log)) as server:
        settings = Settings(
            triton_url=server.grpc_url,
            model_repository=variant_repo,
            detect_models=["yolov5n"],
            classify_models=["resnet50_vd"],
            health_probe_interval_s=0,
            latency_budget_s=0,
            _env_file=None,  # type: ignore[call-arg]
        )
        with TestClient(create_app(settings)) as client:
            yield client


@pytest.fixture(scope="module")
def defaults() -> Settings:
    """The gateway's default settings (the preprocessing the served answers went through)."""
    return Settings(_env_file=None)  # type: ignore[call-arg]


def bare(repo: pathlib.Path, name: str) -> OnnxRuntimeEngine:
    return OnnxRuntimeEngine(repo / name / "1" / "model.onnx")


@pytest.mark.parametrize("model", ["resnet50_vd", "resnet50_vd_fp16", "resnet50_vd_int8"])
def test_classify_variant_equals_its_bare_engine(
    variant_client: TestClient, variant_repo: pathlib.Path, defaults: Settings, chelsea_jpeg: bytes, model: str
) -> None:
    crop = resize_center_crop(decode_image(chelsea_jpeg, defaults.max_image_pixels), 256, 224)
    logits = bare(variant_repo, model).run({"images": crop[None]})["logits"][0]
    expected = [{"class_id": i, "label": imagenet()[i], "probability": p} for i, p in top_k(logits, 10)]
    response = variant_client.post(
        "/classify", params={"model": model, "top_k": 10}, files={"file": ("c.jpg", chelsea_jpeg, "image/jpeg")}
    )
    assert response.status_code == 200, response.text
    assert response.json()["predictions"] == expected
    assert response.json()["model"]["name"] == model


def test_int8_differs_from_fp32(variant_repo: pathlib.Path, defaults: Settings, chelsea_jpeg: bytes) -> None:
    """The variant is a different engine, not a copy of the FP32 one."""
    crop = resize_center_crop(decode_image(chelsea_jpeg, defaults.max_image_pixels), 256, 224)[None]
    fp32 = bare(variant_repo, "resnet50_vd").run({"images": crop})["logits"]
    int8 = bare(variant_repo, "resnet50_vd_int8").run({"images": crop})["logits"]
    assert (fp32 != int8).any()


@pytest.mark.parametrize("model", ["bert_qa", "bert_qa_int8"])
def test_qa_variant_equals_its_bare_engine(
    variant_client: TestClient, variant_repo: pathlib.Path, defaults: Settings, model: str
) -> None:
    response = variant_client.post("/qa", params={"model": model}, json={**SHORT, "top_k": 5})
    assert response.status_code == 200, response.text
    expected = direct_answers(defaults, bare(variant_repo, model), SHORT["question"], SHORT["context"], 5)
    assert expected
    assert response.json()["answers"] == expected
    assert response.json()["model"]["name"] == model


def test_detect_variant_equals_its_bare_engine(
    variant_client: TestClient, variant_repo: pathlib.Path, defaults: Settings, astronaut_png: bytes
) -> None:
    prediction, box = direct_run(defaults, bare(variant_repo, "yolov5n_fp16"), astronaut_png)
    conf = threshold_for(prediction, 100)
    expected = postprocess_detections(prediction, box, conf, 0.45, defaults.detect_max_det)
    assert len(expected.scores) > 0
    response = variant_client.post(
        "/detect",
        params={"conf_threshold": conf, "model": "yolov5n_fp16"},
        files={"file": ("a.png", astronaut_png, "image/png")},
    )
    assert response.status_code == 200, response.text
    assert [d["score"] for d in response.json()["detections"]] == [float(s) for s in expected.scores]
    assert [d["class_id"] for d in response.json()["detections"]] == expected.classes.tolist()


def test_models_report_precision_and_calibration(
    variant_client: TestClient, variant_repo: pathlib.Path, calibration: dict
) -> None:
    data = variant_client.get("/models").json()
    models = {m["name"]: m for m in data["models"]}
    assert set(VARIANTS) <= set(models)
    for name, (task, precision) in VARIANTS.items():
        assert models[name]["ready"], models[name]
        assert models[name]["task"] == task
        assert models[name]["precision"] == precision
        assert models[name]["base_model"] == name.rsplit("_", 1)[0]
    assert models["resnet50_vd"]["precision"] == "fp32"
    assert models["resnet50_vd"]["calibration"] is None
    assert models["yolov5n_fp16"]["calibration"] is None
    cal = models["resnet50_vd_int8"]["calibration"]
    assert cal == {
        "method": "minmax",
        "sha256": set_sha256(calibration["images"], 2),
        "count": 2,
        "source": str(calibration["images"]),
    }
    assert models["bert_qa_int8"]["calibration"]["sha256"] == set_sha256(calibration["qa"], 4)
    assert data["defaults"] == {"qa": "bert_qa", "detect": "yolov5n", "classify": "resnet50_vd"}
    manifest = json.loads((variant_repo / "resnet50_vd_int8" / "1" / "manifest.json").read_text())
    assert manifest["calibration"] == cal


@pytest.mark.parametrize(
    ("route", "kwargs"),
    [
        ("/qa", {"json": SHORT}),
        ("/classify", {"files": {"file": ("c.png", b"x", "image/png")}}),
        ("/detect", {"files": {"file": ("c.png", b"x", "image/png")}}),
    ],
)
def test_unbuilt_variant_is_404(variant_client: TestClient, route: str, kwargs: dict) -> None:
    response = variant_client.post(route, params={"model": "resnet50_vd_fp8"}, **kwargs)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "unknown_model"
