from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Query, Response, UploadFile

from gateway.deps import ServicesDep, SettingsDep
from gateway.labels import imagenet
from gateway.routes._http import error_responses, read_upload, set_model_headers
from gateway.schemas import ClassifyResponse, Prediction
from gateway.tasks.classify import ClassifyQuery

router = APIRouter(tags=["classify"])


@router.post("/classify", response_model=ClassifyResponse, responses=error_responses(404, 415))
async def classify_image(
    file: Annotated[UploadFile, File(description="JPEG, PNG or WebP image")],
    services: ServicesDep,
    settings: SettingsDep,
    response: Response,
    model: Annotated[str | None, Query(description="resnet50_vd (default) or efficientnet_lite0")] = None,
    top_k: Annotated[int | None, Query(ge=1, le=1000)] = None,
) -> ClassifyResponse:
    """ImageNet-1k classification: resize 256, centre crop 224, softmax top-k."""
    task = services.classifier(model)
    data = await read_upload(file, settings.max_upload_bytes)
    ranked = await task(ClassifyQuery(data, top_k))
    set_model_headers(response, task.model)
    names = imagenet()
    return ClassifyResponse(
        predictions=[Prediction(class_id=i, label=names[i], probability=p) for i, p in ranked], model=task.model
    )
