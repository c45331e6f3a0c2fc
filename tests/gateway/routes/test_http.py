"""``model_response`` sends what FastAPI sends for a route returning the model under ``response_model``."""

from __future__ import annotations

import math

import pytest
from fastapi import FastAPI, Response
from fastapi.testclient import TestClient
from pydantic import BaseModel

from gateway.catalog import ModelInfo
from gateway.routes._http import model_response, set_model_headers
from gateway.schemas import (
    Answer,
    ClassifyResponse,
    Detection,
    DetectResponse,
    ImageSize,
    Prediction,
    QAResponse,
)

pytestmark = pytest.mark.unit

INFO = ModelInfo(
    name="bert_qa_int8",
    task="qa",
    weights="untrained",
    precision="int8",
    config={"max_len": 384, "scale": 0.1, "names": ["a", "é"]},
    calibration={"method": "entropy", "count": 3},
)
# Floats whose text is easy to get wrong: tiny, huge, negative zero, many digits, non-finite (null).
FLOATS = [1e-7, 123456789.125, -0.0, 1 / 3, 0.1 + 0.2, math.inf, math.nan]

CONTENTS: list[BaseModel] = [
    ClassifyResponse(
        predictions=[Prediction(class_id=i, label=f'label {i} "q" ☃', probability=p) for i, p in enumerate(FLOATS)],
        model=INFO,
    ),
    DetectResponse(
        detections=[Detection(box=(p, 0.5, 2.0, -1.25), score=p, class_id=3, label="cat") for p in FLOATS],
        image=ImageSize(width=640, height=480),
        model=INFO,
    ),
    QAResponse(
        answer="Ada\nLovelace",
        answers=[Answer(text="Ada\nLovelace", start=0, end=12, score=p, probability=p) for p in FLOATS],
        windows=2,
        model=INFO,
    ),
    QAResponse(answer="", answers=[], windows=1, model=ModelInfo(name="bert_qa", task="qa", weights="unknown")),
]


@pytest.mark.parametrize("content", CONTENTS, ids=lambda c: type(c).__name__)
def test_model_response_equals_fastapis_response_model_answer(content: BaseModel) -> None:
    app = FastAPI()

    @app.get("/fastapi", response_model=type(content))
    async def by_fastapi(response: Response) -> BaseModel:
        set_model_headers(response, INFO)
        return content

    @app.get("/ours", response_model=type(content))
    async def by_us() -> Response:
        return model_response(content, INFO)

    with TestClient(app) as client:
        theirs, ours = client.get("/fastapi"), client.get("/ours")
    assert theirs.status_code == ours.status_code == 200
    assert ours.content == theirs.content
    assert ours.headers.items() == theirs.headers.items()  # names, values and order
