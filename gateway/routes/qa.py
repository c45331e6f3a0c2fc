from __future__ import annotations

from fastapi import APIRouter, Response

from gateway.deps import ServicesDep
from gateway.routes._http import error_responses, set_model_headers
from gateway.schemas import Answer, QARequest, QAResponse
from gateway.tasks.qa import QAQuery

router = APIRouter(tags=["qa"])


@router.post("/qa", response_model=QAResponse, responses=error_responses())
async def answer_question(body: QARequest, services: ServicesDep, response: Response) -> QAResponse:
    """Extractive question answering over ``context`` (SQuAD style)."""
    task = services.qa
    result = await task(QAQuery(body.question, body.context, body.top_k))
    set_model_headers(response, task.model)
    answers = [Answer.model_validate(span, from_attributes=True) for span in result.spans]
    return QAResponse(
        answer=answers[0].text if answers else "", answers=answers, windows=result.windows, model=task.model
    )
