"""Image classification (ResNet50-vd, EfficientNet-Lite0)."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator

import numpy as np

from gateway.catalog import ModelInfo
from gateway.image_budget import ImageBudget
from gateway.metrics import Metrics
from gateway.processing.classification import top_k
from gateway.processing.images import load_image, read_header, resize_center_crop
from gateway.settings import Settings
from gateway.tasks.base import Task
from gateway.triton import TritonClient


@dataclasses.dataclass(frozen=True)
class ClassifyQuery:
    """Args:
    image: the encoded image.
    top_k: how many classes to return.
    """

    image: bytes
    top_k: int


class ClassifyTask(Task[ClassifyQuery, np.ndarray, list[tuple[int, float]]]):
    def __init__(
        self,
        model: ModelInfo,
        client: TritonClient,
        metrics: Metrics,
        settings: Settings,
        budget: ImageBudget | None = None,
    ) -> None:
        super().__init__("classify", model, client, metrics)
        self.settings = settings
        self.budget = budget or ImageBudget(settings.image_decode_budget_bytes, settings.image_decode_wait_s)

    @contextlib.asynccontextmanager
    async def admitted(self, request: ClassifyQuery) -> AsyncIterator[None]:
        """Refuse by the header alone, then hold the image's decoding cost in the shared budget."""
        header = read_header(request.image, self.settings.max_image_pixels, self.settings.max_image_aspect_ratio)
        async with self.budget.reserve(header.decode_bytes):
            yield

    def preprocess(self, request: ClassifyQuery) -> np.ndarray:
        image = load_image(request.image, self.settings.max_image_pixels, self.settings.max_image_aspect_ratio)
        return resize_center_crop(image, self.settings.classify_resize, self.settings.classify_crop)[None]

    async def infer(self, features: np.ndarray) -> dict[str, np.ndarray]:
        return await self._infer_rows({"images": features}, ["logits"])

    def postprocess(
        self, request: ClassifyQuery, features: np.ndarray, outputs: dict[str, np.ndarray]
    ) -> list[tuple[int, float]]:
        return top_k(outputs["logits"][0], request.top_k)
