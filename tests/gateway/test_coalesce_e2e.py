"""Coalescing against a real tritonserver: requests merged into one call get exactly the outputs they
get alone, over gRPC and through a shared-memory batch region; and through the gateway, concurrent
requests are merged (the call histogram says so) with answers equal to sequential ones.

Which requests wait, and what failures and cancellation do: tests/gateway/test_coalesce.py (unit tier).
"""

from __future__ import annotations

import asyncio
import re
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from fastapi.testclient import TestClient
from tritonclient.utils import triton_to_np_dtype

from gateway import Settings, create_app
from gateway.model_io import ModelIO
from gateway.shared_memory import Region
from gateway.triton import TritonClient

INFLIGHT_1 = {"triton_coalesce_inflight": 1}


def _client(settings: Settings, **update: object) -> TritonClient:
    return TritonClient.from_settings(settings.model_copy(update={**INFLIGHT_1, **update}))


async def _alone_then_merged(
    client: TritonClient, model: str, inputs: list[dict[str, np.ndarray]], outputs: list[str], placed: bool = False
) -> tuple[list[dict[str, np.ndarray]], list[dict[str, np.ndarray]], list[tuple[int, int]]]:
    """Each input alone, then all at once (the first goes alone, the rest wait for it and are merged)."""
    io = (await client.model_io([model], 30))[model]
    alone = [await client.infer_one(model, x, outputs) for x in inputs]
    calls: list[tuple[int, int]] = []
    assert client.coalescer is not None
    client.on_call = lambda _, requests, rows: calls.append((requests, rows))
    regions: list[Region] = []
    if placed:
        for x in inputs:
            (name, array), *_ = x.items()
            region = await client.region(f"{model}/{name}", array.nbytes)
            assert region is not None
            view = region.array(array.dtype, array.shape)
            view[:] = array
            x[name] = view
            regions.append(region)
    try:
        merged = await asyncio.gather(
            *(
                client.infer(model, x, outputs, {next(iter(x)): r} if placed else None, io.max_batch_size)
                for x, r in zip(inputs, regions or [None] * len(inputs), strict=True)
            )
        )
    finally:
        for region in regions:
            client.release(region)
    return alone, merged, calls


def test_merged_classifier_outputs_equal_the_outputs_alone(settings: Settings) -> None:
    rng = np.random.default_rng(0)

    async def scenario() -> None:
        client = _client(settings)
        try:
            io = (await client.model_io(["resnet50_vd"], 30))["resnet50_vd"]
            inputs = [_random(io, 1, rng) for _ in range(5)]
            alone, merged, calls = await _alone_then_merged(client, "resnet50_vd", inputs, ["logits"])
        finally:
            await client.close()
        assert calls == [(1, 1), (4, 4)]
        for a, m in zip(alone, merged, strict=True):
            assert m["logits"].shape == a["logits"].shape
            assert np.array_equal(m["logits"], a["logits"])

    asyncio.run(scenario())


def test_merged_qa_windows_of_several_rows_equal_the_outputs_alone(settings: Settings) -> None:
    rng = np.random.default_rng(1)

    async def scenario() -> None:
        client = _client(settings)
        try:
            io = (await client.model_io(["bert_qa"], 30))["bert_qa"]
            inputs = [_random(io, n, rng) for n in (1, 2, 1, 3)]
            alone, merged, calls = await _alone_then_merged(client, "bert_qa", inputs, ["start_logits", "end_logits"])
        finally:
            await client.close()
        assert calls == [(1, 1), (3, 6)]
        for a, m in zip(alone, merged, strict=True):
            for name in ("start_logits", "end_logits"):
                assert np.array_equal(m[name], a[name])

    asyncio.run(scenario())


def test_merged_detector_inputs_go_through_one_shared_memory_region(settings: Settings) -> None:
    rng = np.random.default_rng(2)

    async def scenario() -> None:
        client = _client(settings, triton_shared_memory=True, triton_shared_memory_regions=4)
        try:
            io = (await client.model_io(["yolov5n"], 30))["yolov5n"]
            size = io.image_size()
            inputs = [_random(io, 1, rng) for _ in range(4)]
            alone, merged, calls = await _alone_then_merged(client, "yolov5n", inputs, ["detections"], placed=True)
            assert client.pool is not None
            batch = [r for r in client.pool.regions if r.tensor == "yolov5n/images#batch"]
        finally:
            await client.close()
        assert calls == [(1, 1), (3, 3)]
        assert len(batch) == 1 and batch[0].nbytes == 8 * size * size * 3
        for a, m in zip(alone, merged, strict=True):
            assert np.array_equal(m["detections"], a["detections"])

    asyncio.run(scenario())


def test_concurrent_gateway_requests_are_merged_with_unchanged_answers(settings: Settings, chelsea_jpeg: bytes) -> None:
    def classify(client: TestClient) -> dict:
        response = client.post(
            "/classify",
            params={"model": "resnet50_vd", "top_k": 5},
            files={"file": ("c.jpg", chelsea_jpeg, "image/jpeg")},
        )
        assert response.status_code == 200, response.text
        return response.json()  # type: ignore[no-any-return]

    with TestClient(create_app(settings.model_copy(update=INFLIGHT_1))) as client:
        expected = classify(client)
        for _ in range(5):  # concurrent requests find a call in flight (several rounds: threads start unevenly)
            with ThreadPoolExecutor(max_workers=8) as pool:
                answers = list(pool.map(lambda _: classify(client), range(16)))
            assert all(a == expected for a in answers)
            metrics = client.get("/metrics").text
            merged = _merged_calls(metrics, "resnet50_vd")
            if merged:
                break
        assert merged > 0, "no request was merged"


def _random(io: ModelIO, rows: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random inputs of ``rows`` rows for every input of the model (token ids, masks, pixels)."""
    inputs = {}
    for name, spec in io.inputs.items():
        dtype = np.dtype(triton_to_np_dtype(spec.datatype))
        high = 2 if "mask" in name or "type" in name else 255
        inputs[name] = rng.integers(0, high, (rows, *spec.dims)).astype(dtype)
    return inputs


def _merged_calls(metrics: str, model: str) -> float:
    """Calls that carried more than one request, from the ``gateway_triton_call_requests`` histogram."""

    def bucket(le: str) -> float:
        pattern = rf'gateway_triton_call_requests_bucket\{{le="{re.escape(le)}",model="{model}"\}} (\S+)'
        found = re.search(pattern, metrics)
        return float(found.group(1)) if found else 0.0

    return bucket("+Inf") - bucket("1.0")
