from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from gateway.deps import services_of
from gateway.routes._http import error_responses, model_response
from gateway.schemas import Answer, QARequest, QAResponse
from gateway.tasks.qa import QAQuery

router = APIRouter(tags=["qa"])


@router.post("/qa", response_model=QAResponse, responses=error_responses(404))
async def answer_question(
    body: QARequest,
    request: Request,
    model: Annotated[
        str | None, Query(description="bert_qa (default) or a built precision variant, e.g. bert_qa_int8")
    ] = None,
) -> Response:
    """Extractive question answering over ``context`` (SQuAD style)."""
    task = services_of(request).answerer(model)
    result = await task(QAQuery(body.question, body.context, body.top_k))
    answers = [Answer.model_validate(span, from_attributes=True) for span in result.spans]
    content = QAResponse(
        answer=answers[0].text if answers else "", answers=answers, windows=result.windows, model=task.model
    )
    return model_response(content, task.model)
