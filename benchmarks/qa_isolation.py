"""Does one long /qa hold BERT? Small /qa latency while a long context is being answered.

Start the stack first (``./scripts/run_local.sh``), then::

    .venv/bin/python benchmarks/qa_isolation.py --url http://127.0.0.1:8080 --paragraphs 500 --small 20

It sends one long /qa (``--paragraphs`` synthetic paragraphs, about 4 per 128-token window) and,
once that is under way, ``--small`` one-window /qa requests one after another. It prints the long
request's latency and windows, and the small requests' latencies, counting how many were answered
before the long one. Run it against gateways with different ``GATEWAY_QA_CHUNK_ROWS`` to compare.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import httpx

SMALL = {"question": "Who wrote the report?", "context": "The report was written by Ada Lovelace in 1843."}


def long_body(paragraphs: int) -> dict[str, str]:
    context = " ".join(
        f"Paragraph {i}: the committee met in room {i * 7} and approved budget item {i * 13} after a long debate."
        for i in range(paragraphs)
    )
    return {"question": "Which room did the committee meet in?", "context": context}


async def run(url: str, paragraphs: int, small: int, start_delay_s: float, timeout_s: float) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=timeout_s) as client:
        t0 = time.perf_counter()

        async def long_request() -> tuple[httpx.Response, float]:
            response = await client.post("/qa", json=long_body(paragraphs))
            return response, time.perf_counter()

        long_task = asyncio.ensure_future(long_request())
        await asyncio.sleep(start_delay_s)
        small_ms: list[float] = []
        small_done_at: list[float] = []
        small_status: list[int] = []
        for _ in range(small):
            start = time.perf_counter()
            response = await client.post("/qa", json=SMALL)
            small_ms.append((time.perf_counter() - start) * 1000)
            small_done_at.append(time.perf_counter())
            small_status.append(response.status_code)
        long_response, long_done = await long_task
    long_ms = (long_done - t0) * 1000
    windows = long_response.json().get("windows", "-") if long_response.status_code == 200 else "-"
    before_long = sum(1 for t in small_done_at if t < long_done)
    ok = sum(1 for s in small_status if s == 200)
    row = "{:<8} {:>6} {:>8} {:>4} {:>4} {:>9} {:>9} {:>12}"
    print(row.format("request", "status", "windows", "n", "ok", "p50 ms", "max ms", "before long"))
    print(row.format("long", long_response.status_code, windows, 1, "-", f"{long_ms:.1f}", f"{long_ms:.1f}", "-"))
    p50, worst = statistics.median(small_ms), max(small_ms)
    print(row.format("small", "-", 1, small, ok, f"{p50:.1f}", f"{worst:.1f}", before_long))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--paragraphs", type=int, default=500, help="size of the long context")
    parser.add_argument("--small", type=int, default=20, help="small requests sent while the long one runs")
    parser.add_argument("--start-delay-s", type=float, default=0.2, help="head start of the long request")
    parser.add_argument("--timeout-s", type=float, default=300.0)
    args = parser.parse_args()
    asyncio.run(run(args.url, args.paragraphs, args.small, args.start_delay_s, args.timeout_s))


if __name__ == "__main__":
    main()
