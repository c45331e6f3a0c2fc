"""Gateway CPU per request, before and after a change, both gateways up at once (paired A/B).

On a shared host the load moves between two sequential runs by more than most changes save; here one
real ``tritonserver`` with the null engines serves two gateways at once, one from this checkout
("after") and one from ``--before`` (a worktree of the commit to compare with, e.g.
``git worktree add --detach /tmp/before <commit>``), and the client alternates between them in
``--batches`` batches of ``--per-batch`` requests (the order flips every batch). Each batch reads the
gateway's thread run time (``/proc/<pid>/task/*/schedstat``, as ``gateway_cpu.py``), so both sides of a
pair ran under the same load. The table gives per route the median over batches on each side and the
median of the per-batch after/before ratios::

    .venv/bin/python benchmarks/gateway_cpu_paired.py --before /tmp/before --port-base 21300

A setting instead of a commit: leave out ``--before`` (both sides run this checkout) and give the
"before" gateway its own environment, e.g. coalescing off against the default at 4 clients::

    .venv/bin/python benchmarks/gateway_cpu_paired.py --before-env GATEWAY_TRITON_COALESCE_INFLIGHT=0 \
        --concurrency 4 --port-base 21300
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import logging
import os
import pathlib
import re
import statistics
import sys
import tempfile
from typing import Any

import httpx

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import ceiling
from ceiling import NULL_ENV, CpuSample, _gateway, _null_repo, _triton
from gateway_cpu import ROUTES, drive
from loadgen import jpeg_512

LOGGER = logging.getLogger("gateway_cpu_paired")
AFTER = pathlib.Path(__file__).resolve().parent.parent


def _requests_per_call(client: httpx.Client) -> str:
    """Mean requests per Triton call from the gateway's histogram ("–" when it does not coalesce)."""
    text = client.get("/metrics").text
    total = {
        kind: sum(float(v) for v in re.findall(rf"^gateway_triton_call_requests_{kind}\{{[^}}]*\}} (\S+)$", text, re.M))
        for kind in ("sum", "count")
    }
    return f"{total['sum'] / total['count']:.2f}" if total["count"] else "–"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=pathlib.Path, default=AFTER, help="checkout to compare with (default: this)")
    parser.add_argument(
        "--before-env", nargs="*", default=[], metavar="GATEWAY_X=V", help="environment of the before gateway only"
    )
    parser.add_argument("--concurrency", type=int, default=1, help="client threads sending each batch")
    parser.add_argument("--routes", nargs="+", choices=sorted(ROUTES), default=["qa", "classify", "detect"])
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--per-batch", type=int, default=100)
    parser.add_argument("--port-base", type=int, default=21300)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    os.environ[NULL_ENV] = "1"
    os.environ["GATEWAY_HEALTH_PROBE_INTERVAL_S"] = "0"
    image = jpeg_512()
    sides = {"after": AFTER, "before": args.before.resolve()}
    cpu: dict[tuple[str, str], list[float]] = {(side, name): [] for side in sides for name in args.routes}
    with tempfile.TemporaryDirectory(prefix="gateway-cpu-paired-") as tmp, contextlib.ExitStack() as stack:
        work = pathlib.Path(tmp)
        repo = _null_repo(work, "full")
        triton = stack.enter_context(_triton(repo, True, args.port_base, work / "triton.log"))
        gateways: dict[str, tuple[int, httpx.Client]] = {}
        before_env = dict(item.split("=", 1) for item in args.before_env)
        clients: dict[str, list[httpx.Client]] = {}
        for offset, (side, root) in enumerate(sides.items()):
            ceiling.ROOT = root  # the gateway runs `python -m gateway` from there
            saved = dict(os.environ)
            if side == "before":
                os.environ.update(before_env)  # read by _gateway when it starts the process
            try:
                process, url = stack.enter_context(
                    _gateway(repo, triton.grpc_url, args.port_base + 10 + offset, 1, work / f"{side}.log")
                )
            finally:
                os.environ.clear()
                os.environ.update(saved)
            clients[side] = [
                stack.enter_context(httpx.Client(base_url=url, timeout=60)) for _ in range(args.concurrency)
            ]
            gateways[side] = (process.pid, clients[side][0])
            env = before_env if side == "before" else {}
            LOGGER.info("%s: gateway pid %d from %s on %s %s", side, process.pid, root, url, env)
        ceiling.ROOT = AFTER
        pool = stack.enter_context(concurrent.futures.ThreadPoolExecutor(args.concurrency))

        def send(side: str, route: Any, n: int) -> None:
            share = [n // args.concurrency + (i < n % args.concurrency) for i in range(args.concurrency)]
            jobs = [
                pool.submit(lambda c, k: [drive(c, route, image) for _ in range(k)], c, k)
                for c, k in zip(clients[side], share, strict=True)
            ]
            for job in jobs:
                job.result()

        for name in args.routes:
            route = ROUTES[name]
            for side in gateways:
                send(side, route, max(30, args.concurrency))  # warm-up: connections, first-use paths, caches
            for batch in range(args.batches):
                for side in ("after", "before") if batch % 2 == 0 else ("before", "after"):
                    pid, _ = gateways[side]
                    start = CpuSample.read([pid])
                    send(side, route, args.per_batch)
                    cpu[side, name].append(CpuSample.read([pid]).seconds_since(start) * 1000 / args.per_batch)
            LOGGER.info("%s: after %s, before %s", route.path, cpu["after", name], cpu["before", name])
        merged = {side: _requests_per_call(client) for side, (_, client) in gateways.items()}
    lines = [
        f"Requests per Triton call (gateway_triton_call_requests, warm-up included): before {merged['before']}, "
        f"after {merged['after']}.",
        "",
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end; null engines, 1 process per "
        f"gateway, {args.batches} batches of {args.per_batch} requests per route and side, alternating, "
        f"{args.concurrency} client thread(s); before: {args.before}"
        + (f" with {' '.join(args.before_env)}" if args.before_env else "")
        + ".",
        "",
        "| route | before ms/req | after ms/req | after/before (median of batch ratios) |",
        "|---|---|---|---|",
    ]
    for name in args.routes:
        before, after = cpu["before", name], cpu["after", name]
        ratio = statistics.median(a / b for a, b in zip(after, before))
        medians = f"{statistics.median(before):.2f} | {statistics.median(after):.2f}"
        lines.append(f"| `{ROUTES[name].path}` | {medians} | {ratio:.2f} |")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
