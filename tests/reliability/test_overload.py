"""Overload is shed early with 503 ``overloaded`` + Retry-After while admitted requests succeed.

Two layers, both against a real tritonserver on tiny engines: the gateway's latency budget
(measured service time x requests ahead), and Triton's own queue policy (``max_queue_size``),
whose ``UNAVAILABLE`` rejection must be answered as overload, never retried as an outage.
"""

from __future__ import annotations

import asyncio
import logging
import pathlib
import re
import shutil
import statistics
from collections.abc import Iterator

import httpx
import pytest

from gateway import Settings, create_app
from tests.helpers import metric_value, serve, triton_config
from triton_local import TritonServer

BURST = 48


async def _burst(url: str, image: bytes, n: int, params: dict[str, str]) -> list[httpx.Response]:
    """``n`` concurrent /classify requests; the answers in the order they completed."""
    done: list[httpx.Response] = []
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

        async def one() -> None:
            done.append(await client.post("/classify", params=params, files={"file": ("x.jpg", image, "image/jpeg")}))

        await asyncio.gather(*(one() for _ in range(n)))
    return done


def _assert_shed(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "overloaded"
    assert int(response.headers["retry-after"]) >= 1


def test_latency_budget_sheds_at_once_and_admitted_requests_succeed(settings: Settings, chelsea_jpeg: bytes) -> None:
    files = {"file": ("x.jpg", chelsea_jpeg, "image/jpeg")}
    # Budget: about three requests' worth of the service time measured here, one at a time.
    with serve(create_app(settings)) as url, httpx.Client(base_url=url, timeout=60) as client:
        warm = []
        for _ in range(5):
            response = client.post("/classify", files=files)
            assert response.status_code == 200, response.text
            warm.append(response.elapsed.total_seconds())
    budget = 3 * statistics.median(warm)
    shedding = settings.model_copy(update={"latency_budget_s": budget})

    with serve(create_app(shedding)) as url, httpx.Client(base_url=url, timeout=60) as client:
        for _ in range(3):  # the estimate needs a sample
            assert client.post("/classify", files=files).status_code == 200
        answers = asyncio.run(_burst(url, chelsea_jpeg, BURST, {}))
        metrics = client.get("/metrics").text

    statuses = [r.status_code for r in answers]
    assert set(statuses) <= {200, 503}, statuses
    admitted = [r for r in answers if r.status_code == 200]
    shed = [r for r in answers if r.status_code == 503]
    assert admitted and shed, statuses
    for response in shed:
        _assert_shed(response)
        assert "latency budget" in response.json()["error"]["message"]
    for response in admitted:
        assert len(response.json()["predictions"]) == 5
    # Shed answers do not wait for the queue: the first one is back before the last admitted one.
    assert statuses.index(503) < len(statuses) - 1 - statuses[::-1].index(200)
    assert metric_value(metrics, "gateway_errors_total", route="/classify", code="overloaded") == len(shed)
    assert metric_value(metrics, "gateway_requests_total", route="/classify", status="503") == len(shed)


@pytest.fixture(scope="module")
def queue_of_one(model_repo: pathlib.Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    """A tritonserver whose resnet50_vd runs one request at a time and queues at most one more."""
    repo = tmp_path_factory.mktemp("queue_of_one") / "repo"
    shutil.copytree(model_repo / "resnet50_vd", repo / "resnet50_vd")
    config = repo / "resnet50_vd" / "config.pbtxt"
    text, batch = re.subn(r"max_batch_size: \d+", "max_batch_size: 1", config.read_text())
    text, queue = re.subn(r"max_queue_size: \d+", "max_queue_size: 1", text)
    assert batch == queue == 1, "config.pbtxt changed shape; update this fixture"
    config.write_text(text)
    with TritonServer(triton_config(repo, repo.parent / "triton.log")) as server:
        yield server


def test_triton_queue_full_is_503_overloaded_and_not_retried(
    queue_of_one: TritonServer, model_repo: pathlib.Path, chelsea_jpeg: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(
        triton_url=queue_of_one.grpc_url,
        model_repository=model_repo,  # every model's sizes (the gateway reads only configs there)
        classify_models=["resnet50_vd"],
        max_inflight=0,
        latency_budget_s=0,  # the gateway admits everything: Triton's queue policy is under test
        triton_retries=5,
        triton_retry_backoff_s=0.5,
        _env_file=None,  # type: ignore[call-arg]
    )
    caplog.set_level(logging.WARNING, logger="gateway.triton")
    answers: list[httpx.Response] = []
    with serve(create_app(settings)) as url:
        for _ in range(5):  # bounded: a burst of 48 on a queue of 1 overflows at once in practice
            answers += asyncio.run(_burst(url, chelsea_jpeg, BURST, {}))
            if any(r.status_code == 503 for r in answers):
                break
        metrics = httpx.get(f"{url}/metrics").text

    statuses = [r.status_code for r in answers]
    assert set(statuses) <= {200, 503}, statuses
    rejected = [r for r in answers if r.status_code == 503]
    assert rejected and 200 in statuses, statuses
    for response in rejected:
        _assert_shed(response)
        assert "shed from the model's queue" in response.json()["error"]["message"]
    assert metric_value(metrics, "gateway_errors_total", route="/classify", code="overloaded") == len(rejected)
    assert metric_value(metrics, "gateway_errors_total", route="/classify", code="triton_unavailable") == 0
    assert not [r for r in caplog.records if "retrying" in r.getMessage()], "queue rejections must not be retried"
