"""MagicMind builds: the BuilderConfig written next to each ONNX artifact, and ``.mm`` builds through the SDK,
checked against the labelled FAKE SDK (``tests/engine_runtime/fake_magicmind.py``) and, by the same tests,
against the real SDK where it is importable."""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re
import shutil
import sys
import types

import numpy as np
import pytest

from engine_runtime.engine import EngineError
from engine_runtime.manifest import Manifest
from magicmind_build import datasets
from magicmind_build.build import sha256_file
from magicmind_build.cli import main
from magicmind_build.magicmind import (
    CONFIG_FILE,
    CalibrationSettings,
    MagicMindBuildError,
    build_magicmind,
    build_magicmind_engine,
    builder_config,
    magicmind_sdk,
    onnx_input_names,
)
from magicmind_build.precision import calibration_batches, preprocess_image
from magicmind_build.specs import SPECS
from tests.engine_runtime import fake_magicmind
from tests.helpers import ROOT


def _copy(model_repo: pathlib.Path, tmp_path: pathlib.Path, name: str) -> pathlib.Path:
    out_dir = tmp_path / name
    shutil.copytree(model_repo / name / "1", out_dir)
    return out_dir


@pytest.mark.parametrize("precision,mode", [("fp32", "force_float32"), ("fp16", "force_float16")])
def test_builder_config_for_an_image_model(precision: str, mode: str) -> None:
    config = builder_config(SPECS["yolov5n"], precision)
    assert config == {
        "archs": ["mtp_372"],
        "graph_shape_mutable": True,
        # batch 1..16 = yolov5n's Triton max_batch_size; the graph takes uint8 NHWC, so no layout conversion
        "dim_range": {"0": {"min": [1, 640, 640, 3], "max": [16, 640, 640, 3]}},
        "precision_config": {"precision_mode": mode},
    }


def test_builder_config_for_bert_int8() -> None:
    config = builder_config(SPECS["bert_qa"], "int8", CalibrationSettings(weight_quant_granularity="per_axis"))
    assert config["precision_config"] == {
        "precision_mode": "qint8_mixed_float16",
        "activation_quant_algo": "symmetric",
        "weight_quant_granularity": "per_axis",
    }
    assert config["opt_config"] == {"type64to32_conversion": True}  # int64 token ids, as the reference builds BERT
    assert config["dim_range"] == {str(i): {"min": [1, 128], "max": [64, 128]} for i in range(3)}
    assert "convert_input_layout" not in config


def test_builder_config_converts_a_channels_first_input_only() -> None:
    nchw = dataclasses.replace(SPECS["resnet50_vd"], name="resnet_nchw")
    config = builder_config(nchw, inputs={"images": {"dtype": "float32", "shape": [-1, 3, 224, 224]}})
    assert config["convert_input_layout"] == {"0": {"src": "NCHW", "dst": "NHWC"}}
    assert config["dim_range"]["0"] == {"min": [1, 3, 224, 224], "max": [32, 3, 224, 224]}
    assert "convert_input_layout" not in builder_config(SPECS["resnet50_vd"])


def test_builder_config_refuses_what_magicmind_cannot_build() -> None:
    with pytest.raises(ValueError, match="precision 'int4'"):
        builder_config(SPECS["yolov5n"], "int4")
    with pytest.raises(ValueError, match="are not bert_qa's inputs"):
        builder_config(SPECS["bert_qa"], inputs={"input_ids": {"dtype": "int64", "shape": [-1, 128]}})
    with pytest.raises(ValueError, match="eqnm algorithm applies to symmetric"):
        CalibrationSettings(algorithm="eqnm", activation_quant_algo="asymmetric")


def test_batch_range_is_tritons_max_batch_size() -> None:
    for name, spec in SPECS.items():
        text = (ROOT / "triton_repo" / name / "config.pbtxt").read_text()
        max_batch = int(re.search(r"^max_batch_size: (\d+)", text, re.M).group(1))  # type: ignore[union-attr]
        assert spec.batch_range == (1, max_batch), name


@pytest.mark.parametrize("name", sorted(SPECS))
def test_every_onnx_artifact_has_its_builder_config(model_repo: pathlib.Path, name: str) -> None:
    version = model_repo / name / "1"
    manifest = Manifest.read(version)
    assert manifest.engine_format == "onnx" and manifest.magicmind_config == CONFIG_FILE
    written = json.loads((version / CONFIG_FILE).read_text())
    assert written == builder_config(SPECS[name], manifest.precision, inputs=manifest.inputs)
    # dim_range is indexed by the graph's input order (the spec's), whatever order the manifest lists them in
    assert onnx_input_names(version / "model.onnx") == list(SPECS[name].input_names)
    for index, input_name in enumerate(onnx_input_names(version / "model.onnx")):
        assert written["dim_range"][str(index)]["min"][1:] == manifest.inputs[input_name]["shape"][1:]


@pytest.mark.parametrize("name", sorted(SPECS))
def test_written_config_parses_in_the_sdk(model_repo: pathlib.Path, mm_sdk: types.ModuleType, name: str) -> None:
    config = mm_sdk.BuilderConfig()
    status = config.parse_from_string((model_repo / name / "1" / CONFIG_FILE).read_text())
    assert status.ok(), str(status)


def test_build_calls_the_sdk_in_order(
    model_repo: pathlib.Path, tmp_path: pathlib.Path, fake_mm: types.ModuleType
) -> None:
    out_dir = _copy(model_repo, tmp_path, "resnet50_vd")
    built = build_magicmind_engine(Manifest.read(out_dir), out_dir)
    calls = fake_magicmind.CALLS
    assert [c[0] for c in calls] == [
        "Parser.parse",
        "BuilderConfig.parse_from_string",
        "Builder.build_model",
        "Model.serialize_to_file",
    ]
    assert calls[0][1:] == (fake_mm.ModelKind.kOnnx, str(out_dir / "model.onnx"))
    assert json.loads(calls[1][1]) == json.loads((out_dir / CONFIG_FILE).read_text())
    assert calls[2] == ("Builder.build_model", "resnet50_vd")
    assert built.engine_format == "magicmind" and built.engine_file == "model.mm"
    assert built.builder["from_onnx"] == "model.onnx" and built.magicmind_config == CONFIG_FILE
    assert Manifest.read(out_dir) == built
    assert (out_dir / "model.mm").is_file() and not (out_dir / "model.mm.tmp").exists()


def _calibration_batches(batches: int, batch: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    return [{"images": rng.integers(0, 256, (batch, 224, 224, 3)).astype(np.uint8)} for _ in range(batches)]


def test_int8_calibrates_on_an_active_device(
    model_repo: pathlib.Path, tmp_path: pathlib.Path, fake_mm: types.ModuleType
) -> None:
    out_dir = _copy(model_repo, tmp_path, "resnet50_vd")
    config = builder_config(SPECS["resnet50_vd"], "int8", size="tiny")
    build_magicmind(
        out_dir / "model.onnx",
        config,
        out_dir / "model.mm",
        input_names=["images"],
        calibration=CalibrationSettings(algorithm="eqnm"),
        calibration_data=_calibration_batches(3, 2),
    )
    names = [c[0] for c in fake_magicmind.CALLS]
    assert names == [
        "Parser.parse",
        "BuilderConfig.parse_from_string",
        "CalibDataInterface.__init__",
        "Calibrator.__init__",
        "Calibrator.set_quantization_algorithm",
        "Device.active",
        "Calibrator.calibrate",
        "Calibrator.samples",
        "Builder.build_model",
        "Model.serialize_to_file",
    ]
    assert (
        "Calibrator.set_quantization_algorithm",
        fake_mm.QuantizationAlgorithm.EQNM_ALGORITHM,
    ) in fake_magicmind.CALLS
    assert ("Calibrator.calibrate", 0) in fake_magicmind.CALLS  # MLU 0 active while calibrating
    assert ("Calibrator.samples", 0, 3) in fake_magicmind.CALLS


def test_int8_without_usable_calibration_data_is_refused(
    model_repo: pathlib.Path, tmp_path: pathlib.Path, mm_sdk: types.ModuleType
) -> None:
    out_dir = _copy(model_repo, tmp_path, "resnet50_vd")
    config = builder_config(SPECS["resnet50_vd"], "int8", size="tiny")
    kwargs = {"input_names": ["images"]}
    with pytest.raises(MagicMindBuildError, match="an int8 build needs calibration data"):
        build_magicmind(out_dir / "model.onnx", config, out_dir / "model.mm", **kwargs)  # type: ignore[arg-type]
    with pytest.raises(MagicMindBuildError, match=r"shape \[33, 224, 224, 3\] outside dim_range"):
        build_magicmind(
            out_dir / "model.onnx",
            config,
            out_dir / "model.mm",
            calibration_data=_calibration_batches(1, 33),
            **kwargs,  # type: ignore[arg-type]
        )
    assert not (out_dir / "model.mm").exists()


def test_build_failure_is_a_build_error(
    model_repo: pathlib.Path, tmp_path: pathlib.Path, fake_mm: types.ModuleType
) -> None:
    out_dir = _copy(model_repo, tmp_path, "bert_qa")
    fake_magicmind.FAIL.add("build_model")
    with pytest.raises(MagicMindBuildError, match="build_model failed"):
        build_magicmind_engine(Manifest.read(out_dir), out_dir)
    assert Manifest.read(out_dir).engine_format == "onnx"  # the ONNX manifest is left as it was


def test_cli_backend_magicmind_builds_mm_engines(tmp_path: pathlib.Path, mm_sdk: types.ModuleType) -> None:
    repo = tmp_path / "repo"
    assert main(["--repo", str(repo), "--models", "resnet50_vd", "--size", "tiny", "--backend", "magicmind"]) == 0
    manifest = Manifest.read(repo / "resnet50_vd" / "1")
    assert manifest.engine_format == "magicmind" and (repo / "resnet50_vd" / "1" / "model.mm").is_file()
    assert (repo / "resnet50_vd" / "1" / "model.onnx").is_file()  # the source stays next to it
    # Up to date for magicmind; asking for ONNX rebuilds the ONNX engine and serves it again.
    assert main(["--repo", str(repo), "--models", "resnet50_vd", "--size", "tiny", "--backend", "magicmind"]) == 0
    assert Manifest.read(repo / "resnet50_vd" / "1").built_at == manifest.built_at
    assert main(["--repo", str(repo), "--models", "resnet50_vd", "--size", "tiny"]) == 0
    assert Manifest.read(repo / "resnet50_vd" / "1").engine_format == "onnx"


@pytest.mark.usefixtures("no_mm_sdk")
def test_cli_backend_magicmind_without_the_sdk(tmp_path: pathlib.Path) -> None:
    with pytest.raises(SystemExit, match=r"--backend magicmind: the MagicMind SDK .* is not importable"):
        main(["--repo", str(tmp_path / "repo"), "--models", "resnet50_vd", "--size", "tiny", "--backend", "magicmind"])
    assert not (tmp_path / "repo").exists()  # refused before building anything


def test_magicmind_sdk_is_the_builders_one_seam(fake_mm: types.ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    assert magicmind_sdk() is fake_mm
    monkeypatch.setitem(sys.modules, "magicmind.python.runtime", None)  # not importable
    with pytest.raises(MagicMindBuildError, match=r"the MagicMind SDK .* is not importable") as info:
        magicmind_sdk()
    assert isinstance(info.value.__cause__, EngineError)  # the engine's error, mapped to the builder's


# --- precision variants built by MagicMind (--backend magicmind --precision ...) --------------------------


def _variant_repo(model_repo: pathlib.Path, tmp_path: pathlib.Path, name: str) -> pathlib.Path:
    repo = tmp_path / "repo"
    shutil.copytree(model_repo / name, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
    return repo


def test_cli_magicmind_int8_calibrates_on_the_serving_preprocessing(
    model_repo: pathlib.Path, tmp_path: pathlib.Path, fake_mm: types.ModuleType
) -> None:
    spec = SPECS["resnet50_vd"]
    repo = _variant_repo(model_repo, tmp_path, "resnet50_vd")
    images = datasets.write_images(tmp_path / "images", ("skimage:chelsea",), 10, seed=1)
    argv = ["--repo", str(repo), "--models", "resnet50_vd", "--size", "tiny", "--backend", "magicmind"]
    argv += ["--precision", "fp16,int8", "--calibration", str(images), "--calibration-count", "9"]
    assert main(argv) == 0

    # The Calibrator read exactly the samples the ONNX Runtime path calibrates on: the gateway's
    # preprocessing of the first 9 images, uint8 NHWC, in batches of at most 8 rows.
    expected = calibration_batches(spec, "tiny", images, 9)
    samples = fake_magicmind.CALIBRATION_SAMPLES[0]
    assert [s.shape for s in samples] == [b["images"].shape for b in expected] == [(8, 224, 224, 3), (1, 224, 224, 3)]
    assert all(s.dtype == np.uint8 and np.array_equal(s, b["images"]) for s, b in zip(samples, expected))
    first = preprocess_image(spec, spec.configs["tiny"], datasets.image_files(images)[0].read_bytes())
    assert np.array_equal(samples[0][0], first)
    assert set(fake_magicmind.CALIBRATION_SAMPLES) == {0}  # one network input
    calls = fake_magicmind.CALLS
    assert [c for c in calls if c[0] == "Calibrator.__init__"] == [("Calibrator.__init__", 1)]  # int8 only
    assert ("Calibrator.set_quantization_algorithm", fake_mm.QuantizationAlgorithm.LINEAR_ALGORITHM) in calls
    assert ("Builder.build_model", "resnet50_vd_int8") in calls and ("Builder.build_model", "resnet50_vd_fp16") in calls

    base_onnx = repo / "resnet50_vd" / "1" / "model.onnx"
    int8 = Manifest.read(repo / "resnet50_vd_int8" / "1")
    assert (int8.engine_format, int8.engine_file, int8.precision, int8.base_model) == (
        "magicmind",
        "model.mm",
        "int8",
        "resnet50_vd",
    )
    assert int8.calibration == {
        "method": "minmax",
        "sha256": datasets.set_sha256(images, 9),
        "count": 9,
        "source": str(images),
        "algorithm": "LINEAR_ALGORITHM",
    }
    assert int8.builder["base_engine_sha256"] == sha256_file(base_onnx)
    assert int8.builder["from_onnx"] == "../../resnet50_vd/1/model.onnx"
    assert json.loads((repo / "resnet50_vd_int8" / "1" / CONFIG_FILE).read_text()) == builder_config(
        spec, "int8", CalibrationSettings(), inputs=int8.inputs
    )
    fp16 = Manifest.read(repo / "resnet50_vd_fp16" / "1")
    assert (fp16.engine_format, fp16.precision, fp16.calibration) == ("magicmind", "fp16", None)
    fp16_config = json.loads((repo / "resnet50_vd_fp16" / "1" / CONFIG_FILE).read_text())
    assert fp16_config["precision_config"] == {"precision_mode": "force_float16"}
    assert (repo / "resnet50_vd_fp16" / "1" / "model.mm").is_file()

    # Up to date: nothing rebuilt. Another method (eqnm) rebuilds int8 only, with EQNM_ALGORITHM.
    fake_magicmind.reset()
    assert main(argv) == 0
    assert Manifest.read(repo / "resnet50_vd_int8" / "1").built_at == int8.built_at
    assert not [c for c in fake_magicmind.CALLS if c[0] == "Builder.build_model"]
    assert main([*argv, "--calibration-method", "eqnm"]) == 0
    assert (
        "Calibrator.set_quantization_algorithm",
        fake_mm.QuantizationAlgorithm.EQNM_ALGORITHM,
    ) in fake_magicmind.CALLS
    rebuilt = Manifest.read(repo / "resnet50_vd_int8" / "1")
    assert rebuilt.calibration is not None and rebuilt.calibration["algorithm"] == "EQNM_ALGORITHM"
    assert [c for c in fake_magicmind.CALLS if c[0] == "Builder.build_model"] == [
        ("Builder.build_model", "resnet50_vd_int8")
    ]


def test_cli_magicmind_int8_calibrates_every_qa_input(
    model_repo: pathlib.Path, tmp_path: pathlib.Path, fake_mm: types.ModuleType
) -> None:
    repo = _variant_repo(model_repo, tmp_path, "bert_qa")
    pairs = tmp_path / "qa.jsonl"
    pairs.write_text(
        "\n".join(json.dumps(p) for p in datasets.qa_pairs(3, 1, datasets._CAL_FIRST, datasets._CAL_LAST)) + "\n"
    )
    argv = ["--repo", str(repo), "--models", "bert_qa", "--size", "tiny", "--backend", "magicmind"]
    assert main([*argv, "--precision", "int8", "--calibration", f"bert_qa={pairs}"]) == 0
    expected = calibration_batches(SPECS["bert_qa"], "tiny", pairs, 64)
    samples = fake_magicmind.CALIBRATION_SAMPLES
    assert sorted(samples) == [0, 1, 2]  # input_ids, attention_mask, token_type_ids: one CalibData each
    for index, name in enumerate(SPECS["bert_qa"].input_names):
        assert len(samples[index]) == len(expected)
        assert all(s.dtype == np.int64 and np.array_equal(s, b[name]) for s, b in zip(samples[index], expected))
    calibration = Manifest.read(repo / "bert_qa_int8" / "1").calibration
    assert calibration is not None and calibration["count"] == 3 and calibration["method"] == "minmax"


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--backend", "magicmind", "--calibration-method", "entropy"], "entropy has no MagicMind counterpart"),
        (["--backend", "magicmind", "--calibration-method", "percentile"], "percentile has no MagicMind counterpart"),
        (["--backend", "magicmind", "--quantization", "dynamic"], "--quantization dynamic is ONNX Runtime only"),
        (["--calibration-method", "eqnm"], "eqnm is MagicMind's"),
    ],
)
def test_cli_refuses_a_calibration_the_backend_cannot_do(
    tmp_path: pathlib.Path, fake_mm: types.ModuleType, extra: list[str], message: str
) -> None:
    argv = ["--repo", str(tmp_path / "repo"), "--models", "resnet50_vd", "--size", "tiny", "--precision", "int8"]
    with pytest.raises(SystemExit, match=re.escape(message)):
        main([*argv, *extra])
    assert not (tmp_path / "repo").exists()  # refused before building anything


def test_magicmind_variant_build_failure_is_reported(
    model_repo: pathlib.Path, tmp_path: pathlib.Path, fake_mm: types.ModuleType, caplog: pytest.LogCaptureFixture
) -> None:
    repo = _variant_repo(model_repo, tmp_path, "resnet50_vd")
    images = datasets.write_images(tmp_path / "images", ("skimage:chelsea",), 2, seed=1)
    argv = ["--repo", str(repo), "--models", "resnet50_vd", "--size", "tiny", "--backend", "magicmind"]
    assert main(argv) == 0
    fake_magicmind.FAIL.add("build_model")
    assert main([*argv, "--precision", "int8", "--calibration", str(images)]) == 2
    assert "resnet50_vd: MagicMind build_model failed" in caplog.text
    assert not (repo / "resnet50_vd_int8" / "1" / "manifest.json").exists()  # nothing half-built is served
