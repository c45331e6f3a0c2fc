"""Agreement metrics of precision variants with FP32, and the evaluation CLI on tiny engines."""

from __future__ import annotations

import json
import pathlib
import shutil

import numpy as np
import pytest

from engine_runtime.manifest import Manifest
from magicmind_build import datasets, evaluate
from magicmind_build.precision import PrecisionOptions, build_variant
from magicmind_build.specs import SPECS


def test_classification_agreement_counts_top1_and_top5() -> None:
    reference = np.array([[9.0, 8, 7, 6, 5, 0, 0], [0, 1, 2, 3, 4, 5, 6]])
    variant = np.array([[9.0, 8, 7, 6, 0, 5, 0], [0, 1, 2, 3, 4, 6, 5]])
    assert evaluate.classification_agreement(reference, variant) == {"top1_agreement": 0.5, "top5_overlap": 0.9}
    assert evaluate.classification_agreement(reference, reference) == {"top1_agreement": 1.0, "top5_overlap": 1.0}


def _dets(boxes: list[list[float]], scores: list[float], classes: list[int]) -> evaluate.Dets:
    return np.array(boxes, dtype=float).reshape(-1, 4), np.array(scores), np.array(classes)


def test_map50_is_one_for_identical_and_drops_for_misses() -> None:
    truth = [_dets([[0, 0, 10, 10], [20, 20, 30, 30]], [0.9, 0.8], [1, 2])]
    assert evaluate.map50(truth, truth) == 1.0
    shifted = [_dets([[0, 0, 10, 10], [26, 26, 36, 36]], [0.9, 0.8], [1, 2])]  # IoU 16/184 for class 2
    assert evaluate.map50(truth, shifted) == 0.5
    wrong_class = [_dets([[0, 0, 10, 10], [20, 20, 30, 30]], [0.9, 0.8], [1, 1])]
    assert evaluate.map50(truth, wrong_class) == 0.5
    extra_low = [_dets([[0, 0, 10, 10], [50, 50, 60, 60], [20, 20, 30, 30]], [0.9, 0.1, 0.8], [1, 1, 2])]
    assert evaluate.map50(truth, extra_low) == 1.0  # a false positive ranked last does not lower AP


def _grid_rows(x0: float, columns: int, scores: np.ndarray, classes: np.ndarray) -> dict[str, np.ndarray]:
    """Engine rows (cx, cy, w, h, score, class) of 40x40 boxes on a 50-pixel grid (no two overlap)."""
    centres = [(x0 + 25 + 50 * c, 25 + 50 * r) for r in range(12) for c in range(columns)]
    rows = np.array([[cx, cy, 40, 40, s, k] for (cx, cy), s, k in zip(centres, scores, classes)], np.float32)
    return {"detections": rows[np.argsort(-rows[:, 4], kind="stable")]}


def test_top_n_agreement_measures_boxes_no_absolute_threshold_keeps() -> None:
    from gateway.processing.images import Letterbox

    rng = np.random.default_rng(0)
    box = [Letterbox(gain=1.0, pad_x=0.0, pad_y=0.0, width=640, height=640)]
    # Untrained-YOLOv5-like scores (~1e-5): nothing clears the absolute 0.001 threshold.
    scores, classes = rng.uniform(1e-6, 3e-5, 72), rng.integers(0, 3, 72)
    reference = [_grid_rows(0, 6, scores, classes)]
    truth = [evaluate._detections(reference[0], box[0], evaluate.DETECT_GT_CONF)]
    assert len(truth[0][0]) == 0 and np.isnan(evaluate.map50(truth, truth))
    assert evaluate.top_n_agreement(reference, reference, box, n=50) == 1.0

    def moved(dx: float, every: int = 1) -> list[dict[str, np.ndarray]]:
        rows = reference[0]["detections"].copy()
        rows[::every, 0] += dx
        return [{"detections": rows}]

    assert evaluate.top_n_agreement(reference, moved(5), box, n=50) == 1.0  # IoU 35/45 still matches
    half_missed = evaluate.top_n_agreement(reference, moved(15, every=2), box, n=50)  # IoU 1000/2200 < 0.5
    assert 0.2 < half_missed < 0.8
    assert evaluate.top_n_agreement(reference, moved(15), box, n=50) == 0.0
    disjoint = [_grid_rows(320, 6, scores, classes)]  # the same scores and classes, the other half of the image
    assert evaluate.top_n_agreement(reference, disjoint, box, n=50) == 0.0
    other_class = [_grid_rows(0, 6, scores, (classes + 1) % 3)]
    assert evaluate.top_n_agreement(reference, other_class, box, n=50) == 0.0
    assert evaluate.top_n_agreement(reference, other_class, box, n=50, class_aware=False) == 1.0
    # Only the n best of each side count: the variant's ranking decides which of its boxes are compared.
    reversed_ranking = [_grid_rows(0, 6, scores.max() + scores.min() - scores, classes)]
    assert evaluate.top_n_agreement(reference, reversed_ranking, box, n=72) == 1.0
    assert evaluate.top_n_agreement(reference, reversed_ranking, box, n=20) == 0.0  # top 20 vs bottom 20


def test_evaluate_cli_writes_accuracy_into_the_manifest(
    model_repo: pathlib.Path, tmp_path: pathlib.Path, chelsea_jpeg: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(model_repo / "resnet50_vd", repo / "resnet50_vd", ignore=shutil.ignore_patterns("__pycache__"))
    build_variant(SPECS["resnet50_vd"], repo, "tiny", "fp16", PrecisionOptions())
    sets = tmp_path / "sets"
    sets.mkdir()
    datasets.write_images(sets / "eval_images", ("skimage:chelsea", "skimage:astronaut"), 3, seed=3)
    for name in ("calibration_images", "calibration_qa.jsonl", "eval_qa.jsonl"):
        (sets / name).mkdir() if name.endswith("images") else (sets / name).write_text("")
    out = tmp_path / "results.json"
    argv = ["--repo", str(repo), "--models", "resnet50_vd", "--sets", str(sets), "--json", str(out)]
    assert evaluate.main(argv) == 0
    table = capsys.readouterr().out
    assert "resnet50_vd_fp16" in table and "untrained weights" in table
    accuracy = Manifest.read(repo / "resnet50_vd_fp16" / "1").accuracy
    assert accuracy is not None
    assert accuracy["count"] == 6
    assert accuracy["set_sha256"] == datasets.set_sha256(sets / "eval_images")
    assert accuracy["weights"] == "untrained"
    assert accuracy["metrics"]["top1_agreement"] >= 0.8  # fp16 of the same graph
    assert json.loads(out.read_text())[0]["model"] == "resnet50_vd_fp16"


def test_detector_variant_gets_top_n_agreement(model_repo: pathlib.Path, tmp_path: pathlib.Path) -> None:
    from engine_runtime.engine import OnnxRuntimeEngine

    repo = tmp_path / "repo"
    shutil.copytree(model_repo / "yolov5n", repo / "yolov5n", ignore=shutil.ignore_patterns("__pycache__"))
    build_variant(SPECS["yolov5n"], repo, "tiny", "fp16", PrecisionOptions())
    sets = tmp_path / "sets"
    datasets.write_images(sets / "eval_images", ("skimage:chelsea",), 2, seed=3)
    key, agnostic = (
        f"map50_top{evaluate.DETECT_TOP_N}_vs_fp32",
        f"map50_top{evaluate.DETECT_TOP_N}_class_agnostic_vs_fp32",
    )
    (result,) = evaluate.evaluate_model(repo, "yolov5n", ["fp16"], {"eval_images": sets / "eval_images"})
    assert result.model == "yolov5n_fp16" and result.count == 2 and result.weights == "untrained"
    assert 0.0 <= result.metrics[key] <= result.metrics[agnostic] <= 1.0  # measured (not NaN) on untrained weights
    assert result.as_manifest_entry("yolov5n")["metrics"][key] == result.metrics[key]
    # The FP32 engine scored as its own variant agrees exactly: the metric compares what the engines return.
    fp32 = repo / "yolov5n" / "1" / "model.onnx"
    (same,) = evaluate.evaluate_model(
        repo, "yolov5n", ["fp16"], {"eval_images": sets / "eval_images"}, load=lambda _: OnnxRuntimeEngine(fp32)
    )
    assert same.metrics[key] == same.metrics[agnostic] == 1.0
