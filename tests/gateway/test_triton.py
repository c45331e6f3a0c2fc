"""The Triton client's retry and error mapping, over the FAKE gRPC client (unit tier).

The same behaviours against a real tritonserver: tests/gateway/test_resilience.py (restart,
retry), tests/gateway/test_errors.py, tests/reliability/test_overload.py (queue rejections).
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from gateway import deadline
from gateway.errors import InferenceFailed, Overloaded, TritonUnavailable, UpstreamTimeout
from gateway.health import ModelHealth
from gateway.triton import TritonClient
from tests.fakes import DEADLINE_EXCEEDED, INTERNAL, UNAVAILABLE, FakeTritonGrpc, FrozenTritonGrpc, grpc_error

pytestmark = pytest.mark.unit

ROWS = {"images": np.zeros((2, 224, 224, 3), np.uint8)}


def client_over(fake: FakeTritonGrpc, retries: int = 2) -> TritonClient:
    return TritonClient("triton.internal:8001", timeout_s=5.0, retries=retries, backoff_s=0.001, grpc_client=fake)


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


def test_inputs_and_outputs_travel_as_real_tensors() -> None:
    fake = FakeTritonGrpc(responders={"resnet50_vd": lambda x: {"logits": np.ones((len(x["images"]), 1000), "f4")}})
    out = run(client_over(fake).infer("resnet50_vd", ROWS, ["logits"]))
    assert isinstance(out, dict)
    assert out["logits"].shape == (2, 1000) and out["logits"].dtype == np.float32 and out["logits"].all()
    (call,) = fake.calls
    assert call.model == "resnet50_vd" and call.outputs == ["logits"]
    np.testing.assert_array_equal(call.inputs["images"], ROWS["images"])


def test_unavailable_is_retried_with_backoff_then_succeeds() -> None:
    fake = FakeTritonGrpc()
    fake.fail_next(grpc_error(UNAVAILABLE, "failed to connect to all addresses"), grpc_error(UNAVAILABLE, "again"))
    out = run(client_over(fake, retries=2).infer("resnet50_vd", ROWS, ["logits"]))
    assert isinstance(out, dict) and out["logits"].shape == (2, 1000)
    assert len(fake.calls) == 3


def test_unavailable_past_the_retries_is_503_without_the_address() -> None:
    fake = FakeTritonGrpc()
    fake.fail_next(*[grpc_error(UNAVAILABLE, "failed to connect to all addresses")] * 3)
    with pytest.raises(TritonUnavailable) as raised:
        run(client_over(fake, retries=2).infer("resnet50_vd", ROWS, ["logits"]))
    assert len(fake.calls) == 3
    assert raised.value.status_code == 503
    assert "triton.internal" not in raised.value.message and "triton.internal" in raised.value.detail


@pytest.mark.parametrize("text", ["Exceeds maximum queue size", "Request timeout expired"])
def test_a_queue_rejection_is_overloaded_and_never_retried(text: str) -> None:
    fake = FakeTritonGrpc()
    fake.fail_next(grpc_error(UNAVAILABLE, text))
    with pytest.raises(Overloaded) as raised:
        run(client_over(fake, retries=3).infer("resnet50_vd", ROWS, ["logits"]))
    assert len(fake.calls) == 1
    assert raised.value.status_code == 503 and raised.value.code == "overloaded"


def test_deadline_exceeded_is_504_and_other_errors_502() -> None:
    fake = FakeTritonGrpc()
    fake.fail_next(grpc_error(DEADLINE_EXCEEDED, "Deadline Exceeded"), grpc_error(INTERNAL, "engine exploded"))
    client = client_over(fake)
    with pytest.raises(UpstreamTimeout):
        run(client.infer("resnet50_vd", ROWS, ["logits"]))
    with pytest.raises(InferenceFailed) as raised:
        run(client.infer("resnet50_vd", ROWS, ["logits"]))
    assert raised.value.status_code == 502 and "engine exploded" in raised.value.detail
    assert len(fake.calls) == 2  # neither retried


def test_the_request_deadline_caps_the_call_and_a_passed_one_sends_nothing() -> None:
    fake = FakeTritonGrpc()
    client = client_over(fake)

    async def with_deadline(seconds_left: float) -> None:
        token = deadline.current.set(time.monotonic() + seconds_left)
        try:
            await client.infer("resnet50_vd", ROWS, ["logits"])
        finally:
            deadline.current.reset(token)

    run(with_deadline(0.5))
    (call,) = fake.calls
    assert call.timeout_s is not None and 0 < call.timeout_s <= 0.5  # not the client's 5 s
    with pytest.raises(UpstreamTimeout):
        run(with_deadline(-0.1))
    assert len(fake.calls) == 1  # nothing sent


def test_a_model_that_cannot_serve_is_recorded_unhealthy_and_heals() -> None:
    fake = FakeTritonGrpc()
    client = client_over(fake, retries=0)
    client.health = ModelHealth(["resnet50_vd"])
    fake.fail_next(grpc_error(INTERNAL, "Model 'resnet50_vd' version 1 is not healthy"))
    with pytest.raises(InferenceFailed):
        run(client.infer("resnet50_vd", ROWS, ["logits"]))
    assert "resnet50_vd" in client.health.unhealthy()
    run(client.infer("resnet50_vd", ROWS, ["logits"]))
    assert client.health.unhealthy() == {}


def test_a_bad_request_does_not_mark_the_model_unhealthy() -> None:
    fake = FakeTritonGrpc()
    client = client_over(fake, retries=0)
    client.health = ModelHealth(["resnet50_vd"])
    fake.fail_next(grpc_error(INTERNAL, "unexpected shape for input 'images'"))
    with pytest.raises(InferenceFailed):
        run(client.infer("resnet50_vd", ROWS, ["logits"]))
    assert client.health.unhealthy() == {}


def test_model_io_and_probe_read_the_served_config() -> None:
    fake = FakeTritonGrpc()
    client = client_over(fake)
    io = run(client.model_io(["bert_qa"], wait_s=1.0))
    assert isinstance(io, dict) and io["bert_qa"].max_batch_size == 64 and io["bert_qa"].seq_len() == 128
    run(client.probe("bert_qa", timeout_s=1.0))
    (call,) = fake.calls
    assert call.request_id == "probe" and call.outputs == ["start_logits"]
    assert {name: a.shape for name, a in call.inputs.items()} == {
        "input_ids": (1, 128),
        "attention_mask": (1, 128),
        "token_type_ids": (1, 128),
    }


def test_an_input_in_shared_memory_is_sent_by_reference() -> None:
    fake = FakeTritonGrpc()
    client = TritonClient("triton.internal:8001", 5.0, 0, 0.001, grpc_client=fake, shared_memory_regions=1)
    image = np.random.default_rng(0).integers(0, 255, (1, 640, 640, 3), np.uint8)

    async def scenario() -> None:
        region = await client.region("yolov5n/images", image.nbytes)
        assert region is not None
        view = region.array(np.uint8, image.shape)
        view[:] = image
        await client.infer("yolov5n", {"images": view}, ["detections"], placed={"images": region})
        client.release(region)
        await client.close()

    run(scenario())
    (call,) = fake.calls
    assert call.shared == ["images"]
    np.testing.assert_array_equal(call.inputs["images"], image)  # the fake read it from the region
    assert fake.registered == {}


def bounded(coro: object, within_s: float) -> object:
    """Run ``coro``; a hang past ``within_s`` fails the test (a correctness bound, not a timing)."""
    return run(asyncio.wait_for(coro, within_s))  # type: ignore[arg-type]


def test_retries_and_backoffs_end_within_one_call_timeout() -> None:
    """A Triton answering UNAVAILABLE forever: the call gives up within timeout_s, back-offs included
    (it used to take (retries + 1) attempts and every back-off, here 0.1 + 0.2 + ... + 51.2 s)."""
    fake = FakeTritonGrpc()
    fake.fail_next(*[grpc_error(UNAVAILABLE, "failed to connect to all addresses")] * 11)
    client = TritonClient("triton.internal:8001", timeout_s=0.5, retries=10, backoff_s=0.1, grpc_client=fake)
    with pytest.raises(TritonUnavailable):
        bounded(client.infer("resnet50_vd", ROWS, ["logits"]), within_s=5.0)
    assert 1 <= len(fake.calls) <= 4  # 0.1 + 0.2 fit in 0.5 s, 0.4 more does not
    assert all(c.timeout_s is not None and c.timeout_s <= 0.5 for c in fake.calls)


def test_a_frozen_triton_holds_no_call_past_its_timeout() -> None:
    """Inference and configuration reads carry a gRPC deadline: a frozen Triton gives 504 after
    timeout_s instead of holding the call for ever."""
    fake = FrozenTritonGrpc()
    client = TritonClient("triton.internal:8001", timeout_s=0.3, retries=2, backoff_s=0.01, grpc_client=fake)
    with pytest.raises(UpstreamTimeout):
        bounded(client.infer("resnet50_vd", ROWS, ["logits"]), within_s=5.0)
    with pytest.raises(UpstreamTimeout):
        bounded(client._model_config("nanodet"), within_s=5.0)
    assert len(fake.waits) == 2 and all(w is not None and 0 < w <= 0.3 for w in fake.waits)


def test_start_up_config_wait_is_bounded_by_model_config_wait_s() -> None:
    fake = FrozenTritonGrpc()
    client = TritonClient("triton.internal:8001", timeout_s=30.0, retries=0, backoff_s=0.01, grpc_client=fake)
    with pytest.raises(TritonUnavailable, match="model_config_wait_s"):
        bounded(client.model_io(["bert_qa"], wait_s=0.5), within_s=5.0)
    assert fake.waits and all(w is not None and w <= 0.5 for w in fake.waits)


@pytest.mark.parametrize("inflight", [0, 2])
def test_every_inference_call_is_observed_with_its_requests_and_rows(inflight: int) -> None:
    fake = FakeTritonGrpc()
    client = TritonClient("fake:8001", 5.0, 0, 0.01, grpc_client=fake, coalesce_inflight=inflight)
    seen: list[tuple[str, int, int]] = []
    client.on_call = lambda model, requests, rows: seen.append((model, requests, rows))
    images = np.zeros((2, 224, 224, 3), np.uint8)
    run(client.infer("resnet50_vd", {"images": images}, ["logits"], max_batch_size=32))
    run(client.infer("resnet50_vd", {"images": images[:1]}, ["logits"]))  # not batching: never merged
    assert seen == [("resnet50_vd", 1, 2), ("resnet50_vd", 1, 1)]
    assert (client.coalescer is not None) == (inflight > 0)
