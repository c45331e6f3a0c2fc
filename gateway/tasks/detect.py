"""Object detection with YOLOv5."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator

import numpy as np

from gateway.catalog import ModelInfo
from gateway.image_budget import ImageBudget
from gateway.metrics import Metrics
from gateway.processing.detection import Detections, postprocess_detections
from gateway.processing.images import Letterbox, letterbox, load_image, read_header
from gateway.settings import Settings
from gateway.shared_memory import OutputRegions
from gateway.tasks.base import Task
from gateway.triton import TritonClient

OUTPUT = "output0"


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


class DetectTask(Task[DetectQuery, DetectFeatures, tuple[Detections, Letterbox]]):
    def __init__(
        self,
        model: ModelInfo,
        client: TritonClient,
        metrics: Metrics,
        settings: Settings,
        budget: ImageBudget | None = None,
    ) -> None:
        super().__init__("detect", model, client, metrics)
        self.settings = settings
        self.budget = budget or ImageBudget(settings.image_decode_budget_bytes, settings.image_decode_wait_s)
        self._regions: OutputRegions | None = None

    @contextlib.asynccontextmanager
    async def admitted(self, request: DetectQuery) -> AsyncIterator[None]:
        """Refuse by the header alone, then hold the image's decoding cost in the shared budget."""
        header = read_header(request.image, self.settings.max_image_pixels, self.settings.max_image_aspect_ratio)
        async with self.budget.reserve(header.decode_bytes):
            yield

    def preprocess(self, request: DetectQuery) -> DetectFeatures:
        image = load_image(request.image, self.settings.max_image_pixels, self.settings.max_image_aspect_ratio)
        canvas, box = letterbox(image, self.settings.detect_img_size)
        return DetectFeatures(canvas[None], box)

    async def infer(self, features: DetectFeatures) -> dict[str, np.ndarray]:
        return await self._infer_rows({"images": features.tensor}, [OUTPUT], await self._output_regions())

    async def _output_regions(self) -> OutputRegions | None:
        """The shared-memory pool for the 8.5 MB output, when enabled (created on first use)."""
        if not self.settings.triton_shared_memory:
            return None
        if self._regions is None:
            nbytes = await self.client.output_nbytes(self.model.name, OUTPUT)
            self._regions = OutputRegions(OUTPUT, nbytes, self.settings.triton_shared_memory_regions)
        return self._regions

    async def close(self) -> None:
        if self._regions is not None:
            await self.client.close_regions(self._regions)

    def postprocess(
        self, request: DetectQuery, features: DetectFeatures, outputs: dict[str, np.ndarray]
    ) -> tuple[Detections, Letterbox]:
        detections = postprocess_detections(
            outputs[OUTPUT][0],
            features.letterbox,
            request.conf_threshold,
            request.iou_threshold,
            self.settings.detect_max_det,
        )
        return detections, features.letterbox
