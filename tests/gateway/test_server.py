"""The uvicorn options built from settings: the gateway's HTTP protocol with the configured limits."""

from __future__ import annotations

import pickle

import pytest
import uvicorn

from gateway import Settings, create_app
from gateway.server import GatewayH11Protocol, GatewayHttpToolsProtocol, uvicorn_options


@pytest.mark.parametrize(
    ("parser", "protocol", "keywords"),
    [
        ("httptools", GatewayHttpToolsProtocol, {"header_timeout_s": 2.5, "max_header_bytes": 4096}),
        ("h11", GatewayH11Protocol, {"header_timeout_s": 2.5}),
    ],
)
def test_options_carry_the_limits_and_survive_pickling_for_worker_processes(
    parser: str, protocol: type, keywords: dict[str, float]
) -> None:
    settings = Settings(max_header_bytes=4096, header_timeout_s=2.5, port=24017, http_parser=parser, _env_file=None)  # type: ignore[call-arg, arg-type]
    options = uvicorn_options(settings)
    config = uvicorn.Config(create_app(settings), **options)
    config.load()
    assert (config.port, config.h11_max_incomplete_event_size) == (24017, 4096)
    protocol_class = pickle.loads(pickle.dumps(options["http"]))  # uvicorn spawns its workers
    assert protocol_class.func is protocol
    assert protocol_class.keywords == keywords


def test_httptools_is_the_default_parser() -> None:
    assert Settings(_env_file=None).http_parser == "httptools"  # type: ignore[call-arg]
