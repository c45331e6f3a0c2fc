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
