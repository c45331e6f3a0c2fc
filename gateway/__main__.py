"""``python -m gateway``: serve the gateway with uvicorn, configured from ``GATEWAY_*``."""

from __future__ import annotations

import logging

import uvicorn

from gateway.app import create_app
from gateway.server import uvicorn_options
from gateway.settings import Settings


def main() -> None:
    settings = Settings()
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(create_app(settings), **uvicorn_options(settings))


if __name__ == "__main__":
    main()
