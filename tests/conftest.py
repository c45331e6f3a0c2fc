"""Shared fixtures: tiny engines in a copy of triton_repo/, a real tritonserver, the gateway app.

Tests use the small (``tiny``) model configurations for speed; every component is real, except
in the ``unit`` tier, which may use the labelled fakes of ``tests/fakes.py`` behind their seams.

Tiers (markers): a test is ``e2e`` when it uses one of :data:`E2E_FIXTURES`, is in one of
:data:`E2E_MODULES` or is marked ``e2e`` itself (tests that start their own tritonserver,
Prometheus or gateway process, or run the PyTorch builder); every other test is ``unit``, and a
``unit`` test that tries to start a tritonserver fails (:func:`_unit_tier_guard`), so the split
cannot drift.
``pytest -m unit`` is the fast tier; the default command runs both.
"""

from __future__ import annotations

import pathlib
import shutil
import sys
import types
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from engine_runtime.engine import EngineError, OnnxRuntimeEngine, load_magicmind
from gateway import Settings, create_app
from tests.engine_runtime import fake_magicmind
from tests.helpers import ROOT, RestartingTriton, serve, triton_config
from triton_local import TritonServer

E2E_FIXTURES = frozenset(
    {"model_repo", "qa_only_repo", "ghost_model_repo", "triton", "settings", "client", "gateway_url", "engines"}
    | {"own_triton", "own_triton_module", "start_gateway"}
)

# Whole modules in the e2e tier although they use none of E2E_FIXTURES.
E2E_MODULES = frozenset(
    ROOT / "tests" / path
    for path in (
        "reliability",  # everything under it
        "triton_local/test_server.py",  # starts its own tritonservers
        "magicmind_build",  # the real builder: PyTorch models exported to ONNX, run by ONNX Runtime
        "engine_runtime/test_magicmind_engine.py",  # builds its engines with the builder (fake MagicMind SDK)
        "engine_runtime/test_tensorrt_options.py",  # the configs a real tritonserver serves
        "engine_runtime/test_package_boundary.py",  # fresh interpreters importing the packages
        "gateway/test_detect_nanodet.py",  # e2e by its fixtures; listed so `-m unit` skips importing PyTorch
        "deploy/test_compose_up.py",  # a container engine (its own `compose` tier)
        "deploy/test_k8s.py",  # kubectl renders, the Job's real shell scripts, a real Prometheus and Triton
        "gateway/test_logs.py",  # `python -m gateway` processes
    )
)


def pytest_ignore_collect(collection_path: pathlib.Path, config: pytest.Config) -> bool | None:
    """Under ``-m unit`` the e2e-only modules are not even imported (they pull in PyTorch)."""
    if config.getoption("markexpr", "") != "unit":
        return None
    path = collection_path.resolve()
    return True if path in E2E_MODULES or not E2E_MODULES.isdisjoint(path.parents) else None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("e2e") or item.get_closest_marker("unit"):
            continue
        if item.get_closest_marker("compose"):
            item.add_marker(pytest.mark.e2e)
            continue
        fixtures = set(getattr(item, "fixturenames", ()))
        path = pathlib.Path(item.path).resolve()
        e2e = fixtures & E2E_FIXTURES or path in E2E_MODULES or not E2E_MODULES.isdisjoint(path.parents)
        item.add_marker(pytest.mark.e2e if e2e else pytest.mark.unit)


@pytest.fixture(autouse=True)
def _unit_tier_guard(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """A ``unit`` test may not start a tritonserver: mark it ``e2e`` (or use tests/fakes.py)."""
    if request.node.get_closest_marker("unit") is None:
        return

    def refuse(self: TritonServer) -> None:
        raise AssertionError(f"{request.node.nodeid} is in the unit tier but starts a tritonserver: mark it e2e")

    monkeypatch.setattr(TritonServer, "start", refuse)


@pytest.fixture(scope="session")
def model_repo(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """A copy of ``triton_repo/`` with tiny engines built into it."""
    from magicmind_build.build import build_engine  # PyTorch: imported only when engines are built
    from magicmind_build.specs import SPECS

    repo = tmp_path_factory.mktemp("repo") / "triton_repo"
    # Precision variants (<model>_fp16/_int8) a local build generated are not the tests' models.
    ignore = shutil.ignore_patterns("*.onnx", "manifest.json", "__pycache__", "*_fp16", "*_int8")
    shutil.copytree(ROOT / "triton_repo", repo, ignore=ignore)
    for name, spec in SPECS.items():
        build_engine(spec, repo / name / "1", size="tiny")
    return repo


@pytest.fixture(scope="session")
def qa_only_repo(model_repo: pathlib.Path, tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """A repository holding only ``bert_qa`` (a Triton that starts fast, for restart tests)."""
    repo = tmp_path_factory.mktemp("qa_only") / "repo"
    shutil.copytree(model_repo / "bert_qa", repo / "bert_qa")
    return repo


@pytest.fixture(scope="session")
def ghost_model_repo(model_repo: pathlib.Path, tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """For the gateway only: every model's configuration plus ``no_such_model`` (bert_qa's, renamed),
    which no tritonserver serves, so its inferences fail in Triton (the gateway knows its sizes)."""
    repo = tmp_path_factory.mktemp("ghost") / "repo"
    shutil.copytree(model_repo, repo, ignore=shutil.ignore_patterns("*.onnx", "__pycache__"))
    (repo / "no_such_model").mkdir()
    config = (model_repo / "bert_qa" / "config.pbtxt").read_text().replace('"bert_qa"', '"no_such_model"')
    (repo / "no_such_model" / "config.pbtxt").write_text(config)
    return repo


@pytest.fixture(scope="session")
def triton(model_repo: pathlib.Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    log = tmp_path_factory.mktemp("triton") / "tritonserver.log"
    with TritonServer(triton_config(model_repo, log)) as server:
        yield server


@pytest.fixture(scope="session")
def settings(triton: TritonServer, model_repo: pathlib.Path) -> Settings:
    # No background probe inferences: several apps share this server and some tests count its rows.
    # Health probing is tested with its own settings (tests/gateway/test_model_health.py, reliability/).
    # No latency shedding: on a loaded CI host a burst of correctness requests can be predicted over any
    # budget; tests/reliability/test_overload.py turns it on where shedding is under test.
    return Settings(
        triton_url=triton.grpc_url,
        model_repository=model_repo,
        health_probe_interval_s=0,
        latency_budget_s=0,
        _env_file=None,  # type: ignore[call-arg]
    )


@pytest.fixture(scope="session")
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture(scope="session")
def gateway_url(settings: Settings) -> Iterator[str]:
    """The gateway served by a real uvicorn on a free port (for out-of-process clients)."""
    with serve(create_app(settings)) as url:
        yield url


@pytest.fixture(scope="session")
def engines(model_repo: pathlib.Path) -> dict[str, OnnxRuntimeEngine]:
    """The same artifacts Triton serves, loaded directly: the bare-engine reference."""
    from magicmind_build.specs import SPECS

    return {name: OnnxRuntimeEngine(model_repo / name / "1" / "model.onnx") for name in SPECS}


@pytest.fixture(scope="session")
def chelsea_jpeg(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    from PIL import Image
    from skimage import data

    path = tmp_path_factory.mktemp("img") / "chelsea.jpg"
    Image.fromarray(data.chelsea()).save(path, quality=95)
    return path.read_bytes()


@pytest.fixture(scope="session")
def astronaut_png(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    from PIL import Image
    from skimage import data

    path = tmp_path_factory.mktemp("img") / "astronaut.png"
    Image.fromarray(data.astronaut()).save(path)
    return path.read_bytes()


# MagicMind: the engine's and the builder's tests run against the labelled fake SDK (``fake_mm``), and
# ``mm_sdk`` runs a test twice: on the fake and on the real SDK, which skips where it is not importable.


@pytest.fixture(params=["fake", "real"])
def mm_sdk(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    return fake_magicmind.sdk(request.param, monkeypatch)


@pytest.fixture
def fake_mm(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    return fake_magicmind.install(monkeypatch)


@pytest.fixture
def no_mm_sdk(monkeypatch: pytest.MonkeyPatch) -> None:
    """For tests of a missing SDK: skips where a real one is importable; otherwise makes sure no fake lingers."""
    try:
        load_magicmind()
    except EngineError:
        pass
    else:
        pytest.skip("a MagicMind SDK is importable here")
    monkeypatch.setitem(sys.modules, "magicmind.python.runtime", None)


@pytest.fixture
def restarting_triton(qa_only_repo: pathlib.Path, model_repo: pathlib.Path, tmp_path: pathlib.Path) -> RestartingTriton:
    """Triton restart tests: ``bert_qa``-only tritonservers on ports fixed for the test (``.server()``, each
    started and stopped by the test) and ``.settings(**overrides)`` for a gateway in front of them that
    knows every model's sizes (only ``/qa`` reaches Triton)."""
    return RestartingTriton(qa_only_repo, model_repo, tmp_path / "t.log")
