"""Object detection: YOLOv5 or NanoDet, both returning ``detections`` [B, 3000, 6], one post-processing."""

from __future__ import annotations

import asyncio
import dataclasses

import numpy as np

from gateway.catalog import ModelInfo
from gateway.image_budget import ImageBudget
from gateway.metrics import Metrics
from gateway.model_io import ModelIO, resolve
from gateway.processing.detection import Detections, postprocess_detections
from gateway.processing.images import Letterbox, detect_input
from gateway.settings import Settings
from gateway.shared_memory import OutputRegions
from gateway.tasks.base import ImageTask
from gateway.triton import TritonClient

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
    tensor: np.ndarray
    letterbox: Letterbox


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
        # The task is the one owner of its shared-memory pool; the lock makes concurrent first
        # requests share one pool instead of each creating (and one leaking) its own.
        self._regions: OutputRegions | None = None
        self._regions_lock = asyncio.Lock()
        self.nanodet = is_nanodet(model)
        self.img_size = 0  # from the model's configuration: bind()

    def bind(self, io: ModelIO) -> None:
        super().bind(io)
        size = io.image_size()
        # detect_img_size is the YOLO-format detectors' setting; NanoDet always follows its model.
        self.img_size = (
            size if self.nanodet else resolve("detect_img_size", self.settings.detect_img_size, size, io.name)
        )

    def preprocess(self, request: DetectQuery) -> DetectFeatures:
        s = self.settings
        canvas, box = detect_input(
            request.image, s.max_image_pixels, s.max_image_aspect_ratio, self.img_size, reduced_decode=s.reduced_decode
        )
        return DetectFeatures(canvas[None], box)

    async def infer(self, features: DetectFeatures) -> dict[str, np.ndarray]:
        return await self._infer_rows({"images": features.tensor}, [OUTPUT], await self._output_regions())

    async def _output_regions(self) -> OutputRegions | None:
        """The shared-memory pool for the output, when enabled (created on first use)."""
        if not self.settings.triton_shared_memory:
            return None
        if self._regions is None:
            async with self._regions_lock:
                if self._regions is None:  # another request may have created it while we waited
                    nbytes = await self.client.output_nbytes(self.model.name, OUTPUT)
                    self._regions = OutputRegions(
                        OUTPUT, nbytes, self.settings.triton_shared_memory_regions, self.settings.triton_timeout_s
                    )
        return self._regions

    async def close(self) -> None:
        async with self._regions_lock:
            regions, self._regions = self._regions, None
            if regions is not None:
                await self.client.close_regions(regions)

    def postprocess(
        self, request: DetectQuery, features: DetectFeatures, outputs: dict[str, np.ndarray]
    ) -> DetectResult:
        conf = self.settings.detect_conf_threshold if request.conf_threshold is None else request.conf_threshold
        iou = self.settings.detect_iou_threshold if request.iou_threshold is None else request.iou_threshold
        detections = postprocess_detections(
            outputs[OUTPUT][0], features.letterbox, conf, iou, self.settings.detect_max_det
        )
        return DetectResult(detections, features.letterbox.width, features.letterbox.height)
