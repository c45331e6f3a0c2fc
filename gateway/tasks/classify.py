"""Image classification (ResNet50-vd, EfficientNet-Lite0)."""

from __future__ import annotations

import dataclasses

import numpy as np

from gateway.processing.classification import top_k
from gateway.processing.images import classify_input
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
        s = self.settings
        crop = classify_input(
            request.image,
            s.max_image_pixels,
            s.max_image_aspect_ratio,
            s.classify_resize,
            s.classify_crop,
            s.reduced_decode,
        )
        return crop[None]

    def inline_postprocess(self, request: ClassifyQuery, features: np.ndarray) -> bool:
        return True  # top-k of one row of logits: microseconds

    async def infer(self, features: np.ndarray) -> dict[str, np.ndarray]:
        return await self._infer_rows({"images": features}, ["logits"])

    def postprocess(
        self, request: ClassifyQuery, features: np.ndarray, outputs: dict[str, np.ndarray]
    ) -> list[tuple[int, float]]:
        return top_k(outputs["logits"][0], request.top_k)
