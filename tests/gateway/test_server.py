"""The uvicorn options built from settings: the gateway's h11 protocol with the configured limits."""

from __future__ import annotations

import pickle

import uvicorn

from gateway import Settings, create_app
from gateway.server import GatewayH11Protocol, uvicorn_options


def test_options_carry_the_limits_and_survive_pickling_for_worker_processes() -> None:
    settings = Settings(max_header_bytes=4096, header_timeout_s=2.5, port=24017, _env_file=None)  # type: ignore[call-arg]
    options = uvicorn_options(settings)
    config = uvicorn.Config(create_app(settings), **options)
    config.load()
    assert (config.port, config.h11_max_incomplete_event_size) == (24017, 4096)
    protocol_class = pickle.loads(pickle.dumps(options["http"]))  # uvicorn spawns its workers
    assert protocol_class.func is GatewayH11Protocol
    assert protocol_class.keywords == {"header_timeout_s": 2.5}
