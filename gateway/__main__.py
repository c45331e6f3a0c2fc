"""``python -m gateway``: serve the gateway with uvicorn, configured from ``GATEWAY_*``.

``GATEWAY_WORKERS=N`` (N > 1) serves N worker processes instead (see :mod:`gateway.workers`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import uvicorn
from fastapi import FastAPI

from gateway.app import create_app
from gateway.logs import configure_logging
from gateway.metrics import metrics_app
from gateway.server import uvicorn_options
from gateway.settings import Settings


class _MetricsServer(uvicorn.Server):
    """The metrics port's server: the gateway's own server handles the signals and stops it."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve_with_metrics_port(app: FastAPI, settings: Settings, metrics_port: int) -> None:
    """The gateway on ``settings.port`` and its ``/metrics`` alone on ``metrics_port``, in one event loop."""
    config = uvicorn.Config(
        metrics_app(app.state.metrics),
        host=settings.host,
        port=metrics_port,
        log_level=settings.log_level,
        log_config=None,
    )
    metrics_server = _MetricsServer(config)
    metrics_task = asyncio.create_task(metrics_server.serve())
    try:
        await uvicorn.Server(uvicorn.Config(app, **uvicorn_options(settings))).serve()
    finally:
        metrics_server.should_exit = True
        await metrics_task


def main() -> None:
    settings = Settings()
    configure_logging(settings.log_format, settings.log_level)
    if settings.workers > 1:
        from gateway.workers import serve_workers

        serve_workers(settings)
        return
    app = create_app(settings)
    if settings.metrics_port is None:
        uvicorn.run(app, **uvicorn_options(settings))
        return
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve_with_metrics_port(app, settings, settings.metrics_port))


if __name__ == "__main__":
    main()
