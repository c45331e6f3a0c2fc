"""FastAPI dependencies as ``Annotated`` aliases; everything hangs off ``app.state``.

A dependency is ``async def`` on purpose: FastAPI runs a plain ``def`` dependency in its thread pool, a
thread hop per dependency per request (measured: ``/qa`` 3.8 -> 2.5 ms and ``/classify`` 6.6 ->
5.0 ms of gateway CPU per request when the routes' three dependencies stopped hopping). The task routes
take the ``Request`` and use :func:`services_of` / :func:`settings_of`, which FastAPI does not solve at all.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from gateway.services import Services
from gateway.settings import Settings


def services_of(request: Request) -> Services:
    """The app's services for a route that takes the ``Request`` anyway: no dependency to solve."""
    return request.app.state.services  # type: ignore[no-any-return]


def settings_of(request: Request) -> Settings:
    """The app's settings for a route that takes the ``Request`` anyway: no dependency to solve."""
    return request.app.state.settings  # type: ignore[no-any-return]


async def get_services(request: Request) -> Services:
    return services_of(request)


ServicesDep = Annotated[Services, Depends(get_services)]
