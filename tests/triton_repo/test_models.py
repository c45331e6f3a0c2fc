"""The Triton Python-backend models: one engine call per batch, per-request errors."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aio
from tritonclient.utils import InferenceServerException

from triton_local import TritonServer

SEQ = 128


def _bert_inputs(module, ids: np.ndarray) -> list:  # type: ignore[no-untyped-def]
    inputs = []
    for name, array in (
        ("input_ids", ids),
        ("attention_mask", np.ones_like(ids)),
        ("token_type_ids", np.zeros_like(ids)),
    ):
        tensor = module.InferInput(name, list(array.shape), "INT64")
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


def test_out_of_vocabulary_ids_fail_that_request_only(triton: TritonServer, engines: dict) -> None:
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    bad = np.full((1, SEQ), 10**6, dtype=np.int64)
    with pytest.raises(InferenceServerException, match="input_ids must lie in"):
        client.infer("bert_qa", _bert_inputs(grpcclient, bad))
    negative = np.full((1, SEQ), -1, dtype=np.int64)
    with pytest.raises(InferenceServerException, match="input_ids must lie in"):
        client.infer("bert_qa", _bert_inputs(grpcclient, negative))
    assert client.is_model_ready("bert_qa")
    good = np.arange(SEQ, dtype=np.int64)[None]
    served = client.infer("bert_qa", _bert_inputs(grpcclient, good)).as_numpy("start_logits")
    direct = engines["bert_qa"].run(
        {"input_ids": good, "attention_mask": np.ones_like(good), "token_type_ids": np.zeros_like(good)}
    )
    np.testing.assert_array_equal(served, direct["start_logits"])


def test_concurrent_requests_each_get_their_own_outputs(triton: TritonServer, engines: dict) -> None:
    """Many requests at once (dynamic batching merges them); each answer is bit-exact, bad ones fail alone."""
    rng = np.random.default_rng(7)
    batches = [rng.integers(0, 30522, (int(rng.integers(1, 4)), SEQ), dtype=np.int64) for _ in range(24)]
    bad_index = {5, 17}
    for i in bad_index:
        batches[i][0, 3] = 40000

    async def run_all() -> list:
        client = aio.InferenceServerClient(triton.grpc_url)
        try:
            return await asyncio.gather(
                *(client.infer("bert_qa", _bert_inputs(aio, ids)) for ids in batches), return_exceptions=True
            )
        finally:
            await client.close()

    results = asyncio.run(run_all())
    for i, (ids, result) in enumerate(zip(batches, results)):
        if i in bad_index:
            assert isinstance(result, InferenceServerException)
            continue
        assert not isinstance(result, BaseException), result
        direct = engines["bert_qa"].run(
            {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
        )
        np.testing.assert_array_equal(result.as_numpy("start_logits"), direct["start_logits"])
        np.testing.assert_array_equal(result.as_numpy("end_logits"), direct["end_logits"])


@pytest.mark.parametrize(
    ("model", "size", "output"),
    [
        ("resnet50_vd", 224, "logits"),
        ("yolov5n", 640, "detections"),
        ("nanodet", 416, "detections"),
    ],
)
def test_vision_models_are_bit_exact(triton: TritonServer, engines: dict, model: str, size: int, output: str) -> None:
    images = np.random.default_rng(1).integers(0, 256, (2, size, size, 3), dtype=np.uint8)
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    tensor = grpcclient.InferInput("images", list(images.shape), "UINT8")
    tensor.set_data_from_numpy(images)
    served = client.infer(model, [tensor]).as_numpy(output)
    np.testing.assert_array_equal(served, engines[model].run({"images": images})[output])


def test_triton_exports_metrics(triton: TritonServer) -> None:
    import urllib.request

    text = urllib.request.urlopen(triton.metrics_url, timeout=5).read().decode()
    assert 'nv_inference_request_success{model="bert_qa",version="1"}' in text
