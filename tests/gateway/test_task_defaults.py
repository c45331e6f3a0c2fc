"""Tasks resolve the operator-tunable defaults from settings when a query leaves them None.

The routes pass the client's query parameters through unchanged (None when absent), so these
defaults live in one place, ``gateway.settings.Settings``; the detect task's result carries the
original image size, not the letterbox, so :class:`Letterbox` stays inside the task.
"""

from __future__ import annotations

import numpy as np
import pytest

from gateway.catalog import ModelInfo
from gateway.metrics import Metrics
from gateway.processing.images import Letterbox
from gateway.settings import Settings
from gateway.tasks.classify import ClassifyQuery, ClassifyTask
from gateway.tasks.detect import DetectFeatures, DetectQuery, DetectResult, DetectTask

pytestmark = pytest.mark.unit


def _settings(**kw: object) -> Settings:
    return Settings(_env_file=None, **kw)  # type: ignore[call-arg]


def _classifier(settings: Settings) -> ClassifyTask:
    model = ModelInfo(name="resnet50_vd", task="classify", weights="untrained")
    return ClassifyTask(model, None, Metrics(), settings)  # type: ignore[arg-type]  # postprocess needs no client


def test_classify_top_k_none_is_the_setting_and_a_given_one_wins() -> None:
    logits = {"logits": np.arange(10, dtype=np.float32)[None]}
    features = np.zeros((1, 3, 4, 4), np.float32)
    task = _classifier(_settings(classify_top_k=3))
    assert [c for c, _ in task.postprocess(ClassifyQuery(b""), features, logits)] == [9, 8, 7]
    assert [c for c, _ in task.postprocess(ClassifyQuery(b"", 1), features, logits)] == [9]


def _detector(settings: Settings) -> DetectTask:
    model = ModelInfo(name="yolov5n", task="detect", weights="untrained")
    return DetectTask(model, None, Metrics(), settings)  # type: ignore[arg-type]  # postprocess needs no client


def _outputs(*scores: float) -> dict[str, np.ndarray]:
    rows = np.zeros((1, 3000, 6), np.float32)
    for i, score in enumerate(scores):  # far-apart boxes: NMS keeps every one above the threshold
        rows[0, i] = (50 + 100 * i, 50, 20, 20, score, 0)
    return {"detections": rows}


def test_detect_thresholds_none_are_the_settings_and_given_ones_win() -> None:
    box = Letterbox(gain=1.0, pad_x=0, pad_y=0, width=640, height=480)
    features = DetectFeatures(np.zeros((1, 3, 640, 640), np.float32), box)
    outputs = _outputs(0.3, 0.6)
    task = _detector(_settings(detect_conf_threshold=0.5))
    default = task.postprocess(DetectQuery(b""), features, outputs)
    assert isinstance(default, DetectResult)
    assert len(default.detections.scores) == 1
    assert (default.width, default.height) == (640, 480)
    assert len(task.postprocess(DetectQuery(b"", conf_threshold=0.25), features, outputs).detections.scores) == 2
    assert len(_detector(_settings()).postprocess(DetectQuery(b""), features, outputs).detections.scores) == 2
