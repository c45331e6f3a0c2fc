"""Accuracy of each precision variant against its FP32 model, on the generated evaluation sets.

``python -m magicmind_build.evaluate --repo triton_repo`` evaluates every built variant
(``<model>_fp16``, ``<model>_int8``) against ``<model>`` on the same inputs, prepared by the serving
preprocessing, prints one table row per variant and writes the result into the variant's
``manifest.json`` (``accuracy``; ``GET /models`` reports it):

- classification: top-1 agreement (the variant's top class is FP32's) and top-5 overlap
  (shared classes of the two top-5 lists / 5), over the evaluation images;
- QA: exact match of the best span (same character offsets as FP32), over the evaluation pairs;
- detection: mAP@0.5 of the variant's detections against FP32's detections taken as ground truth, both at the
  low threshold ``DETECT_PRED_CONF`` / ``DETECT_GT_CONF`` (0.001; at most 300 boxes an image after NMS);
  and ``map50_top{N}_vs_fp32`` (:func:`top_n_agreement`): the same class-aware mAP@0.5, with each image's
  ground truth FP32's ``N`` (:data:`DETECT_TOP_N`, 100) best boxes after the same NMS and the predictions the
  variant's ``N`` best, whatever their scores. Its threshold is relative to FP32's own score distribution
  (the ``N``-th best score of each image), so it is measurable where no box clears an absolute threshold:
  untrained YOLOv5 scores stay near 1e-5 (its initial objectness/class biases), below 0.001.

This is agreement with FP32, not accuracy against labels (no labelled data set is reachable here); for a
model with ``untrained`` weights it measures how faithfully the converted engine computes the same
random function, not how good its answers are, and the table says so.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import pathlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from engine_runtime.engine import Engine, OnnxRuntimeEngine
from engine_runtime.manifest import Manifest
from magicmind_build.datasets import ensure_sets, image_files, set_sha256
from magicmind_build.precision import PRECISIONS, preprocess_image, qa_features, variant_name
from magicmind_build.specs import SPECS

LOGGER = logging.getLogger(__name__)
BATCH = 8
DETECT_GT_CONF = 0.001
DETECT_PRED_CONF = 0.001
DETECT_IOU = 0.45
DETECT_TOP_N = 100  # boxes per image in the top-N agreement (FP32's N best are its ground truth)
MATCH_IOU = 0.5


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """Args:
    model: the variant (e.g. ``resnet50_vd_int8``).
    precision: its precision.
    weights: the FP32 model's weights provenance (``untrained``: agreement of random functions).
    metrics: metric name -> value in [0, 1].
    count: evaluation items (images or QA pairs).
    set_sha256: digest of the evaluation set.
    """

    model: str
    precision: str
    weights: str
    metrics: dict[str, float]
    count: int
    set_sha256: str

    def as_manifest_entry(self, base: str) -> dict[str, Any]:
        return {
            "reference": f"{base} (fp32)",
            # NaN (no FP32 boxes to match) is not JSON: null, so /models can serialise the manifest.
            "metrics": {k: (None if v != v else v) for k, v in self.metrics.items()},
            "count": self.count,
            "set_sha256": self.set_sha256,
            "weights": self.weights,
        }


def _run_batched(engine: Engine, rows: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    out: list[dict[str, np.ndarray]] = []
    for i in range(0, len(rows), BATCH):
        chunk = rows[i : i + BATCH]
        result = engine.run({name: np.stack([r[name] for r in chunk]) for name in chunk[0]})
        out.extend({name: value[j] for name, value in result.items()} for j in range(len(chunk)))
    return out


def classification_agreement(reference: np.ndarray, variant: np.ndarray) -> dict[str, float]:
    """Top-1 agreement and mean top-5 overlap of two [N, classes] logit arrays."""
    top1 = float(np.mean(reference.argmax(-1) == variant.argmax(-1)))
    ref5, var5 = np.argsort(-reference, -1)[:, :5], np.argsort(-variant, -1)[:, :5]
    overlap = float(np.mean([len(set(a) & set(b)) / 5 for a, b in zip(ref5, var5)]))
    return {"top1_agreement": top1, "top5_overlap": overlap}


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    x1, y1 = np.maximum(box[0], boxes[:, 0]), np.maximum(box[1], boxes[:, 1])
    x2, y2 = np.minimum(box[2], boxes[:, 2]), np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return np.asarray(inter / np.maximum(area + areas - inter, 1e-9))


def average_precision(recall: np.ndarray, precision: np.ndarray) -> float:
    """Area under the precision envelope (all-point interpolation, as COCO/VOC2010+)."""
    r = np.concatenate([[0.0], recall, [1.0]])
    p = np.concatenate([[1.0], precision, [0.0]])
    p = np.flip(np.maximum.accumulate(np.flip(p)))
    return float(np.sum((r[1:] - r[:-1]) * p[1:]))


Dets = tuple[np.ndarray, np.ndarray, np.ndarray]  # boxes [N,4] xyxy, scores [N], classes [N]


def map50(ground_truth: Sequence[Dets], predictions: Sequence[Dets]) -> float:
    """mAP@0.5 over the classes present in ``ground_truth`` (per image, greedy by score)."""
    classes = sorted({int(c) for _, _, cls in ground_truth for c in cls})
    if not classes:
        return float("nan")
    aps = []
    for c in classes:
        scores, hits, total = [], [], 0
        for (gb, _, gc), (pb, ps, pc) in zip(ground_truth, predictions):
            gt = gb[gc == c]
            total += len(gt)
            used = np.zeros(len(gt), dtype=bool)
            for i in np.argsort(-ps[pc == c]):
                box, score = pb[pc == c][i], ps[pc == c][i]
                scores.append(score)
                if len(gt):
                    ious = np.where(used, -1.0, _iou(box, gt))
                    j = int(ious.argmax())
                    if ious[j] >= MATCH_IOU:
                        used[j] = True
                        hits.append(1)
                        continue
                hits.append(0)
        order = np.argsort(-np.asarray(scores))
        tp = np.cumsum(np.asarray(hits)[order]) if hits else np.zeros(0)
        recall = tp / total
        precision = tp / np.arange(1, len(tp) + 1)
        aps.append(average_precision(recall, precision))
    return float(np.mean(aps))


def _detections(outputs: dict[str, np.ndarray], box: Any, conf: float, max_det: int = 300) -> Dets:
    """The gateway's post-processing of one image's engine outputs (``max_det`` best boxes after NMS)."""
    from gateway.processing.detection import postprocess_detections

    # Every detector's engine returns the compact rows (cx, cy, w, h, score, class id), best first.
    d = postprocess_detections(outputs["detections"], box, conf, DETECT_IOU, max_det)
    return np.asarray(d.boxes), np.asarray(d.scores), np.asarray(d.classes)


def top_n_agreement(
    reference: Sequence[dict[str, np.ndarray]],
    variant: Sequence[dict[str, np.ndarray]],
    letterboxes: Sequence[Any],
    n: int = DETECT_TOP_N,
    class_aware: bool = True,
) -> float:
    """Class-aware mAP@0.5 of the variant's ``n`` best boxes per image against FP32's ``n`` best.

    Both sides go through the gateway's post-processing (class-aware NMS at :data:`DETECT_IOU`) with no
    absolute score threshold (any score above 0) and keep their ``n`` best boxes per image: FP32's are the
    ground truth, so the threshold is the ``n``-th best FP32 score of each image. 1.0 when the variant ranks
    and places the same boxes; it drops as boxes move (IoU < 0.5), change class or fall out of the top ``n``.
    NaN when FP32 has no box at all.

    Args:
        reference: FP32 engine outputs, one ``{"detections": [K, 6]}`` per image.
        variant: the variant's outputs for the same images.
        letterboxes: each image's letterbox (to map boxes back to the image, as the gateway does).
        n: boxes kept per image on both sides.
        class_aware: False scores the same top-``n`` boxes (selected by class-aware NMS) with every class
            read as one, which separates box placement from class flips.
    """
    truth = [_detections(o, b, 0.0, n) for o, b in zip(reference, letterboxes)]
    predicted = [_detections(o, b, 0.0, n) for o, b in zip(variant, letterboxes)]
    if not class_aware:  # the same boxes and ranking, every class read as one: box placement only
        truth = [(b, s, np.zeros_like(c)) for b, s, c in truth]
        predicted = [(b, s, np.zeros_like(c)) for b, s, c in predicted]
    return map50(truth, predicted)


def evaluate_model(
    repo: pathlib.Path,
    name: str,
    precisions: Sequence[str],
    sets: dict[str, pathlib.Path],
    limit: int | None = None,
    load: Callable[[pathlib.Path], Engine] = OnnxRuntimeEngine,
) -> list[Evaluation]:
    """Evaluate the built variants of ``name`` (those of ``precisions`` that exist) against its FP32 engine."""
    spec = SPECS[name]
    base_manifest = Manifest.read(repo / name / "1")
    variants = [
        p for p in precisions if p != "fp32" and (repo / variant_name(name, p) / "1" / "manifest.json").exists()
    ]
    if not variants:
        return []
    engines = {p: load(repo / variant_name(name, p) / "1" / "model.onnx") for p in ("fp32", *variants)}
    results = []
    if spec.task == "qa":
        from gateway.processing.qa import decode_spans

        path = sets["eval_qa.jsonl"]
        seq_len = int(spec.configs[str(base_manifest.config.get("size", "full"))].seq_len)
        pairs = list(qa_features(path, limit, seq_len))
        spans: dict[str, list[tuple[int, int] | None]] = {}
        for p, engine in engines.items():
            spans[p] = []
            for pair, features in pairs:
                out = engine.run({n: getattr(features, n) for n in spec.input_names})
                best = decode_spans(out["start_logits"], out["end_logits"], features, pair["context"], 20, 30, 1)
                spans[p].append((best[0].start, best[0].end) if best else None)
        count, sha = len(pairs), set_sha256(path, len(pairs))
        metrics = {
            p: {"exact_match": float(np.mean([a == b for a, b in zip(spans["fp32"], spans[p])]))} for p in variants
        }
    else:
        from gateway.processing.images import detect_input

        path = sets["eval_images"]
        files = image_files(path)[:limit]
        count, sha = len(files), set_sha256(path, len(files))
        cfg = spec.configs[str(base_manifest.config.get("size", "full"))]
        rows = [{spec.input_names[0]: preprocess_image(spec, cfg, f.read_bytes())} for f in files]
        outputs = {p: _run_batched(engine, rows) for p, engine in engines.items()}
        if spec.task == "classify":
            stacked = {p: np.stack([o["logits"] for o in outs]) for p, outs in outputs.items()}
            metrics = {p: classification_agreement(stacked["fp32"], stacked[p]) for p in variants}
        else:
            size = int(cfg.img_size)
            boxes = [detect_input(f.read_bytes(), 1 << 30, 0.0, size)[1] for f in files]
            truth = [_detections(o, b, DETECT_GT_CONF) for o, b in zip(outputs["fp32"], boxes)]
            metrics = {}
            for p in variants:
                predicted = [_detections(o, b, DETECT_PRED_CONF) for o, b in zip(outputs[p], boxes)]
                metrics[p] = {
                    "map50_vs_fp32": map50(truth, predicted),
                    "fp32_boxes_per_image": float(np.mean([len(t[0]) for t in truth])),
                    f"map50_top{DETECT_TOP_N}_vs_fp32": top_n_agreement(outputs["fp32"], outputs[p], boxes),
                    f"map50_top{DETECT_TOP_N}_class_agnostic_vs_fp32": top_n_agreement(
                        outputs["fp32"], outputs[p], boxes, class_aware=False
                    ),
                }
    for p in variants:
        results.append(Evaluation(variant_name(name, p), p, base_manifest.weights, metrics[p], count, sha))
    return results


def format_table(results: Sequence[Evaluation]) -> str:
    lines = [f"{'model':<26} {'precision':<9} {'weights':<10} {'n':>4}  metrics (agreement with fp32)"]
    for r in results:
        metrics = "  ".join(f"{k} {v:.4f}" for k, v in r.metrics.items())
        note = "  (untrained weights: agreement of random functions)" if r.weights == "untrained" else ""
        lines.append(f"{r.model:<26} {r.precision:<9} {r.weights:<10} {r.count:>4}  {metrics}{note}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m magicmind_build.evaluate", description=__doc__)
    parser.add_argument("--repo", type=pathlib.Path, default=pathlib.Path("triton_repo"))
    parser.add_argument("--models", nargs="+", choices=sorted(SPECS), default=sorted(SPECS))
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS[1:], default=list(PRECISIONS[1:]))
    parser.add_argument("--sets", type=pathlib.Path, default=None, help="where the generated sets are (or go)")
    parser.add_argument("--limit", type=int, default=None, help="evaluate the first N items only")
    parser.add_argument("--no-write", action="store_true", help="do not write the results into the manifests")
    parser.add_argument("--json", type=pathlib.Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sets = ensure_sets(args.sets)
    results: list[Evaluation] = []
    for name in args.models:
        if not (args.repo / name / "1" / "manifest.json").exists():
            continue
        LOGGER.info("%s: evaluating %s against fp32", name, args.precisions)
        for result in evaluate_model(args.repo, name, args.precisions, sets, args.limit):
            results.append(result)
            if not args.no_write:
                directory = args.repo / result.model / "1"
                manifest = Manifest.read(directory)
                dataclasses.replace(manifest, accuracy=result.as_manifest_entry(name)).write(directory)
    sys.stdout.write(format_table(results) + "\n")
    if args.json is not None:
        args.json.write_text(json.dumps([dataclasses.asdict(r) for r in results], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
