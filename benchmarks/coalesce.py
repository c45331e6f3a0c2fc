"""What client-side coalescing (``GATEWAY_TRITON_COALESCE_INFLIGHT``) saves on the call path, in one run.

One command starts a real ``tritonserver`` serving the benchmark-only null engines (zero outputs of the
real shapes at no engine cost, ``MM_ALLOW_NULL_ENGINE=1``) and, in this process, the gateway's own
``TritonClient`` (uvloop, as the gateway runs it). For each model it sends the tensor the gateway sends
(``/classify``'s 224x224 uint8 image over gRPC; ``/detect``'s 640x640 letterbox through a shared-memory
region, as the local stack does; one 384-token ``/qa`` window) from ``--concurrency`` asyncio tasks, one
``TritonClient.infer`` after another, with coalescing off (``0``) and at each ``--inflight`` value, the
settings interleaved round by round so that all of them see the same host. Per request it reports:

- ``client CPU``: this process's CPU (``RUSAGE_SELF``: the event loop and gRPC's threads; nothing else of
  this process runs meanwhile) — the share of the gateway's CPU that the call costs;
- ``Triton tier CPU``: tritonserver and its Python-backend stubs (``/proc/<pid>/task/*/schedstat``, as
  ``ceiling.py``), the null engine costing nothing;
- ``calls/req``: Triton calls per request (1.0: nothing merged).

HTTP, preprocessing and post-processing are not in it: ``ceiling.py`` and ``gateway_cpu.py`` measure the
whole gateway. Run::

    .venv/bin/python benchmarks/coalesce.py --port-base 28100 --out benchmarks/results/coalesce.md
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import pathlib
import statistics
import sys
import tempfile
import time

import numpy as np
import uvloop

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from ceiling import NULL_ENV, CpuSample, _descendants, _null_repo, _triton, exit_on_sigterm
from gateway_cpu import _process_cpu_s

from gateway.settings import Settings
from gateway.triton import TritonClient

LOGGER = logging.getLogger("coalesce")


@dataclasses.dataclass(frozen=True)
class Case:
    """Args:
    name: the row label.
    model: the Triton model.
    inputs: one request's inputs.
    outputs: the outputs read.
    shared: the input sent through a shared-memory region (None: over gRPC).
    """

    name: str
    model: str
    inputs: dict[str, np.ndarray]
    outputs: list[str]
    shared: str | None = None


def _cases(seq_len: int) -> list[Case]:
    window = np.ones((1, seq_len), np.int64)
    return [
        Case("/classify tensor (gRPC)", "resnet50_vd", {"images": np.zeros((1, 224, 224, 3), np.uint8)}, ["logits"]),
        Case(
            "/detect tensor (shared memory)",
            "yolov5n",
            {"images": np.zeros((1, 640, 640, 3), np.uint8)},
            ["detections"],
            shared="images",
        ),
        Case(
            "/qa window (gRPC)",
            "bert_qa",
            {"input_ids": window, "attention_mask": window, "token_type_ids": 0 * window},
            ["start_logits", "end_logits"],
        ),
    ]


@dataclasses.dataclass
class Result:
    case: str
    inflight: int
    concurrency: int
    client_ms: list[float] = dataclasses.field(default_factory=list)
    triton_ms: list[float] = dataclasses.field(default_factory=list)
    calls_per_request: list[float] = dataclasses.field(default_factory=list)
    requests_per_s: list[float] = dataclasses.field(default_factory=list)


async def _round(client: TritonClient, case: Case, max_batch: int, concurrency: int, requests: int) -> int:
    """``requests`` calls from ``concurrency`` tasks; returns how many Triton calls they took."""
    calls = 0

    def count(model: str, merged: int, rows: int) -> None:
        nonlocal calls
        calls += 1

    client.on_call = count
    left = requests

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            inputs, placed, region = case.inputs, None, None
            if case.shared is not None:
                array = case.inputs[case.shared]
                region = await client.region(f"{case.model}/{case.shared}", array.nbytes)
                if region is not None:
                    view = region.array(array.dtype, array.shape)
                    view[:] = array
                    inputs, placed = {case.shared: view}, {case.shared: region}
            try:
                await client.infer(case.model, inputs, case.outputs, placed, max_batch)
            finally:
                if region is not None:
                    client.release(region)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return calls


async def _measure(
    grpc_url: str, triton_pids: list[int], settings: list[int], concurrency: list[int], requests: int, rounds: int
) -> list[Result]:
    base = Settings(triton_url=grpc_url, triton_shared_memory=True, _env_file=None)  # type: ignore[call-arg]
    clients = {v: TritonClient.from_settings(base.model_copy(update={"triton_coalesce_inflight": v})) for v in settings}
    try:
        first = clients[settings[0]]
        io = await first.model_io(["resnet50_vd", "yolov5n", "bert_qa"], 60)
        cases = _cases(io["bert_qa"].inputs["input_ids"].dims[-1])
        results = {(c.name, v, n): Result(c.name, v, n) for c in cases for v in settings for n in concurrency}
        for case in cases:
            for client in clients.values():  # warm-up: channels, regions, first-use paths
                await _round(client, case, io[case.model].max_batch_size, max(concurrency), 100)
        for round_no in range(rounds):
            for case in cases:
                for n in concurrency:
                    order = settings if round_no % 2 == 0 else settings[::-1]
                    for v in order:
                        cpu0, wall0, triton0 = _process_cpu_s(), time.perf_counter(), CpuSample.read(triton_pids)
                        calls = await _round(clients[v], case, io[case.model].max_batch_size, n, requests)
                        wall = time.perf_counter() - wall0
                        triton_s = CpuSample.read(triton_pids).seconds_since(triton0)
                        result = results[(case.name, v, n)]
                        result.client_ms.append((_process_cpu_s() - cpu0) * 1000 / requests)
                        result.triton_ms.append(triton_s * 1000 / requests)
                        result.calls_per_request.append(calls / requests)
                        result.requests_per_s.append(requests / wall)
            LOGGER.info("round %d of %d done", round_no + 1, rounds)
        return list(results.values())
    finally:
        for client in clients.values():
            await client.close()


def _ratio(mine: list[float], theirs: list[float]) -> float:
    """Median of the per-round ratios (both sides of a round ran back to back)."""
    return statistics.median(a / b for a, b in zip(mine, theirs, strict=True))


def markdown(results: list[Result], note: str) -> str:
    lines = [
        note,
        "",
        "| call | coalesce inflight | concurrency | calls/req | client CPU ms/req | Triton tier CPU ms/req "
        "| req/s | client CPU vs off | Triton tier vs off |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    off = {(r.case, r.concurrency): r for r in results if r.inflight == 0}
    for r in results:
        base = off.get((r.case, r.concurrency))
        client, triton = statistics.median(r.client_ms), statistics.median(r.triton_ms)
        vs_client = vs_triton = "–"
        if base is not None and r.inflight:
            vs_client = f"{_ratio(r.client_ms, base.client_ms):.2f}"
            vs_triton = f"{_ratio(r.triton_ms, base.triton_ms):.2f}"
        lines.append(
            f"| {r.case} | {r.inflight or 'off'} | {r.concurrency} | {statistics.median(r.calls_per_request):.2f} "
            f"| {client:.2f} | {triton:.2f} | {statistics.median(r.requests_per_s):.0f} | {vs_client} | {vs_triton} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    exit_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inflight", type=int, nargs="+", default=[1, 2], help="coalescing settings besides off")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--requests", type=int, default=400, help="requests per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--port-base", type=int, default=28100)
    parser.add_argument("--out", type=pathlib.Path, help="write the markdown table here too")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ[NULL_ENV] = "1"
    settings = [0, *[v for v in args.inflight if v > 0]]
    with tempfile.TemporaryDirectory(prefix="coalesce-") as tmp:
        work = pathlib.Path(tmp)
        repo = _null_repo(work, "full")
        with _triton(repo, True, args.port_base, work / "triton.log") as triton:
            pids = [triton.pid, *_descendants(triton.pid)]
            results = uvloop.run(
                _measure(triton.grpc_url, pids, settings, args.concurrency, args.requests, args.rounds)
            )
    note = (
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPUs (load average "
        f"{os.getloadavg()[0]:.1f} at the end), null engines; median of {args.rounds} interleaved rounds of "
        f"{args.requests} requests; ratios: median of per-round ratios against coalescing off."
    )
    table = markdown(results, note)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table)
    sys.stdout.write(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
