"""Typed request and response bodies."""

from __future__ import annotations

from pydantic import BaseModel, Field

from gateway.catalog import ModelInfo


class ErrorDetail(BaseModel):
    code: str = Field(description="stable machine-readable error code")
    message: str
    details: list[dict[str, object]] | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class QARequest(BaseModel):
    question: str = Field(min_length=1, max_length=2_000, examples=["Who wrote the report?"])
    context: str = Field(min_length=1, examples=["The report was written by Ada Lovelace in 1843."])
    top_k: int = Field(default=1, ge=1, le=20, description="number of answer spans to return")


class Answer(BaseModel):
    text: str
    start: int = Field(description="character offset of the answer in the context")
    end: int = Field(description="end character offset (exclusive)")
    score: float = Field(description="start logit + end logit")
    probability: float = Field(description="softmax of the score over the n-best candidates")


class QAResponse(BaseModel):
    answer: str = Field(description="the best answer; empty when no valid span exists")
    answers: list[Answer]
    windows: int = Field(description="context windows the question was run on")
    model: ModelInfo


class Detection(BaseModel):
    box: tuple[float, float, float, float] = Field(description="x1, y1, x2, y2 in original image pixels")
    score: float
    class_id: int
    label: str


class ImageSize(BaseModel):
    width: int
    height: int


class DetectResponse(BaseModel):
    detections: list[Detection]
    image: ImageSize
    model: ModelInfo


class Prediction(BaseModel):
    class_id: int
    label: str
    probability: float


class ClassifyResponse(BaseModel):
    predictions: list[Prediction]
    model: ModelInfo


class ModelStatus(ModelInfo):
    ready: bool
    reason: str | None = Field(default=None, description="why the model cannot serve; null when ready")


class ModelsResponse(BaseModel):
    models: list[ModelStatus]
