"""End-to-end serving benchmark: load the running gateway, compare with the bare engine.

Start the stack first (``./scripts/run_local.sh``), then::

    .venv/bin/python benchmarks/serving.py --requests 200 --concurrency 1 8

For each endpoint and concurrency it sends a bounded number of requests and prints requests/s
and latency percentiles next to the bare engine's items/s at the same batch size (measured here,
in this process, on the same artifact, after the load has finished), and their ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import io
import json
import pathlib
import sys
import time

import httpx
from latency import LoadResult, percentiles_ms  # benchmarks/ is on sys.path when this script runs
from loadgen import QA_BODY

from magicmind_build.bench import bench_engine, load_bare_engine


@dataclasses.dataclass(frozen=True)
class Endpoint:
    name: str
    model: str
    path: str
    json: dict | None = None
    image: bytes | None = None
    content_type: str = "image/jpeg"


def _image(kind: str) -> bytes:
    from PIL import Image
    from skimage import data

    array = data.astronaut() if kind == "astronaut" else data.chelsea()
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


async def _load(url: str, endpoint: Endpoint, concurrency: int, total: int) -> LoadResult:
    latencies: list[float] = []
    errors = 0
    remaining = total
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:

        async def one() -> None:
            nonlocal errors
            start = time.perf_counter()
            if endpoint.json is not None:
                response = await client.post(endpoint.path, json=endpoint.json)
            else:
                files = {"file": ("image.jpg", endpoint.image, endpoint.content_type)}
                response = await client.post(endpoint.path, files=files)
            latencies.append(time.perf_counter() - start)
            errors += response.status_code != 200

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                await one()

        for _ in range(min(concurrency, 4)):  # warm-up
            await one()
        latencies.clear()
        errors = 0
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return LoadResult(
        endpoint.name, concurrency, len(latencies), errors, len(latencies) / elapsed, *percentiles_ms(latencies)
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--repo", type=pathlib.Path, default=pathlib.Path("triton_repo"))
    parser.add_argument(
        "--endpoints", nargs="+", default=["qa", "detect", "detect_nanodet", "classify", "classify_lite"]
    )
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--requests", type=int, default=100, help="requests per (endpoint, concurrency)")
    parser.add_argument("--bare-iterations", type=int, default=10)
    parser.add_argument("--json", type=pathlib.Path, default=None, help="also write the rows here")
    args = parser.parse_args(argv)

    endpoints = {
        "qa": Endpoint("qa", "bert_qa", "/qa", json=QA_BODY),
        "detect": Endpoint("detect", "yolov5n", "/detect?model=yolov5n", image=_image("astronaut")),
        "detect_nanodet": Endpoint("detect_nanodet", "nanodet", "/detect?model=nanodet", image=_image("astronaut")),
        "classify": Endpoint("classify", "resnet50_vd", "/classify?model=resnet50_vd", image=_image("chelsea")),
        "classify_lite": Endpoint(
            "classify_lite", "efficientnet_lite0", "/classify?model=efficientnet_lite0", image=_image("chelsea")
        ),
    }
    served = [
        asyncio.run(_load(args.url, endpoints[name], c, args.requests))
        for name in args.endpoints
        for c in args.concurrency
    ]
    # Bare engine numbers after the load, so the two never compete for the CPU.
    bare: dict[tuple[str, int], float] = {}
    for name in args.endpoints:
        model = endpoints[name].model
        engine, _ = load_bare_engine(args.repo / model / "1")
        for c in args.concurrency:
            bare[(model, c)] = bench_engine(model, engine, c, args.bare_iterations).items_per_s

    header = (
        f"{'endpoint':<14} {'conc':>4} {'reqs':>5} {'err':>4} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} "
        f"{'p99 ms':>8} {'bare items/s':>12} {'served/bare':>11}"
    )
    rows = [header]
    records = []
    for r in served:
        b = bare[(endpoints[r.endpoint].model, r.concurrency)]
        rows.append(
            f"{r.endpoint:<14} {r.concurrency:>4} {r.requests:>5} {r.errors:>4} {r.requests_per_s:>8.1f} "
            f"{r.p50_ms:>8.1f} {r.p95_ms:>8.1f} {r.p99_ms:>8.1f} {b:>12.1f} {r.requests_per_s / b:>11.2f}"
        )
        records.append({**dataclasses.asdict(r), "bare_items_per_s": b})
    sys.stdout.write("\n".join(rows) + "\n")
    if args.json:
        args.json.write_text(json.dumps(records, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
