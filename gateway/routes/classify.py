from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from gateway.deps import services_of, settings_of
from gateway.labels import imagenet
from gateway.routes._http import IMAGE_BODY, error_responses, image_upload, model_response, read_upload
from gateway.schemas import ClassifyResponse, Prediction
from gateway.tasks.classify import ClassifyQuery

router = APIRouter(tags=["classify"])


@router.post(
    "/classify", response_model=ClassifyResponse, responses=error_responses(404, 415), openapi_extra=IMAGE_BODY
)
async def classify_image(
    request: Request,
    model: Annotated[str | None, Query(description="resnet50_vd (default) or efficientnet_lite0")] = None,
    top_k: Annotated[int | None, Query(ge=1, le=1000)] = None,
) -> Response:
    """ImageNet-1k classification: resize 256, centre crop 224, softmax top-k."""
    services, settings = services_of(request), settings_of(request)
    # The body is documented by IMAGE_BODY.
    upload = await image_upload(request, settings.max_form_parts, settings.max_header_bytes)
    task = services.classifier(model)
    data = read_upload(upload, settings.max_upload_bytes)
    ranked = await task(ClassifyQuery(data, top_k))
    names = imagenet()
    content = ClassifyResponse(
        predictions=[Prediction(class_id=i, label=names[i], probability=p) for i, p in ranked], model=task.model
    )
    return model_response(content, task.model)
