"""Image classification (ResNet50-vd, EfficientNet-Lite0)."""

from __future__ import annotations

import dataclasses

import numpy as np

from gateway.model_io import ModelIO, ShapeMismatch, resolve
from gateway.processing.classification import top_k
from gateway.processing.images import classify_input
from gateway.shared_memory import Region
from gateway.tasks.base import ImageTask

OUTPUT = "logits"


@dataclasses.dataclass(frozen=True)
class ClassifyQuery:
    """Args:
    image: the encoded image.
    top_k: how many classes to return; None: ``settings.classify_top_k``.
    """

    image: bytes
    top_k: int | None = None


@dataclasses.dataclass(frozen=True)
class ClassifyFeatures:
    """Args:
    tensor: the model input [1, crop, crop, 3] uint8 (a view of ``region`` when there is one).
    region: the shared-memory region that holds ``tensor``; None: it travels over gRPC.
    """

    tensor: np.ndarray
    region: Region | None = None


class ClassifyTask(ImageTask[ClassifyQuery, ClassifyFeatures, list[tuple[int, float]]]):
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

    def input_bytes(self) -> int:
        return 3 * self.crop**2

    def preprocess(self, request: ClassifyQuery, region: Region | None) -> ClassifyFeatures:
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
        if region is None:
            return ClassifyFeatures(crop[None])
        tensor = region.array(np.uint8, (1, self.crop, self.crop, 3))
        tensor[0] = crop  # 150 kB at 224x224: microseconds, and the gRPC message no longer carries it
        return ClassifyFeatures(tensor, region)

    def inline_postprocess(self, request: ClassifyQuery, features: ClassifyFeatures) -> bool:
        return True  # top-k of one row of logits: microseconds

    async def infer(self, features: ClassifyFeatures) -> dict[str, np.ndarray]:
        placed = None if features.region is None else {self.INPUT: features.region}
        return await self._infer_rows({self.INPUT: features.tensor}, [OUTPUT], placed)

    def postprocess(
        self, request: ClassifyQuery, features: ClassifyFeatures, outputs: dict[str, np.ndarray]
    ) -> list[tuple[int, float]]:
        return top_k(outputs[OUTPUT][0], request.top_k or self.settings.classify_top_k)
