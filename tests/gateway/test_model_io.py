"""Model tensor sizes come from the served configuration; settings that disagree stop start-up (unit tier)."""

from __future__ import annotations

import io
import pathlib
import shutil

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from gateway import Settings, create_app
from gateway.errors import TritonUnavailable
from gateway.model_io import ModelIO, ShapeMismatch, read_model_io, resolve
from gateway.triton import TritonClient
from tests.fakes import ROOT, UNAVAILABLE, FakeTritonGrpc, grpc_error

pytestmark = pytest.mark.unit


def settings_for(repository: pathlib.Path | None, **overrides: object) -> Settings:
    return Settings(
        model_repository=repository,
        health_probe_interval_s=0,
        latency_budget_s=0,
        model_config_wait_s=0.5,
        _env_file=None,  # type: ignore[call-arg]
        **overrides,  # type: ignore[arg-type]
    )


def app_over(fake: FakeTritonGrpc, settings: Settings) -> TestClient:
    return TestClient(create_app(settings, triton_client=lambda: TritonClient.from_settings(settings, fake)))


def jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((300, 400, 3), 90, np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()


def test_the_repository_configs_give_every_served_size() -> None:
    sizes = {name: read_model_io(ROOT / "triton_repo", name) for name in ("bert_qa", "resnet50_vd", "yolov5n")}
    assert all(isinstance(v, ModelIO) for v in sizes.values())
    assert sizes["bert_qa"].seq_len() == 128 and sizes["bert_qa"].max_batch_size == 64  # type: ignore[union-attr]
    assert sizes["resnet50_vd"].image_size() == 224  # type: ignore[union-attr]
    assert sizes["yolov5n"].image_size() == 640  # type: ignore[union-attr]
    assert read_model_io(ROOT / "triton_repo", "no_such_model") is None


def test_a_setting_that_disagrees_names_both_values() -> None:
    assert resolve("classify_crop", None, 224, "resnet50_vd") == 224
    assert resolve("classify_crop", 224, 224, "resnet50_vd") == 224
    with pytest.raises(ShapeMismatch, match=r"GATEWAY_QA_MAX_SEQ_LEN=256 .* bert_qa is served with 128"):
        resolve("qa_max_seq_len", 256, 128, "bert_qa")


@pytest.mark.parametrize("override", [{"qa_max_seq_len": 256}, {"classify_crop": 256}, {"classify_resize": 200}])
def test_the_gateway_refuses_to_start_on_a_mismatch(override: dict[str, int]) -> None:
    with pytest.raises(ShapeMismatch), app_over(FakeTritonGrpc(), settings_for(ROOT / "triton_repo", **override)):
        pass


def test_without_the_repository_sizes_come_from_triton(tmp_path: pathlib.Path) -> None:
    repo = tmp_path / "served"  # what Triton serves: resnet50_vd at 160 pixels
    shutil.copytree(ROOT / "triton_repo", repo, ignore=shutil.ignore_patterns("*.onnx", "manifest.json", "1"))
    config = repo / "resnet50_vd" / "config.pbtxt"
    config.write_text(config.read_text().replace("dims: [ 224, 224, 3 ]", "dims: [ 160, 160, 3 ]"))
    fake = FakeTritonGrpc(repo)
    with app_over(fake, settings_for(None)) as client:
        response = client.post("/classify", files={"file": ("x.jpg", jpeg(), "image/jpeg")})
    assert response.status_code == 200, response.text
    assert fake.calls[-1].inputs["images"].shape == (1, 160, 160, 3)


def test_without_repository_or_triton_start_up_fails_after_the_wait() -> None:
    fake = FakeTritonGrpc()
    fake.config = lambda model: (_ for _ in ()).throw(grpc_error(UNAVAILABLE, "connection refused"))  # type: ignore[method-assign]
    with pytest.raises(TritonUnavailable, match="model_config_wait_s"), app_over(fake, settings_for(None)):
        pass
