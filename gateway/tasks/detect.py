"""Object detection: YOLOv5 (``output0``) or NanoDet (``scores`` + ``distances``), one post-processing."""

from __future__ import annotations

import asyncio
import dataclasses

import numpy as np

from gateway.catalog import ModelInfo
from gateway.image_budget import ImageBudget
from gateway.metrics import Metrics
from gateway.processing.detection import Detections, postprocess_detections
from gateway.processing.images import Letterbox, detect_input
from gateway.processing.nanodet import nanodet_to_yolo
from gateway.settings import Settings
from gateway.shared_memory import OutputRegions
from gateway.tasks.base import ImageTask
from gateway.triton import TritonClient

OUTPUT = "output0"
NANODET_OUTPUTS = ("scores", "distances")
NANODET_IMG_SIZE = 416  # the shipped graph's input; a manifest's ``config.img_size`` takes precedence


def is_nanodet(model: ModelInfo) -> bool:
    return (model.architecture or model.name).startswith("nanodet")


@dataclasses.dataclass(frozen=True)
class DetectQuery:
    """Args:
    image: the encoded image.
    conf_threshold: minimum objectness x class probability.
    iou_threshold: NMS IoU threshold.
    """

    image: bytes
    conf_threshold: float
    iou_threshold: float


@dataclasses.dataclass(frozen=True)
class DetectFeatures:
    tensor: np.ndarray
    letterbox: Letterbox


class DetectTask(ImageTask[DetectQuery, DetectFeatures, tuple[Detections, Letterbox]]):
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
        config_size = (model.config or {}).get("img_size")
        default_size = NANODET_IMG_SIZE if self.nanodet else settings.detect_img_size
        self.img_size = int(config_size) if self.nanodet and isinstance(config_size, int) else default_size

    def preprocess(self, request: DetectQuery) -> DetectFeatures:
        s = self.settings
        canvas, box = detect_input(
            request.image, s.max_image_pixels, s.max_image_aspect_ratio, self.img_size, reduced_decode=s.reduced_decode
        )
        return DetectFeatures(canvas[None], box)

    async def infer(self, features: DetectFeatures) -> dict[str, np.ndarray]:
        if self.nanodet:  # 1.7 MB of outputs: plain gRPC
            return await self._infer_rows({"images": features.tensor}, list(NANODET_OUTPUTS), None)
        return await self._infer_rows({"images": features.tensor}, [OUTPUT], await self._output_regions())

    async def _output_regions(self) -> OutputRegions | None:
        """The shared-memory pool for the 8.5 MB output, when enabled (created on first use)."""
        if not self.settings.triton_shared_memory:
            return None
        if self._regions is None:
            async with self._regions_lock:
                if self._regions is None:  # another request may have created it while we waited
                    nbytes = await self.client.output_nbytes(self.model.name, OUTPUT)
                    self._regions = OutputRegions(OUTPUT, nbytes, self.settings.triton_shared_memory_regions)
        return self._regions

    async def close(self) -> None:
        async with self._regions_lock:
            regions, self._regions = self._regions, None
            if regions is not None:
                await self.client.close_regions(regions)

    def postprocess(
        self, request: DetectQuery, features: DetectFeatures, outputs: dict[str, np.ndarray]
    ) -> tuple[Detections, Letterbox]:
        if self.nanodet:
            prediction = nanodet_to_yolo(outputs["scores"][0], outputs["distances"][0], self.img_size)
        else:
            prediction = outputs[OUTPUT][0]
        detections = postprocess_detections(
            prediction,
            features.letterbox,
            request.conf_threshold,
            request.iou_threshold,
            self.settings.detect_max_det,
        )
        return detections, features.letterbox
