"""Precision variants of a built engine (FP16 by graph conversion, INT8 by calibrated QDQ quantization)
and the deterministic, disjoint calibration/evaluation sets."""

from __future__ import annotations

import pathlib
import shutil

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from engine_runtime.engine import OnnxRuntimeEngine
from engine_runtime.manifest import Manifest
from magicmind_build import cli, datasets
from magicmind_build.precision import (
    CalibrationError,
    PrecisionOptions,
    bias_correct,
    build_variant,
    check_int8_options,
    int8_recipe,
    is_variant_dir,
    quantize_int8,
)
from magicmind_build.specs import SPECS
from tests.helpers import ROOT


@pytest.fixture(scope="module")
def repo(model_repo: pathlib.Path, tmp_path_factory: pytest.TempPathFactory, chelsea_jpeg: bytes) -> pathlib.Path:
    repo = tmp_path_factory.mktemp("precision") / "repo"
    shutil.copytree(model_repo / "resnet50_vd", repo / "resnet50_vd", ignore=shutil.ignore_patterns("__pycache__"))
    images = repo.parent / "images"
    images.mkdir()
    (images / "c.jpg").write_bytes(chelsea_jpeg)
    (images / "notes.txt").write_text("not an image: ignored")
    options = PrecisionOptions(calibration={"resnet50_vd": images}, count=8)
    for precision in ("fp16", "int8"):
        build_variant(SPECS["resnet50_vd"], repo, "tiny", precision, options)
    return repo


def test_variant_dirs_are_generated_from_the_base(repo: pathlib.Path) -> None:
    base = (repo / "resnet50_vd" / "config.pbtxt").read_text()
    for variant in ("resnet50_vd_fp16", "resnet50_vd_int8"):
        config = (repo / variant / "config.pbtxt").read_text()
        assert is_variant_dir(repo / variant)
        assert f'name: "{variant}"' in config
        expected = base.replace('name: "resnet50_vd"', f'name: "{variant}"')
        expected = expected.replace('"/trt-cache/resnet50_vd"', f'"/trt-cache/{variant}"')  # its own TensorRT cache
        assert config.split("\n", 1)[1] == expected
        assert f'string_value: "/trt-cache/{variant}"' in config
        assert (repo / variant / "1" / "model.py").read_bytes() == (
            repo / "resnet50_vd" / "1" / "model.py"
        ).read_bytes()
    assert not is_variant_dir(repo / "resnet50_vd")


def test_fp16_keeps_io_types_and_halves_weights(repo: pathlib.Path) -> None:
    base, fp16 = (OnnxRuntimeEngine(repo / n / "1" / "model.onnx") for n in ("resnet50_vd", "resnet50_vd_fp16"))
    assert fp16.inputs == base.inputs and fp16.outputs == base.outputs
    graph = onnx.load(str(repo / "resnet50_vd_fp16" / "1" / "model.onnx")).graph
    float_types = {numpy_helper.to_array(t).dtype for t in graph.initializer if t.data_type in (1, 10)}
    assert float_types == {np.dtype("float16")}
    manifest = Manifest.read(repo / "resnet50_vd_fp16" / "1")
    assert (manifest.precision, manifest.base_model, manifest.calibration) == ("fp16", "resnet50_vd", None)


def test_int8_is_qdq_per_channel_with_recorded_calibration(repo: pathlib.Path) -> None:
    graph = onnx.load(str(repo / "resnet50_vd_int8" / "1" / "model.onnx")).graph
    ops = {n.op_type for n in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    scales = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    per_channel = [
        n for n in graph.node if n.op_type == "DequantizeLinear" and scales.get(n.input[1], np.zeros(())).size > 1
    ]
    assert per_channel, "no per-channel weight scales"
    manifest = Manifest.read(repo / "resnet50_vd_int8" / "1")
    images = repo.parent / "images"
    assert manifest.precision == "int8"
    assert manifest.calibration == {
        "method": "minmax",
        "sha256": datasets.set_sha256(images, 1),
        "count": 1,
        "source": str(images),
    }  # ResNet50-vd's default recipe is plain (not recorded): 8-bit symmetric weights
    weights = _conv_weights(graph)
    assert weights and all(not zero.any() for _, zero in weights.values())
    assert max(np.abs(q).max() for q, _ in weights.values()) == 127
    assert manifest.builder["base_engine_sha256"] == Manifest.read(repo / "resnet50_vd" / "1").engine_sha256


def test_up_to_date_variant_is_kept_and_a_new_method_rebuilds(repo: pathlib.Path) -> None:
    images = repo.parent / "images"
    before = Manifest.read(repo / "resnet50_vd_int8" / "1")
    options = PrecisionOptions(calibration={"resnet50_vd": images}, count=8)
    assert build_variant(SPECS["resnet50_vd"], repo, "tiny", "int8", options).built_at == before.built_at
    other = PrecisionOptions(calibration={"resnet50_vd": images}, count=8, method="percentile")
    rebuilt = build_variant(SPECS["resnet50_vd"], repo, "tiny", "int8", other)
    assert rebuilt.calibration is not None and rebuilt.calibration["method"] == "percentile"


def test_a_new_int8_recipe_rebuilds_with_7bit_gemm_weights(repo: pathlib.Path, tmp_path: pathlib.Path) -> None:
    images = repo.parent / "images"
    copy = tmp_path / "repo"
    for name in ("resnet50_vd", "resnet50_vd_int8"):
        shutil.copytree(repo / name, copy / name)
    before = Manifest.read(copy / "resnet50_vd_int8" / "1")
    options = PrecisionOptions(calibration={"resnet50_vd": images}, count=8, int8_recipe="gemm-7bit")
    rebuilt = build_variant(SPECS["resnet50_vd"], copy, "tiny", "int8", options)
    assert rebuilt.engine_sha256 != before.engine_sha256
    assert rebuilt.calibration is not None
    recipe = {"name": "gemm-7bit", "weights": "gemm-7bit", "bias_correction": "input-mean"}
    assert rebuilt.calibration["recipe"] == recipe
    weights = _conv_weights(onnx.load(str(copy / "resnet50_vd_int8" / "1" / "model.onnx")).graph)
    assert max(np.abs(q).max() for q, _ in weights.values()) == 64  # 7 bits: no depthwise Conv in ResNet
    assert build_variant(SPECS["resnet50_vd"], copy, "tiny", "int8", options).built_at == rebuilt.built_at


def test_auto_int8_recipe_is_measured_per_model() -> None:
    assert int8_recipe(SPECS["efficientnet_lite0"], PrecisionOptions()) == "gemm-7bit"
    assert int8_recipe(SPECS["resnet50_vd"], PrecisionOptions()) == "plain"
    assert int8_recipe(SPECS["efficientnet_lite0"], PrecisionOptions(int8_recipe="8bit-bc")) == "8bit-bc"
    with pytest.raises(CalibrationError, match="int8-recipe"):  # MagicMind's Calibrator quantizes there
        check_int8_options(PrecisionOptions(backend="magicmind", int8_recipe="gemm-7bit"))
    with pytest.raises(CalibrationError, match="choose from"):
        check_int8_options(PrecisionOptions(int8_recipe="int4"))


def _conv_weights(graph: onnx.GraphProto) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Conv node name -> (its int8 weight, zero points) in a QDQ graph."""
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    out = {}
    for node in graph.node:
        dq = producers.get(node.input[1]) if node.op_type == "Conv" else None
        if dq is not None and dq.op_type == "DequantizeLinear" and dq.input[0] in inits:
            out[node.name] = (inits[dq.input[0]], inits[dq.input[2]])
    return out


def _depthwise_then_pointwise(path: pathlib.Path) -> None:
    """x [N,4,5,5] -> depthwise 3x3 Conv -> Relu -> 1x1 Conv (8 out): both with biases, fixed weights."""
    rng = np.random.default_rng(0)
    dw, pw = rng.normal(size=(4, 1, 3, 3)).astype(np.float32), rng.normal(size=(8, 4, 1, 1)).astype(np.float32)
    graph = onnx.helper.make_graph(
        [
            onnx.helper.make_node("Conv", ["x", "dw", "dwb"], ["a"], name="depthwise", group=4, pads=[1, 1, 1, 1]),
            onnx.helper.make_node("Relu", ["a"], ["r"], name="relu"),
            onnx.helper.make_node("Conv", ["r", "pw", "pwb"], ["y"], name="pointwise"),
        ],
        "dwpw",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [None, 4, 5, 5])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [None, 8, 5, 5])],
        [
            numpy_helper.from_array(dw, "dw"),
            numpy_helper.from_array(np.full(4, 0.5, np.float32), "dwb"),
            numpy_helper.from_array(pw, "pw"),
            numpy_helper.from_array(np.linspace(-1, 1, 8).astype(np.float32), "pwb"),
        ],
    )
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]), str(path))


def test_gemm_7bit_recipe_keeps_depthwise_weights_8bit_and_corrects_biases(tmp_path: pathlib.Path) -> None:
    source = tmp_path / "dwpw.onnx"
    _depthwise_then_pointwise(source)
    rng = np.random.default_rng(1)
    batches = [{"x": rng.uniform(0, 2, size=(4, 4, 5, 5)).astype(np.float32)} for _ in range(3)]
    ranges = {}
    for recipe in ("gemm-7bit", "plain"):
        target = tmp_path / f"{recipe}.onnx"
        quantize_int8(source, target, batches, "minmax", recipe=recipe)
        weights = _conv_weights(onnx.load(str(target)).graph)
        ranges[recipe] = {name: int(np.abs(q).max()) for name, (q, _) in weights.items()}
        assert all(not zero.any() for _, zero in weights.values())  # symmetric weights
    # ONNX Runtime's int8 GEMM (the pointwise Conv) gets 7 bits; the depthwise kernel keeps 8 bits
    assert ranges == {"gemm-7bit": {"depthwise": 127, "pointwise": 64}, "plain": {"depthwise": 127, "pointwise": 127}}

    # bias correction: each bias moves by -(W_q - W) E[x], E[x] per input channel over the calibration rows
    model, quantized = onnx.load(str(source)), onnx.load(str(tmp_path / "plain.onnx"))
    float_w = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}
    inits = {t.name: numpy_helper.to_array(t) for t in quantized.graph.initializer}
    producers = {o: n for n in quantized.graph.node for o in n.output}
    dequantized = {}
    for node in quantized.graph.node:
        if node.op_type == "Conv":
            dq = producers[node.input[1]]
            scale = inits[dq.input[1]].astype(np.float64).reshape(-1, 1, 1, 1)
            dequantized[node.name] = inits[dq.input[0]].astype(np.float64) * scale
    x = np.concatenate([b["x"] for b in batches]).astype(np.float64)
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    a = np.stack(  # the float depthwise output, to get E[relu(a)] for the pointwise layer
        [
            sum(padded[:, c, i : i + 5, j : j + 5] * float_w["dw"][c, 0, i, j] for i in range(3) for j in range(3))
            + 0.5
            for c in range(4)
        ],
        axis=1,
    )
    mean_x, mean_r = x.mean(axis=(0, 2, 3)), np.maximum(a, 0).mean(axis=(0, 2, 3))
    expected_dwb = 0.5 - (dequantized["depthwise"] - float_w["dw"]).sum(axis=(1, 2, 3)) * mean_x
    expected_pwb = float_w["pwb"] - (dequantized["pointwise"] - float_w["pw"])[:, :, 0, 0] @ mean_r
    corrected, count = bias_correct(model, quantized, batches)
    biases = {t.name: numpy_helper.to_array(t) for t in corrected.graph.initializer}
    assert count == 2
    np.testing.assert_allclose(biases["dwb"], expected_dwb, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(biases["pwb"], expected_pwb, rtol=1e-5, atol=1e-6)
    assert not np.allclose(biases["pwb"], float_w["pwb"])  # the correction is not a no-op


def test_calibration_of_the_wrong_kind_is_refused(repo: pathlib.Path, caplog: pytest.LogCaptureFixture) -> None:
    args = ["--repo", str(repo), "--size", "tiny", "--models", "resnet50_vd", "--precision", "int8"]
    assert cli.main([*args, "--calibration", str(repo / "resnet50_vd" / "config.pbtxt")]) == 2
    assert "folder of images" in caplog.text
    with pytest.raises(SystemExit):
        cli.main([*args, "--precision", "int4"])


def test_qa_sets_are_deterministic_disjoint_and_answerable() -> None:
    first = datasets.qa_pairs(50, 2, datasets._FIRST, datasets._LAST)
    assert first == datasets.qa_pairs(50, 2, datasets._FIRST, datasets._LAST)
    calibration = datasets.qa_pairs(50, 1, datasets._CAL_FIRST, datasets._CAL_LAST)
    names = {p["context"].split(" was born")[0] for p in first}
    assert not names & {p["context"].split(" was born")[0] for p in calibration}
    for pair in first:
        assert pair["answer"] in pair["context"]


def test_image_sets_are_deterministic_and_disjoint_by_photo(tmp_path: pathlib.Path) -> None:
    assert not set(datasets.EVAL_PHOTOS) & set(datasets.CALIBRATION_PHOTOS)
    photos = ("skimage:chelsea", "skimage:coffee")
    a = datasets.write_images(tmp_path / "a", photos, 3, seed=5)
    b = datasets.write_images(tmp_path / "b", photos, 3, seed=5)
    assert [p.name for p in datasets.image_files(a)][:2] == ["000_skimage_chelsea.jpg", "000_skimage_coffee.jpg"]
    assert datasets.set_sha256(a) == datasets.set_sha256(b)
    assert datasets.set_sha256(a, 2) != datasets.set_sha256(a)
    assert len({p.read_bytes() for p in datasets.image_files(a)}) == 6


def test_int8_detector_keeps_its_in_graph_head_in_float(
    model_repo: pathlib.Path, tmp_path: pathlib.Path, chelsea_jpeg: bytes
) -> None:
    """The pretrained NanoDet quantized with every op INT8 found nothing on the astronaut photo (its box
    decode, sigmoid and TopK in 8 bits); only Conv/MatMul/Gemm are quantized now, and it still finds the
    person FP32 finds."""
    from gateway.processing.images import detect_input

    repo = tmp_path / "repo"
    shutil.copytree(model_repo / "nanodet", repo / "nanodet", ignore=shutil.ignore_patterns("__pycache__"))
    images = tmp_path / "images"
    images.mkdir()
    astronaut = (ROOT / "examples" / "astronaut.jpg").read_bytes()
    (images / "a.jpg").write_bytes(astronaut)
    (images / "c.jpg").write_bytes(chelsea_jpeg)
    variant = build_variant(
        SPECS["nanodet"], repo, "tiny", "int8", PrecisionOptions(calibration={"nanodet": images}, count=8)
    )
    assert variant.calibration is not None and variant.calibration["quantized_ops"] == ["Conv", "MatMul", "Gemm"]
    graph = onnx.load(str(repo / "nanodet_int8" / "1" / "model.onnx")).graph
    dequantized = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    head = [n for n in graph.node if n.op_type in ("TopK", "Sigmoid")]
    assert head and not any(i in dequantized for n in head for i in n.input)

    size = int(SPECS["nanodet"].configs["tiny"].img_size)
    canvas, _ = detect_input(astronaut, 40_000_000, 20.0, size)
    best = {}
    for name in ("nanodet", "nanodet_int8"):
        engine = OnnxRuntimeEngine(repo / name / "1" / "model.onnx")
        best[name] = engine.run({"images": canvas[None]})["detections"][0][0]  # cx, cy, w, h, score, class
    assert best["nanodet"][5] == best["nanodet_int8"][5] == 0  # person
    assert abs(best["nanodet"][4] - best["nanodet_int8"][4]) < 0.1
