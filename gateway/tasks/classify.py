"""Image classification (ResNet50-vd, EfficientNet-Lite0)."""

from __future__ import annotations

import dataclasses

import numpy as np

from gateway.processing.classification import top_k
from gateway.processing.images import resize_center_crop
from gateway.tasks.base import ImageTask


@dataclasses.dataclass(frozen=True)
class ClassifyQuery:
    """Args:
    image: the encoded image.
    top_k: how many classes to return.
    """

    image: bytes
    top_k: int


class ClassifyTask(ImageTask[ClassifyQuery, np.ndarray, list[tuple[int, float]]]):
    TASK = "classify"

    def preprocess(self, request: ClassifyQuery) -> np.ndarray:
        image = self.load(request)
        return resize_center_crop(image, self.settings.classify_resize, self.settings.classify_crop)[None]

    async def infer(self, features: np.ndarray) -> dict[str, np.ndarray]:
        return await self._infer_rows({"images": features}, ["logits"])

    def postprocess(
        self, request: ClassifyQuery, features: np.ndarray, outputs: dict[str, np.ndarray]
    ) -> list[tuple[int, float]]:
        return top_k(outputs["logits"][0], request.top_k)
