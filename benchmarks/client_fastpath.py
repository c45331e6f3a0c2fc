"""CPU per Triton call of the gateway's client paths, against a real tritonserver with null engines.

One process, one asyncio loop, one null-engine ``tritonserver`` (``triton_local``, ``MM_ALLOW_NULL_ENGINE=1``).
Rows, measured in interleaved rounds (``--rounds`` of ``--calls`` sequential calls each):

- ``tritonclient``: ``tritonclient.grpc.aio`` ``infer`` with ``InferInput``/``InferRequestedOutput`` and
  ``InferResult.as_numpy`` (what the gateway did before);
- ``gateway``: :meth:`gateway.triton.TritonClient.infer` (the ``ModelInferRequest`` built from the arrays, outputs
  read from ``raw_output_contents``);
- for ``resnet50_vd`` also ``gateway, input in shm`` (its 224x224 crop, 150 kB, through a region);
- for ``yolov5n`` also ``gateway, input in shm`` (the letterboxed input copied into a registered system
  shared-memory region, the request naming it) and ``... and output in shm`` (the 72 kB output written by Triton
  into a second region and copied out).

Columns: this process's CPU per call (``time.process_time``: the loop and gRPC's threads) and tritonserver's
(with its Python-backend stubs; per-thread run time from ``/proc``, as ``ceiling.py`` reads it)::

    .venv/bin/python benchmarks/client_fastpath.py --port-base 31400 --calls 300 --rounds 4
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import pathlib
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import tritonclient.grpc.aio as grpcclient
import tritonclient.utils.shared_memory as shm

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from ceiling import NULL_ENV, CpuSample, _descendants, _null_repo, _triton

from gateway.triton import TritonClient, infer_request

LOGGER = logging.getLogger("client_fastpath")

CASES: dict[str, tuple[dict[str, np.ndarray], list[str]]] = {
    "bert_qa": (
        {k: np.ones((1, 128), np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")},
        ["start_logits", "end_logits"],
    ),
    "resnet50_vd": ({"images": np.random.default_rng(0).integers(0, 255, (1, 224, 224, 3), np.uint8)}, ["logits"]),
    "yolov5n": ({"images": np.random.default_rng(0).integers(0, 255, (1, 640, 640, 3), np.uint8)}, ["detections"]),
}


async def run(url: str, triton_pid: int, calls: int, rounds: int) -> list[tuple[str, str, list[float], list[float]]]:
    raw = grpcclient.InferenceServerClient(url, channel_args=[("grpc.max_send_message_length", 2**31 - 1)])
    client = TritonClient(url, 30.0, 0, 0.1, shared_memory_regions=1)
    assert client.pool is not None
    image = CASES["yolov5n"][0]["images"]
    region = await client.region("yolov5n/images", image.nbytes)
    out_name, out_bytes = f"gw-{os.getpid()}-bench-out", 3000 * 6 * 4
    out_handle = shm.create_shared_memory_region(out_name, f"/{out_name}", out_bytes)
    await raw.register_system_shared_memory(out_name, f"/{out_name}", out_bytes)
    assert region is not None
    view = region.array(np.uint8, image.shape)
    crop = CASES["resnet50_vd"][0]["images"]
    crop_region = await client.region("resnet50_vd/images", crop.nbytes)
    assert crop_region is not None
    crop_view = crop_region.array(np.uint8, crop.shape)

    def tritonclient_call(model: str) -> Callable[[], Awaitable[Any]]:
        inputs, outputs = CASES[model]

        async def call() -> Any:
            tensors = []
            for name, array in inputs.items():
                tensor = grpcclient.InferInput(name, list(array.shape), "UINT8" if array.dtype == np.uint8 else "INT64")
                tensor.set_data_from_numpy(array)
                tensors.append(tensor)
            result = await raw.infer(model, tensors, outputs=[grpcclient.InferRequestedOutput(o) for o in outputs])
            return [result.as_numpy(o) for o in outputs]

        return call

    def gateway_call(model: str) -> Callable[[], Awaitable[Any]]:
        inputs, outputs = CASES[model]
        return lambda: client.infer(model, inputs, outputs)

    async def shm_input() -> Any:
        view[...] = image  # the gateway letterboxes into the region instead
        return await client.infer("yolov5n", {"images": view}, ["detections"], placed={"images": region})

    async def shm_crop() -> Any:
        crop_view[...] = crop  # the gateway copies its crop into the region instead
        return await client.infer("resnet50_vd", {"images": crop_view}, ["logits"], placed={"images": crop_region})

    async def shm_both() -> Any:
        view[...] = image
        request = infer_request("yolov5n", {"images": view}, [], "", placed={"images": region})
        output = request.outputs.add(name="detections")
        output.parameters["shared_memory_region"].string_param = out_name
        output.parameters["shared_memory_byte_size"].int64_param = out_bytes
        await client._model_infer(request, 30.0)
        return np.array(shm.get_contents_as_numpy(out_handle, np.float32, [1, 3000, 6]), copy=True)

    rows: list[tuple[str, str, Callable[[], Awaitable[Any]]]] = []
    for model in CASES:
        rows += [(model, "tritonclient", tritonclient_call(model)), (model, "gateway", gateway_call(model))]
    rows.insert(4, ("resnet50_vd", "gateway, input in shm", shm_crop))
    rows += [("yolov5n", "gateway, input in shm", shm_input), ("yolov5n", "gateway, input and output in shm", shm_both)]
    for _, _, call in rows:
        for _ in range(20):
            await call()
    pids = [triton_pid, *_descendants(triton_pid)]
    cpu: dict[int, tuple[list[float], list[float]]] = {i: ([], []) for i in range(len(rows))}
    for _ in range(rounds):
        for i, (_, _, call) in enumerate(rows):
            before, t0 = CpuSample.read(pids), time.process_time()
            for _ in range(calls):
                await call()
            own, server = time.process_time() - t0, CpuSample.read(pids).seconds_since(before)
            cpu[i][0].append(own * 1000 / calls)
            cpu[i][1].append(server * 1000 / calls)
    client.release(region)
    client.release(crop_region)
    await raw.unregister_system_shared_memory(out_name)
    shm.destroy_shared_memory_region(out_handle)
    await client.close()
    await raw.close()
    return [(model, path, *cpu[i]) for i, (model, path, _) in enumerate(rows)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=300, help="calls per row per round")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--port-base", type=int, default=31400)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ[NULL_ENV] = "1"
    with tempfile.TemporaryDirectory(prefix="client-fastpath-") as tmp:
        work = pathlib.Path(tmp)
        with _triton(_null_repo(work, "full"), True, args.port_base, work / "triton.log") as triton:
            assert triton.pid is not None
            rows = asyncio.run(run(triton.grpc_url, triton.pid, args.calls, args.rounds))
    lines = [
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPUs shared with other users "
        f"(load average {os.getloadavg()[0]:.1f} at the end), null engines, {args.rounds} rounds of {args.calls} "
        "sequential calls per row, interleaved; median (lowest round).",
        "",
        "| model | path | client CPU ms/call | tritonserver CPU ms/call |",
        "|---|---|---|---|",
    ]
    for model, path, own, server in rows:
        lines.append(
            f"| {model} | {path} | {statistics.median(own):.2f} ({min(own):.2f}) "
            f"| {statistics.median(server):.2f} ({min(server):.2f}) |"
        )
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
