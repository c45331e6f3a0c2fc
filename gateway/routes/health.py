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
    """Triton's readiness, and per model: Triton's model-ready and the cached health view.

    Triton's model-ready stays true for a model whose stub died; the health view (probe
    inferences and real requests, see :mod:`gateway.health`) says whether it can serve.
    """
    server = await services.client.server_ready()
    ready = await asyncio.gather(*(services.client.model_ready(m.name) for m in services.models))
    unhealthy = services.health.unhealthy()
    statuses = []
    for m, loaded in zip(services.models, ready):
        reason = None if loaded else "Triton reports the model not ready"
        reason = unhealthy.get(m.name, reason)
        statuses.append(ModelStatus(**m.model_dump(), ready=reason is None, reason=reason))
    return server, statuses


@router.get("/readyz", responses={503: {"description": "Triton or a served model is not ready"}})
async def readyz(services: ServicesDep) -> JSONResponse:
    """Readiness: Triton is ready and every model the gateway serves can serve (503 otherwise).

    A model that failed its last probe inference, or whose last real request failed because it
    cannot serve (e.g. its Python-backend stub died), is not ready; ``not_ready`` says why.
    """
    server, models = await _statuses(services)
    ok = server and all(m.ready for m in models)
    body = {
        "status": "ready" if ok else "not ready",
        "triton": server,
        "models": {m.name: m.ready for m in models},
        "not_ready": {m.name: m.reason for m in models if m.reason is not None},
    }
    return JSONResponse(body, status_code=200 if ok else 503)


@router.get("/models", response_model=ModelsResponse)
async def models(services: ServicesDep) -> ModelsResponse:
    """Served models, whether each can serve (and why not), weights provenance (``untrained`` = random init)."""
    _, statuses = await _statuses(services)
    return ModelsResponse(models=statuses)
