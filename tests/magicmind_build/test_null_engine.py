"""The benchmark-only null engine: real output names/shapes/dtypes, zeros, labelled, refused by default."""

from __future__ import annotations

import pathlib
import shutil
import urllib.request
from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient

from engine_runtime.engine import NULL_ENGINE_ENV, EngineError, NullEngine, load_engine
from engine_runtime.manifest import Manifest
from gateway import Settings, create_app
from magicmind_build.cli import main as build_main
from magicmind_build.specs import SPECS
from tests.helpers import ROOT, triton_config
from triton_local import TritonServer, TritonServerError


@pytest.fixture(scope="module")
def null_repo(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    repo = tmp_path_factory.mktemp("null") / "repo"
    shutil.copytree(ROOT / "triton_repo", repo, ignore=shutil.ignore_patterns("*.onnx", "manifest.json", "__pycache__"))
    assert build_main(["--repo", str(repo), "--size", "tiny", "--null-engine"]) == 0
    return repo


@pytest.mark.parametrize("name", sorted(SPECS))
def test_null_manifest_is_labelled_and_has_the_real_signature(
    null_repo: pathlib.Path, model_repo: pathlib.Path, name: str
) -> None:
    null = Manifest.read(null_repo / name / "1")
    real = Manifest.read(model_repo / name / "1")
    assert null.engine_format is None and null.null
    assert (null.precision, null.weights, null.trained) == ("none", "none", False)
    assert (null.inputs, null.outputs) == (real.inputs, real.outputs)
    assert not list((null_repo / name / "1").glob("*.onnx"))


def test_null_engine_is_refused_unless_allowed(null_repo: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(NULL_ENGINE_ENV, raising=False)
    manifest = Manifest.read(null_repo / "yolov5n" / "1")
    with pytest.raises(EngineError, match=NULL_ENGINE_ENV):
        load_engine(null_repo / "yolov5n" / "1" / "model.onnx", manifest)
    monkeypatch.setenv(NULL_ENGINE_ENV, "0")
    with pytest.raises(EngineError):
        NullEngine.from_manifest(manifest)


def test_null_engine_answers_zeros_of_the_real_shapes(null_repo: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(NULL_ENGINE_ENV, "1")
    manifest = Manifest.read(null_repo / "bert_qa" / "1")
    engine = load_engine(null_repo / "bert_qa" / "1" / manifest.engine_file, manifest)
    assert isinstance(engine, NullEngine) and "NULL" in engine.description
    for rows in (3, 1, 5):
        ids = np.ones((rows, 128), np.int64)
        out = engine.run({"input_ids": ids, "attention_mask": ids, "token_type_ids": ids})
        assert sorted(out) == ["end_logits", "start_logits"]
        assert all(a.shape == (rows, 128) and a.dtype == np.float32 and not a.any() for a in out.values())


def test_a_later_real_build_replaces_a_null_manifest(null_repo: pathlib.Path) -> None:
    from magicmind_build.cli import _up_to_date

    assert not _up_to_date(null_repo / "resnet50_vd" / "1", "tiny", None)


@pytest.fixture(scope="module")
def null_triton(null_repo: pathlib.Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    log = tmp_path_factory.mktemp("null_triton") / "tritonserver.log"
    config = triton_config(null_repo, log)
    config.env = {NULL_ENGINE_ENV: "1"}
    with TritonServer(config) as server:
        yield server


def test_triton_refuses_null_engines_unless_allowed(null_repo: pathlib.Path, tmp_path: pathlib.Path) -> None:
    log = tmp_path / "tritonserver.log"
    config = triton_config(null_repo, log)
    config.startup_timeout_s = 120
    with pytest.raises(TritonServerError, match="failed to load"), TritonServer(config):
        pass
    assert f"refusing a null engine (benchmark only, outputs are zeros); set {NULL_ENGINE_ENV}=1" in log.read_text()


def test_served_null_engines_are_labelled_and_count_engine_time(
    null_triton: TritonServer, null_repo: pathlib.Path, chelsea_jpeg: bytes
) -> None:
    settings = Settings(triton_url=null_triton.grpc_url, model_repository=null_repo, _env_file=None)  # type: ignore[call-arg]
    with TestClient(create_app(settings)) as client:
        models = {m["name"]: m for m in client.get("/models").json()["models"]}
        assert all(m["ready"] and m["engine_format"] is None and m["precision"] == "none" for m in models.values())
        assert all(m["weights"] == "none" for m in models.values())
        response = client.post("/classify", files={"file": ("c.jpg", chelsea_jpeg, "image/jpeg")})
        assert response.status_code == 200, response.text
        assert response.headers["X-Model-Weights"] == "none"
        # Zero logits: every class equally likely.
        probabilities = [p["probability"] for p in response.json()["predictions"]]
        assert probabilities == pytest.approx([1 / 1000] * len(probabilities))
    with urllib.request.urlopen(null_triton.metrics_url) as metrics:
        text = metrics.read().decode()
    assert 'mm_engine_cpu_us{model="resnet50_vd"}' in text
    assert 'mm_engine_wall_us{model="resnet50_vd"}' in text
