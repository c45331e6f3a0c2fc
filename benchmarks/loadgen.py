"""The load generator of ``benchmarks/ceiling.py``, in its own process so its CPU is its own.

``python benchmarks/loadgen.py --mode gateway|triton --target URL --endpoint classify --concurrency 4
--requests 60``: sends a warm-up, prints ``READY``, waits for one line on stdin (the orchestrator
reads every process's CPU time in between), sends ``--requests`` requests from ``--concurrency``
concurrent clients, and prints one JSON line: latencies, errors, wall time and its own CPU seconds.

``gateway`` mode posts HTTP requests to the gateway (JSON for /qa, a 512x512 JPEG q90 for the
image routes); ``triton`` mode sends the already preprocessed tensors straight to Triton with
``tritonclient.grpc.aio`` (plain gRPC, no shared memory), i.e. Triton without the gateway.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import io
import json
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

Caller = tuple[Callable[[], Awaitable[bool]], Callable[[], Awaitable[None]]]

QA_BODY = {
    "question": "What does the gateway forward to Triton?",
    "context": (
        "The gateway tokenizes questions, decodes images, letterboxes and resizes them, runs non-maximum "
        "suppression and top-k, and forwards tensors over gRPC to Triton, which batches requests from "
        "many clients into one engine call."
    ),
}


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """Args:
    name: table name.
    model: the Triton model behind it.
    path: the gateway route with its query.
    """

    name: str
    model: str
    path: str


ENDPOINTS = {
    "qa": Endpoint("qa", "bert_qa", "/qa"),
    "detect": Endpoint("detect", "yolov5n", "/detect?model=yolov5n"),
    "detect_nanodet": Endpoint("detect_nanodet", "nanodet", "/detect?model=nanodet"),
    "classify": Endpoint("classify", "resnet50_vd", "/classify?model=resnet50_vd"),
    "classify_lite": Endpoint("classify_lite", "efficientnet_lite0", "/classify?model=efficientnet_lite0"),
}


def jpeg_512() -> bytes:
    """skimage's 512x512 astronaut as a JPEG, quality 90."""
    from PIL import Image
    from skimage import data

    buffer = io.BytesIO()
    Image.fromarray(data.astronaut()).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def triton_inputs(model: str) -> dict[str, np.ndarray]:
    """The preprocessed tensors the gateway would send for one request (batch 1)."""
    rng = np.random.default_rng(0)
    if model == "bert_qa":
        ids = rng.integers(1000, 2000, (1, 128)).astype(np.int64)
        return {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    size = {"yolov5n": 640, "nanodet": 416}.get(model, 224)
    return {"images": rng.integers(0, 256, (1, size, size, 3)).astype(np.uint8)}


def _gateway_call(
    target: str, endpoint: Endpoint
) -> tuple[Callable[[], Awaitable[bool]], Callable[[], Awaitable[None]]]:
    import httpx

    client = httpx.AsyncClient(base_url=target, timeout=120, limits=httpx.Limits(max_connections=1024))
    image = jpeg_512()

    async def call() -> bool:
        if endpoint.name == "qa":
            response = await client.post(endpoint.path, json=QA_BODY)
        else:
            response = await client.post(endpoint.path, files={"file": ("image.jpg", image, "image/jpeg")})
        return response.status_code == 200

    return call, client.aclose


def _triton_call(
    target: str, endpoint: Endpoint
) -> tuple[Callable[[], Awaitable[bool]], Callable[[], Awaitable[None]]]:
    import tritonclient.grpc.aio as grpcclient
    from tritonclient.utils import InferenceServerException, np_to_triton_dtype

    limit = 2**31 - 1
    client = grpcclient.InferenceServerClient(
        target, channel_args=[("grpc.max_send_message_length", limit), ("grpc.max_receive_message_length", limit)]
    )
    inputs = []
    for name, array in triton_inputs(endpoint.model).items():
        tensor = grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)

    async def call() -> bool:
        try:
            result = await client.infer(endpoint.model, inputs)
        except InferenceServerException:
            return False
        response = result.get_response()
        for output in response.outputs:  # decode every output, as a client must
            result.as_numpy(output.name)
        return True

    return call, client.close


def _think(seconds: float, how: str) -> None:
    """Hold this client's event loop for ``seconds`` after a response: ``spin`` burns this process's CPU
    (as a gateway's own work between Triton calls would, on the same cores), ``sleep`` only waits."""
    if how == "sleep":
        time.sleep(seconds)
        return
    end = time.perf_counter() + seconds
    x = 0
    while time.perf_counter() < end:
        x += sum(range(200))


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    endpoint = ENDPOINTS[args.endpoint]
    factory = _gateway_call if args.mode == "gateway" else _triton_call
    call, close = factory(args.target, endpoint)
    latencies: list[float] = []
    errors = 0
    remaining = args.requests
    think_s = args.think_ms / 1000

    async def worker() -> None:
        nonlocal remaining, errors
        while remaining > 0:
            remaining -= 1
            start = time.perf_counter()
            ok = await call()
            latencies.append(time.perf_counter() - start)
            errors += not ok
            if think_s:
                _think(think_s, args.think)

    try:
        for _ in range(max(4, args.concurrency) // args.concurrency):  # warm-up, concurrently
            await asyncio.gather(*(call() for _ in range(args.concurrency)))
        sys.stdout.write("READY\n")
        sys.stdout.flush()
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    finally:
        await close()
    return {"latencies_s": latencies, "errors": errors, "wall_s": wall, "cpu_s": cpu}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=("gateway", "triton"), required=True)
    parser.add_argument("--target", required=True, help="gateway URL, or Triton gRPC host:port")
    parser.add_argument("--endpoint", choices=sorted(ENDPOINTS), required=True)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument(
        "--think-ms",
        type=float,
        default=0.0,
        help="after each response, hold the (one) event loop this long: the clients then arrive as a gateway's "
        "would, one event loop's work apart",
    )
    parser.add_argument("--think", choices=("spin", "sleep"), default="spin", help="how --think-ms is spent")
    args = parser.parse_args(argv)
    result = asyncio.run(_run(args))
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
