"""FastAPI dependencies as ``Annotated`` aliases; everything hangs off ``app.state``."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from gateway.metrics import Metrics
from gateway.services import Services
from gateway.settings import Settings


def get_services(request: Request) -> Services:
    return request.app.state.services  # type: ignore[no-any-return]


def get_settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics  # type: ignore[no-any-return]


ServicesDep = Annotated[Services, Depends(get_services)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
