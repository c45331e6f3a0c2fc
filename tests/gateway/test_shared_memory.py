"""A detector's input through system shared memory: the same answers as over gRPC, and robust to
a busy pool and to Triton forgetting the regions."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import tritonclient.grpc as grpcclient
from fastapi.testclient import TestClient

from gateway import Settings, create_app
from tests.helpers import direct_run, threshold_for
from triton_local import TritonServer


@pytest.fixture(scope="module")
def shm_client(settings: Settings) -> Iterator[TestClient]:
    enabled = settings.model_copy(update={"triton_shared_memory": True, "triton_shared_memory_regions": 2})
    with TestClient(create_app(enabled)) as test_client:
        yield test_client


def _detect(client: TestClient, image: bytes, conf: float) -> dict:
    response = client.post(
        "/detect", params={"conf_threshold": conf, "model": "yolov5n"}, files={"file": ("a.png", image, "image/png")}
    )
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def _regions(triton: TritonServer) -> list[str]:
    status = grpcclient.InferenceServerClient(triton.grpc_url).get_system_shared_memory_status(as_json=True)
    return sorted(status.get("regions", {}))


def test_shared_memory_answers_equal_grpc_answers(
    client: TestClient, shm_client: TestClient, settings: Settings, engines: dict, astronaut_png: bytes,
    triton: TritonServer,
) -> None:  # fmt: skip
    prediction, _ = direct_run(settings, engines["yolov5n"], astronaut_png)
    conf = threshold_for(prediction, 100)
    expected = _detect(client, astronaut_png, conf)
    assert expected["detections"]
    assert _detect(shm_client, astronaut_png, conf) == expected
    assert len(_regions(triton)) == 1

    # More concurrent requests than regions: the overflow takes the gRPC path, answers unchanged.
    with ThreadPoolExecutor(max_workers=6) as pool:
        answers = list(pool.map(lambda _: _detect(shm_client, astronaut_png, conf), range(6)))
    assert all(a == expected for a in answers)
    assert 1 <= len(_regions(triton)) <= 2


def test_regions_forgotten_by_triton_are_registered_again(
    shm_client: TestClient, client: TestClient, astronaut_png: bytes, triton: TritonServer
) -> None:
    expected = _detect(client, astronaut_png, 0.5)
    _detect(shm_client, astronaut_png, 0.5)
    grpcclient.InferenceServerClient(triton.grpc_url).unregister_system_shared_memory()  # as after a restart
    assert _regions(triton) == []
    assert _detect(shm_client, astronaut_png, 0.5) == expected
    assert _regions(triton)


def test_shutdown_unregisters_and_unmaps_its_regions(
    settings: Settings, astronaut_png: bytes, triton: TritonServer
) -> None:
    import os

    before = set(_regions(triton))
    enabled = settings.model_copy(update={"triton_shared_memory": True})
    with TestClient(create_app(enabled)) as own:
        _detect(own, astronaut_png, 0.5)
        mine = set(_regions(triton)) - before
        assert len(mine) == 1
    assert set(_regions(triton)) == before
    assert not any(os.path.exists(f"/dev/shm/{name}") for name in mine)


def test_shared_memory_with_triton_down_is_503(model_repo, astronaut_png: bytes) -> None:  # type: ignore[no-untyped-def]
    from tests.helpers import free_port

    settings = Settings(
        triton_url=f"127.0.0.1:{free_port()}", model_repository=model_repo, triton_shared_memory=True,
        triton_retries=0, _env_file=None,  # type: ignore[call-arg]
    )  # fmt: skip
    with TestClient(create_app(settings)) as down:
        response = down.post("/detect", files={"file": ("a.png", astronaut_png, "image/png")})
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "triton_unavailable"


def test_concurrent_first_requests_share_one_pool_and_leak_nothing(
    settings: Settings, triton: TritonServer, astronaut_png: bytes, engines: dict
) -> None:
    """Two first /detect requests racing (and a third whose image is refused after it borrowed a
    region): one pool (one region-name prefix, the Triton client's), and after shutdown nothing of it
    is left registered in Triton or in /dev/shm."""
    import asyncio
    import os
    import pathlib

    import numpy as np

    from gateway.errors import GatewayError
    from gateway.metrics import Metrics
    from gateway.services import Services
    from gateway.tasks.detect import DetectQuery, DetectResult

    before = set(_regions(triton))
    enabled = settings.model_copy(update={"triton_shared_memory": True, "triton_shared_memory_regions": 4})
    ours = f"gw-{os.getpid()}-"
    prediction, _ = direct_run(settings, engines["yolov5n"], astronaut_png)
    query = DetectQuery(astronaut_png, conf_threshold=threshold_for(prediction, 100))

    def same(a: DetectResult, b: DetectResult) -> bool:
        return bool(len(a.detections.scores)) and all(
            np.array_equal(getattr(a.detections, f), getattr(b.detections, f)) for f in ("boxes", "scores", "classes")
        )

    async def run() -> set[str]:
        services = Services.create(enabled, Metrics())
        await services.bind(enabled)
        yolo = services.detectors["yolov5n"]
        try:
            # Both coroutines reach the pool before either has a region: the race of two first requests.
            first, second = await asyncio.gather(yolo(query), yolo(query))
            assert same(first, second)
            try:
                await yolo(DetectQuery(astronaut_png[:200]))  # truncated: refused while holding a region
            except GatewayError:
                pass
            else:
                raise AssertionError("a truncated image was answered")
            pool = services.client.pool
            assert pool is not None and len(pool.regions) == 2
            assert sorted(r.name for r in pool.regions) == sorted(set(_regions(triton)) - before)
            again = await yolo(query)  # a region given back by the failure is reused
            assert same(again, first) and len(pool.regions) == 2
            return set(_regions(triton)) - before
        finally:
            await services.close()

    during = asyncio.run(run())
    prefixes = {name.rsplit("-", 1)[0] for name in during}
    assert len(prefixes) == 1, during  # exactly one pool
    assert set(_regions(triton)) == before
    assert during and all(name.startswith(ours) for name in during)
    assert not [name for name in during if pathlib.Path("/dev/shm", name).exists()]
