"""Shared fixtures of the reliability tier: a tritonserver a test may break, a gateway in its own process.

* :class:`OwnTriton` (fixtures ``own_triton``, function-scoped, and ``own_triton_module``): a real
  tritonserver on the session's tiny engines, on ports fixed for its whole life, which a test may
  ``kill()`` (SIGKILL), ``pause()`` / ``resume()`` (SIGSTOP / SIGCONT) and ``start()`` again on the
  same ports. It never touches any other tritonserver on the machine.
* :func:`run_gateway` (fixture ``start_gateway``): ``python -m gateway`` as a subprocess on a free
  port with the given ``GATEWAY_*`` environment; yields its URL and PID (for RSS via ``/proc``) and
  stops it with SIGTERM, then SIGKILL, each wait bounded.

Every test under ``tests/reliability/`` is marked ``reliability`` (``pytest -m reliability``).
"""

from __future__ import annotations

import contextlib
import logging
import pathlib
from collections.abc import Callable, Iterator, Mapping

import pytest

from tests.helpers import GatewayProcess, OwnTriton, run_gateway

HERE = pathlib.Path(__file__).resolve().parent
LOGGER = logging.getLogger(__name__)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in pathlib.Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.reliability)


@pytest.fixture
def own_triton(model_repo: pathlib.Path, tmp_path: pathlib.Path) -> Iterator[OwnTriton]:
    """A running tritonserver this test alone uses and may break; stopped afterwards."""
    triton = OwnTriton(model_repo, tmp_path / "tritonserver.log")
    triton.start()
    try:
        yield triton
    finally:
        triton.stop()


@pytest.fixture(scope="module")
def own_triton_module(model_repo: pathlib.Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnTriton]:
    """Like ``own_triton``, shared by one module: a test that breaks it must leave it serving."""
    triton = OwnTriton(model_repo, tmp_path_factory.mktemp("own_triton") / "tritonserver.log")
    triton.start()
    try:
        yield triton
    finally:
        triton.stop()


@pytest.fixture
def start_gateway(tmp_path: pathlib.Path) -> Iterator[Callable[[Mapping[str, str]], GatewayProcess]]:
    """A factory: ``start_gateway(env)`` runs a gateway subprocess, stopped when the test ends."""
    with contextlib.ExitStack() as stack:
        count = 0

        def start(env: Mapping[str, str]) -> GatewayProcess:
            nonlocal count
            count += 1
            return stack.enter_context(run_gateway(env, tmp_path / f"gateway-{count}.log"))

        yield start
