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
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import pathlib
import statistics
import sys
import tempfile

import httpx

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import ceiling
from ceiling import NULL_ENV, CpuSample, _gateway, _null_repo, _triton
from gateway_cpu import ROUTES, drive
from loadgen import jpeg_512

LOGGER = logging.getLogger("gateway_cpu_paired")
AFTER = pathlib.Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=pathlib.Path, required=True, help="checkout of the code to compare with")
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
        for offset, (side, root) in enumerate(sides.items()):
            ceiling.ROOT = root  # the gateway runs `python -m gateway` from there
            process, url = stack.enter_context(
                _gateway(repo, triton.grpc_url, args.port_base + 10 + offset, 1, work / f"{side}.log")
            )
            gateways[side] = (process.pid, stack.enter_context(httpx.Client(base_url=url, timeout=60)))
            LOGGER.info("%s: gateway pid %d from %s on %s", side, process.pid, root, url)
        ceiling.ROOT = AFTER
        for name in args.routes:
            route = ROUTES[name]
            for _, client in gateways.values():
                for _ in range(30):  # warm-up: connections, first-use paths, caches
                    drive(client, route, image)
            for batch in range(args.batches):
                for side in ("after", "before") if batch % 2 == 0 else ("before", "after"):
                    pid, client = gateways[side]
                    start = CpuSample.read([pid])
                    for _ in range(args.per_batch):
                        drive(client, route, image)
                    cpu[side, name].append(CpuSample.read([pid]).seconds_since(start) * 1000 / args.per_batch)
            LOGGER.info("%s: after %s, before %s", route.path, cpu["after", name], cpu["before", name])
    lines = [
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end; null engines, 1 process per "
        f"gateway, {args.batches} batches of {args.per_batch} requests per route and side, alternating.",
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
