"""Image classification (ResNet50-vd, EfficientNet-Lite0)."""

from __future__ import annotations

import dataclasses

import numpy as np

from gateway.model_io import ModelIO, ShapeMismatch, resolve
from gateway.processing.classification import top_k
from gateway.processing.images import classify_input
from gateway.tasks.base import ImageTask


@dataclasses.dataclass(frozen=True)
class ClassifyQuery:
    """Args:
    image: the encoded image.
    top_k: how many classes to return; None: ``settings.classify_top_k``.
    """

    image: bytes
    top_k: int | None = None


class ClassifyTask(ImageTask[ClassifyQuery, np.ndarray, list[tuple[int, float]]]):
    TASK = "classify"
    crop: int

    def bind(self, io: ModelIO) -> None:
        super().bind(io)
        self.crop = resolve("classify_crop", self.settings.classify_crop, io.image_size(), io.name)
        if self.settings.classify_resize < self.crop:
            raise ShapeMismatch(
                f"GATEWAY_CLASSIFY_RESIZE={self.settings.classify_resize} is smaller than {io.name}'s "
                f"{self.crop}-pixel crop"
            )

    def preprocess(self, request: ClassifyQuery) -> np.ndarray:
        s = self.settings
        crop = classify_input(
            request.image,
            s.max_image_pixels,
            s.max_image_aspect_ratio,
            s.classify_resize,
            self.crop,
            s.reduced_decode,
            s.fast_jpeg,
            s.max_jpeg_scans,
            s.max_image_segments,
        )
        return crop[None]

    def inline_postprocess(self, request: ClassifyQuery, features: np.ndarray) -> bool:
        return True  # top-k of one row of logits: microseconds

    async def infer(self, features: np.ndarray) -> dict[str, np.ndarray]:
        return await self._infer_rows({"images": features}, ["logits"])

    def postprocess(
        self, request: ClassifyQuery, features: np.ndarray, outputs: dict[str, np.ndarray]
    ) -> list[tuple[int, float]]:
        return top_k(outputs["logits"][0], request.top_k or self.settings.classify_top_k)
