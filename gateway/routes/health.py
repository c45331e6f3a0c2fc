from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from gateway.deps import ServicesDep
from gateway.schemas import ModelsResponse, ModelStatus

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Liveness: the gateway process answers."""
    return {"status": "ok"}


async def _statuses(services: ServicesDep) -> tuple[bool, list[ModelStatus]]:
    server = await services.client.server_ready()
    ready = await asyncio.gather(*(services.client.model_ready(m.name) for m in services.models))
    return server, [ModelStatus(**m.model_dump(), ready=r) for m, r in zip(services.models, ready)]


@router.get("/readyz", responses={503: {"description": "Triton or a served model is not ready"}})
async def readyz(services: ServicesDep) -> JSONResponse:
    """Readiness: Triton is ready and so is every model the gateway serves (503 otherwise)."""
    server, models = await _statuses(services)
    ok = server and all(m.ready for m in models)
    body = {"status": "ready" if ok else "not ready", "triton": server, "models": {m.name: m.ready for m in models}}
    return JSONResponse(body, status_code=200 if ok else 503)


@router.get("/models", response_model=ModelsResponse)
async def models(services: ServicesDep) -> ModelsResponse:
    """Served models, their readiness and weights provenance (``untrained`` = random init)."""
    _, statuses = await _statuses(services)
    defaults = {
        "qa": services.qa.model.name,
        "detect": services.detect.model.name,
        "classify": services.classifier(None).model.name,
    }
    return ModelsResponse(models=statuses, defaults=defaults)
