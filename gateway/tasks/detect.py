"""Object detection: YOLOv5 or NanoDet, both returning ``detections`` [B, 3000, 6], one post-processing."""

from __future__ import annotations

import dataclasses

import numpy as np

from gateway.catalog import ModelInfo
from gateway.image_budget import ImageBudget
from gateway.metrics import Metrics
from gateway.model_io import ModelIO, resolve
from gateway.processing.detection import Detections, postprocess_detections
from gateway.processing.images import Letterbox, detect_input
from gateway.settings import Settings
from gateway.shared_memory import Region
from gateway.tasks.base import ImageTask
from gateway.triton import TritonClient

INPUT = ImageTask.INPUT  # [B, size, size, 3] uint8, letterboxed
OUTPUT = "detections"  # cx, cy, w, h, score, class_id; the best 3000 per image, best first (72 kB)


def is_nanodet(model: ModelInfo) -> bool:
    return (model.architecture or model.name).startswith("nanodet")


@dataclasses.dataclass(frozen=True)
class DetectQuery:
    """Args:
    image: the encoded image.
    conf_threshold: minimum objectness x class probability; None: ``settings.detect_conf_threshold``.
    iou_threshold: NMS IoU threshold; None: ``settings.detect_iou_threshold``.
    """

    image: bytes
    conf_threshold: float | None = None
    iou_threshold: float | None = None


@dataclasses.dataclass(frozen=True)
class DetectResult:
    """Args:
    detections: boxes in the original image's pixels, scores and class ids.
    width, height: the original (EXIF-upright) image's size.
    """

    detections: Detections
    width: int
    height: int


@dataclasses.dataclass(frozen=True)
class DetectFeatures:
    """Args:
    tensor: the model input [1, size, size, 3] uint8 (a view of ``region`` when there is one).
    letterbox: the letterbox geometry.
    region: the shared-memory region that holds ``tensor``; None: it travels over gRPC.
    """

    tensor: np.ndarray
    letterbox: Letterbox
    region: Region | None = None


class DetectTask(ImageTask[DetectQuery, DetectFeatures, DetectResult]):
    TASK = "detect"

    def __init__(
        self,
        model: ModelInfo,
        client: TritonClient,
        metrics: Metrics,
        settings: Settings,
        budget: ImageBudget | None = None,
    ) -> None:
        super().__init__(model, client, metrics, settings, budget)
        self.nanodet = is_nanodet(model)
        self.img_size = 0  # from the model's configuration: bind()

    def bind(self, io: ModelIO) -> None:
        super().bind(io)
        size = io.image_size()
        # detect_img_size is the YOLO-format detectors' setting; NanoDet always follows its model.
        self.img_size = (
            size if self.nanodet else resolve("detect_img_size", self.settings.detect_img_size, size, io.name)
        )

    def input_bytes(self) -> int:
        return 3 * self.img_size**2

    def preprocess(self, request: DetectQuery, region: Region | None) -> DetectFeatures:
        s = self.settings
        out = None if region is None else region.array(np.uint8, (self.img_size, self.img_size, 3))
        canvas, box = detect_input(
            request.image,
            s.max_image_pixels,
            s.max_image_aspect_ratio,
            self.img_size,
            reduced_decode=s.reduced_decode,
            out=out,
            fast_jpeg=s.fast_jpeg,
            max_jpeg_scans=s.max_jpeg_scans,
            max_segments=s.max_image_segments,
        )
        return DetectFeatures(canvas[None], box, region)

    async def infer(self, features: DetectFeatures) -> dict[str, np.ndarray]:
        placed = None if features.region is None else {INPUT: features.region}
        return await self._infer_rows({INPUT: features.tensor}, [OUTPUT], placed)

    def postprocess(
        self, request: DetectQuery, features: DetectFeatures, outputs: dict[str, np.ndarray]
    ) -> DetectResult:
        conf = self.settings.detect_conf_threshold if request.conf_threshold is None else request.conf_threshold
        iou = self.settings.detect_iou_threshold if request.iou_threshold is None else request.iou_threshold
        detections = postprocess_detections(
            outputs[OUTPUT][0], features.letterbox, conf, iou, self.settings.detect_max_det
        )
        return DetectResult(detections, features.letterbox.width, features.letterbox.height)
