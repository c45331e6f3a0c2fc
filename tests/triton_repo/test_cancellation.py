"""A cancelled gRPC inference (what the gateway does past a deadline or on disconnect) is not run by Triton.

Requests queued behind a busy ``bert_qa`` instance are cancelled by their client; Triton answers
them ``CANCELED`` (the dynamic batcher drops them before ``execute``, which no longer asks each
request ``is_cancelled()``: a round trip to tritonserver per request) instead of running the engine on
them. Counts come from Triton's own metrics.
"""

from __future__ import annotations

import asyncio
import pathlib
import re
import time
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc.aio as aio

from tests.helpers import ROOT
from triton_local import TritonServer

ROWS = 64  # bert_qa's max_batch_size: each request is one engine call
QUEUED = 24


def _metric(triton: TritonServer, name: str, extra: str = "") -> int:
    text = urllib.request.urlopen(triton.metrics_url, timeout=10).read().decode()
    match = re.search(rf'^{name}\{{model="bert_qa",{extra}version="1"\}} (\d+)', text, re.MULTILINE)
    assert match, f"{name} missing from Triton's metrics"
    return int(match.group(1))


def _inputs() -> list[aio.InferInput]:
    inputs = []
    for name in ("input_ids", "attention_mask", "token_type_ids"):
        tensor = aio.InferInput(name, [ROWS, 128], "INT64")
        tensor.set_data_from_numpy(np.ones((ROWS, 128), dtype=np.int64))
        inputs.append(tensor)
    return inputs


def test_cancelled_requests_are_not_run(triton: TritonServer) -> None:
    rows_before = _metric(triton, "nv_inference_count")
    cancelled_before = _metric(triton, "nv_inference_request_failure", 'reason="CANCELED",')
    backend_errors_before = _metric(triton, "nv_inference_request_failure", 'reason="BACKEND",')

    async def scenario() -> None:
        client = aio.InferenceServerClient(triton.grpc_url)
        try:
            calls = [asyncio.ensure_future(client.infer("bert_qa", _inputs())) for _ in range(1 + QUEUED)]
            # Wait until several requests are queued in Triton behind the running one, then cancel all.
            deadline = time.monotonic() + 30
            while _metric(triton, "nv_inference_pending_request_count") < 4:
                assert time.monotonic() < deadline, "requests never queued in Triton"
                await asyncio.sleep(0.002)
            for call in calls:
                call.cancel()
            await asyncio.gather(*calls, return_exceptions=True)
        finally:
            await client.close()

    asyncio.run(scenario())
    time.sleep(1.0)  # let Triton finish whatever was already running
    rows_run = _metric(triton, "nv_inference_count") - rows_before
    cancelled = _metric(triton, "nv_inference_request_failure", 'reason="CANCELED",') - cancelled_before
    assert cancelled >= 1
    # Answering a cancelled request (pb_utils.TritonError.CANCELLED) never broke execute().
    assert _metric(triton, "nv_inference_request_failure", 'reason="BACKEND",') == backend_errors_before
    assert rows_run < (1 + QUEUED) * ROWS
    assert rows_run % ROWS == 0  # whole requests ran or none of their rows did


@pytest.mark.unit
@pytest.mark.parametrize("config", sorted((ROOT / "triton_repo").glob("*/config.pbtxt")), ids=lambda p: p.parent.name)
def test_every_model_has_the_dynamic_batcher_that_drops_cancelled_requests(config: pathlib.Path) -> None:
    """``execute`` does not ask ``is_cancelled()``: only the dynamic batcher keeps cancelled requests out."""
    assert "\ndynamic_batching {" in config.read_text()
