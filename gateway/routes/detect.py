from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from gateway.deps import services_of, settings_of
from gateway.labels import coco
from gateway.routes._http import IMAGE_BODY, error_responses, image_upload, model_response, read_upload
from gateway.schemas import Detection, DetectResponse, ImageSize
from gateway.tasks.detect import DetectQuery

router = APIRouter(tags=["detect"])


@router.post("/detect", response_model=DetectResponse, responses=error_responses(404, 415), openapi_extra=IMAGE_BODY)
async def detect_objects(
    request: Request,
    conf_threshold: Annotated[float | None, Query(gt=0.0, lt=1.0)] = None,
    iou_threshold: Annotated[float | None, Query(gt=0.0, le=1.0)] = None,
    model: Annotated[
        str | None, Query(description="nanodet (pretrained, the default) or yolov5n; GET /models lists them")
    ] = None,
) -> Response:
    """COCO object detection; boxes are in the uploaded image's (EXIF-upright) pixels."""
    services, settings = services_of(request), settings_of(request)
    # The body is documented by IMAGE_BODY.
    upload = await image_upload(request, settings.max_form_parts, settings.max_header_bytes)
    task = services.detector(model)
    data = read_upload(upload, settings.max_upload_bytes)
    result = await task(DetectQuery(data, conf_threshold, iou_threshold))
    detections = result.detections
    names = coco()
    content = DetectResponse(
        detections=[
            Detection(box=tuple(float(v) for v in b), score=float(s), class_id=int(c), label=names[int(c)])  # type: ignore[arg-type]
            for b, s, c in zip(detections.boxes, detections.scores, detections.classes)
        ],
        image=ImageSize.model_validate(result, from_attributes=True),
        model=task.model,
    )
    return model_response(content, task.model)
