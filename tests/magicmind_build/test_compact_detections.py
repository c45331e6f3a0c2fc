"""The detectors' compact output gives the detections the full outputs gave, at any threshold.

Reference: the same weights exported with the heads the engines had before (YOLOv5 ``output0``
[B, 25200, 85]; NanoDet ``scores`` [B, 3549, 80] + ``distances`` [B, 3549, 4, 11]) and the gateway's
post-processing of that layout as it was (copied below: confidence filter on objectness and on
objectness x class probability, the best 3000, greedy class-aware NMS, NanoDet decoded in NumPy), all
under ONNX Runtime; against the built engine's ``detections`` [B, 3000, 6] and today's
``postprocess_detections``.
"""

from __future__ import annotations

import pathlib
import warnings

import numpy as np
import pytest
import torch
from skimage import data as skdata

from engine_runtime.engine import OnnxRuntimeEngine
from gateway.processing.detection import Detections, box_iou, postprocess_detections
from gateway.processing.images import Letterbox, letterbox
from magicmind_build.build import read_state_dict
from magicmind_build.specs import SPECS

# ---------------------------------------------------------------- the previous post-processing


def _old_nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, max_keep: int) -> np.ndarray:
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size and len(keep) < max_keep:
        best = int(order[0])
        keep.append(best)
        if order.size == 1:
            break
        rest = order[1:]
        order = rest[box_iou(boxes[best], boxes[rest]) <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def old_postprocess(prediction: np.ndarray, box: Letterbox, conf: float, iou: float, max_det: int) -> Detections:
    candidates = prediction[prediction[:, 4] > conf]
    class_scores = candidates[:, 5:] * candidates[:, 4:5]
    classes = class_scores.argmax(axis=1)
    scores = class_scores[np.arange(len(classes)), classes]
    keep = scores > conf
    xywh = candidates[keep, :4]
    boxes = np.concatenate([xywh[:, :2] - xywh[:, 2:4] / 2, xywh[:, :2] + xywh[:, 2:4] / 2], axis=1)
    scores, classes = scores[keep], classes[keep]
    if len(scores) > 3000:
        top = np.argsort(-scores, kind="stable")[:3000]
        boxes, scores, classes = boxes[top], scores[top], classes[top]
    kept = _old_nms(boxes + (classes[:, None] * 7680.0), scores, iou, max_det)
    boxes, scores, classes = boxes[kept], scores[kept], classes[kept]
    boxes = (boxes - np.array([box.pad_x, box.pad_y] * 2, dtype=np.float32)) / box.gain
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, box.width)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, box.height)
    return Detections(boxes.astype(np.float32), scores.astype(np.float32), classes.astype(np.int64))


def old_nanodet_to_yolo(scores: np.ndarray, distances: np.ndarray, img_size: int) -> np.ndarray:
    centers, steps = [], []
    for stride in (8, 16, 32):
        n = int(np.ceil(img_size / stride))
        ys, xs = np.meshgrid(np.arange(n, dtype=np.float32), np.arange(n, dtype=np.float32), indexing="ij")
        centers.append((np.stack([xs.ravel(), ys.ravel()], axis=1) + 0.5) * stride)
        steps.append(np.full(n * n, stride, dtype=np.float32))
    center, step = np.concatenate(centers), np.concatenate(steps)
    logits = np.exp(distances - distances.max(axis=2, keepdims=True))
    probs = logits / logits.sum(axis=2, keepdims=True)
    dist = (probs @ np.arange(probs.shape[2], dtype=np.float32)) * step[:, None]
    xyxy = np.concatenate([center - dist[:, :2], center + dist[:, 2:]], axis=1).clip(0, img_size)
    rows = np.empty((len(center), 5 + scores.shape[1]), dtype=np.float32)
    rows[:, 0:2] = (xyxy[:, 0:2] + xyxy[:, 2:4]) / 2
    rows[:, 2:4] = xyxy[:, 2:4] - xyxy[:, 0:2]
    rows[:, 4] = 1.0
    rows[:, 5:] = scores
    return rows


# ---------------------------------------------------------------- the engines


class _Heads(torch.nn.Module):
    """The previous engine outputs of a detector (its full heads)."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, images: torch.Tensor) -> object:
        if hasattr(self.module, "predictions"):
            return self.module.predictions(images)
        return self.module.raw(images)


def _heads_engine(name: str, path: pathlib.Path) -> OnnxRuntimeEngine:
    spec = SPECS[name]
    torch.manual_seed(0)  # as build_engine does
    module = spec.factory(spec.configs["tiny"])
    if spec.pretrained is not None:
        module.load_state_dict(read_state_dict(pathlib.Path(spec.pretrained())))
    module.eval()
    outputs = ["output0"] if name == "yolov5n" else ["scores", "distances"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _Heads(module),
            spec.example_inputs(spec.configs["tiny"]),
            str(path),
            input_names=["images"],
            output_names=outputs,
            dynamic_axes={n: {0: "batch"} for n in ["images", *outputs]},
            opset_version=17,
            do_constant_folding=True,
            dynamo=False,
        )
    return OnnxRuntimeEngine(path)


def _images(size: int) -> np.ndarray:
    noise = np.random.default_rng(7).integers(0, 256, (300, 420, 3), dtype=np.uint8)
    canvases = [letterbox(image, size) for image in (skdata.astronaut(), skdata.chelsea(), noise)]
    return np.stack([c for c, _ in canvases]), [b for _, b in canvases]  # type: ignore[return-value]


def _assert_equal(new: Detections, old: Detections, box_atol: float) -> None:
    np.testing.assert_array_equal(new.classes, old.classes)
    np.testing.assert_array_equal(new.scores, old.scores)
    if box_atol == 0:
        np.testing.assert_array_equal(new.boxes, old.boxes)
    else:
        np.testing.assert_allclose(new.boxes, old.boxes, atol=box_atol, rtol=0)


def test_yolov5n_detections_equal_the_full_output(model_repo: pathlib.Path, tmp_path: pathlib.Path) -> None:
    compact = OnnxRuntimeEngine(model_repo / "yolov5n" / "1" / "model.onnx")
    full = _heads_engine("yolov5n", tmp_path / "heads.onnx")
    images, boxes = _images(640)
    rows = compact.run({"images": images})["detections"]
    predictions = full.run({"images": images})["output0"]
    assert rows.shape == (3, 3000, 6) and predictions.shape == (3, 25200, 85)
    counts = []
    for i, box in enumerate(boxes):
        scores = (predictions[i, :, 5:] * predictions[i, :, 4:5]).max(axis=1)
        # Thresholds letting through ~all (more than 3000), ~1000, ~100, ~10 candidates, and a high one.
        ranked = np.sort(scores)[::-1]
        for conf in (1e-9, float(ranked[1000]), float(ranked[100]), float(ranked[10]), 0.25):
            for iou in (0.45, 0.7):
                new = postprocess_detections(rows[i], box, conf, iou, 300)
                old = old_postprocess(predictions[i], box, conf, iou, 300)
                _assert_equal(new, old, box_atol=0)  # YOLOv5: bit-identical
                counts.append(len(new.scores))
    assert max(counts) == 300 and min(counts) < 20  # the thresholds did span a range


def test_nanodet_detections_equal_the_full_outputs(model_repo: pathlib.Path, tmp_path: pathlib.Path) -> None:
    compact = OnnxRuntimeEngine(model_repo / "nanodet" / "1" / "model.onnx")
    full = _heads_engine("nanodet", tmp_path / "heads.onnx")
    images, boxes = _images(416)
    rows = compact.run({"images": images})["detections"]
    heads = full.run({"images": images})
    counts = []
    for i, box in enumerate(boxes):
        prediction = old_nanodet_to_yolo(heads["scores"][i], heads["distances"][i], 416)
        for conf in (1e-9, 0.05, 0.2, 0.4):
            new = postprocess_detections(rows[i], box, conf, 0.6, 300)
            old = old_postprocess(prediction, box, conf, 0.6, 300)
            # The GFL decode now runs in ONNX Runtime instead of NumPy: boxes agree to rounding.
            _assert_equal(new, old, box_atol=1e-2)
            counts.append(len(new.scores))
    assert max(counts) == 300 and min(counts) < 20


@pytest.mark.parametrize("name", ["yolov5n", "nanodet"])
def test_rows_are_score_sorted_with_the_best_class(model_repo: pathlib.Path, name: str) -> None:
    engine = OnnxRuntimeEngine(model_repo / name / "1" / "model.onnx")
    size = 640 if name == "yolov5n" else 416
    rows = engine.run({"images": _images(size)[0]})["detections"]
    assert rows.dtype == np.float32
    assert (np.diff(rows[..., 4], axis=1) <= 0).all()
    assert ((rows[..., 5] >= 0) & (rows[..., 5] < 80) & (rows[..., 5] == np.round(rows[..., 5]))).all()
    assert (rows[..., 2:4] >= 0).all()
