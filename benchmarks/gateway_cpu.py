"""The gateway process's CPU time per request, per route, against a real Triton with null engines.

One command starts a real ``tritonserver`` (``triton_local``) serving the benchmark-only null engines
(zero outputs of the real shapes at no engine cost, ``MM_ALLOW_NULL_ENGINE=1``), so the gateway's own
cost is what is left, and one gateway (``python -m gateway``, one process, the image models' input through
shared memory as the local stack runs it). It drives each route with one fixed request (a 512x512
JPEG q90 of scikit-image's astronaut for the image routes, the load generator's one-window question
for ``/qa``), ``--requests`` at a time from each ``--concurrency`` number of client threads (1 and 4 by
default: issue 6 states its targets at concurrency 4, and one request at a time costs the most), in ``--rounds`` rounds,
and reads every gateway thread's run time in nanoseconds (``/proc/<pid>/task/<tid>/schedstat``,
as ``ceiling.py`` does) around each round (the client, Triton and everything else on the machine are
not counted). The table gives the median and the lowest round::

    .venv/bin/python benchmarks/gateway_cpu.py --port-base 21100 --out benchmarks/results/gateway_cpu.md

Two floors run only when named (``--routes healthz triton_call qa ...``): ``GET /healthz``, the front
end alone (uvicorn, the middlewares, FastAPI, a small JSON answer, no Triton call); and ``triton_call``,
the gateway's ``TritonClient.infer`` of ``/classify``'s tensor called from this process, no HTTP, its
CPU per call (the process's, gRPC's own threads included). Every task route pays both.

The health prober is switched off (``GATEWAY_HEALTH_PROBE_INTERVAL_S=0``) so that only requests
are counted; everything else is the gateway's defaults.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import logging
import os
import pathlib
import resource
import statistics
import sys
import tempfile
import time

import httpx
import numpy as np
import uvloop

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from ceiling import NULL_ENV, CpuSample, _descendants, _gateway, _null_repo, _triton, exit_on_sigterm
from loadgen import QA_BODY, jpeg_512

LOGGER = logging.getLogger("gateway_cpu")


@dataclasses.dataclass(frozen=True)
class Route:
    """Args:
    name: table name.
    path: the route with its query.
    target_ms: the CPU ms per request the gateway should stay under (issue 6), None when none is set.
    """

    name: str
    path: str
    target_ms: float | None


ROUTES = {
    "qa": Route("qa", "/qa", 2.0),
    "classify": Route("classify", "/classify?model=resnet50_vd", 2.0),
    "classify_lite": Route("classify_lite", "/classify?model=efficientnet_lite0", 2.0),
    "detect": Route("detect", "/detect?model=yolov5n", 4.0),
    "detect_nanodet": Route("detect_nanodet", "/detect?model=nanodet", 4.0),
    # Floors, run only when named (--routes healthz triton_call ...). healthz: the front end alone (uvicorn,
    # the middlewares, FastAPI, a JSON answer; no Triton call). triton_call: no HTTP at all, the gateway's
    # TritonClient.infer of /classify's tensor (1x224x224x3 uint8) from this process, its CPU per call.
    "healthz": Route("healthz", "/healthz", None),
    "triton_call": Route("triton_call", "TritonClient.infer(resnet50_vd), no HTTP (benchmark process CPU)", None),
}
FLOORS = ("healthz", "triton_call")
DEFAULT_ROUTES = [name for name in ROUTES if name not in FLOORS]


@dataclasses.dataclass
class Result:
    route: Route
    concurrency: int
    requests: int
    cpu_ms: list[float]  # per request, one value per round
    wall_ms: list[float]  # per request, one value per round (client wall time / requests)

    @property
    def median(self) -> float:
        return statistics.median(self.cpu_ms)


def drive(client: httpx.Client, route: Route, image: bytes) -> None:
    if route.name == "healthz":
        response = client.get(route.path)
    elif route.name == "qa":
        response = client.post(route.path, json=QA_BODY)
    else:
        response = client.post(route.path, files={"file": ("image.jpg", image, "image/jpeg")})
    if response.status_code != 200:
        raise RuntimeError(f"{route.path} answered {response.status_code}: {response.text[:300]}")


def measure(url: str, pid: int, route: Route, requests: int, rounds: int, concurrency: int) -> Result:
    """``rounds`` rounds of ``requests`` requests; the gateway PID's CPU per request in each."""
    image = jpeg_512()
    clients = [httpx.Client(base_url=url, timeout=60) for _ in range(concurrency)]
    cpu_ms, wall_ms = [], []
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:

        def batch(n: int) -> None:
            share = [n // concurrency + (i < n % concurrency) for i in range(concurrency)]
            jobs = [
                pool.submit(lambda c, k: [drive(c, route, image) for _ in range(k)], c, k)
                for c, k in zip(clients, share)
            ]
            for job in jobs:
                job.result()

        batch(max(20, concurrency))  # warm-up: connections, first-use paths, caches
        pids = [pid, *_descendants(pid)]  # the gateway and, with GATEWAY_WORKERS > 1, its workers
        for _ in range(rounds):
            cpu0, wall0 = CpuSample.read(pids), time.perf_counter()
            batch(requests)
            wall, cpu = time.perf_counter() - wall0, CpuSample.read(pids).seconds_since(cpu0)
            cpu_ms.append(cpu * 1000 / requests)
            wall_ms.append(wall * 1000 / requests)
    for client in clients:
        client.close()
    return Result(route, concurrency, requests, cpu_ms, wall_ms)


def measure_triton_call(grpc_url: str, route: Route, requests: int, rounds: int) -> Result:
    """The gateway's gRPC client alone: ``TritonClient.infer`` of ``/classify``'s tensor, one call at a time,
    timed by this process's CPU (``RUSAGE_SELF``: the event loop and gRPC's own threads; nothing else of
    this process runs meanwhile)."""
    from gateway.settings import Settings
    from gateway.triton import TritonClient

    images = np.zeros((1, 224, 224, 3), np.uint8)

    async def run() -> tuple[list[float], list[float]]:
        client = TritonClient.from_settings(
            Settings(triton_url=grpc_url, triton_shared_memory=False, _env_file=None)  # type: ignore[call-arg]
        )
        cpu_ms, wall_ms = [], []
        try:
            for _ in range(50):  # warm-up: the channel, first-use paths
                await client.infer("resnet50_vd", {"images": images}, ["logits"])
            for _ in range(rounds):
                cpu0, wall0 = _process_cpu_s(), time.perf_counter()
                for _ in range(requests):
                    await client.infer("resnet50_vd", {"images": images}, ["logits"])
                cpu_ms.append((_process_cpu_s() - cpu0) * 1000 / requests)
                wall_ms.append((time.perf_counter() - wall0) * 1000 / requests)
        finally:
            await client.close()
        return cpu_ms, wall_ms

    cpu_ms, wall_ms = uvloop.run(run())
    return Result(route, 1, requests, cpu_ms, wall_ms)


def _process_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def markdown(results: list[Result], note: str) -> str:
    head = (
        "| route | concurrency | requests/round | rounds | gateway CPU ms/req (median) | lowest round | target ms "
        "| client wall ms/req |"
    )
    lines = [note, "", head, "|---|---|---|---|---|---|---|---|"]
    for r in results:
        target = "–" if r.route.target_ms is None else f"≤ {r.route.target_ms:g}"
        lines.append(
            f"| `{r.route.path}` | {r.concurrency} | {r.requests} | {len(r.cpu_ms)} | {r.median:.2f} "
            f"| {min(r.cpu_ms):.2f} | {target} | {statistics.median(r.wall_ms):.1f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    exit_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--routes", nargs="+", choices=sorted(ROUTES), default=DEFAULT_ROUTES)
    parser.add_argument("--requests", type=int, default=200, help="requests per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--concurrency", type=int, nargs="+", default=[1, 4], help="client threads; one row per value and route"
    )
    parser.add_argument("--port-base", type=int, default=21100)
    parser.add_argument("--out", type=pathlib.Path, help="write the markdown table here too")
    parser.add_argument("--note", default="", help="a line printed above the table")
    parser.add_argument("--hold", type=float, default=0.0, help="after measuring, keep the stack up this many s")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    os.environ[NULL_ENV] = "1"
    os.environ["GATEWAY_HEALTH_PROBE_INTERVAL_S"] = "0"
    results = []
    with tempfile.TemporaryDirectory(prefix="gateway-cpu-") as tmp:
        work = pathlib.Path(tmp)
        repo = _null_repo(work, "full")
        with _triton(repo, True, args.port_base, work / "triton.log") as triton:
            port = args.port_base + 10
            with _gateway(repo, triton.grpc_url, port, 1, work / "gateway.log") as (gateway, url):
                LOGGER.info("gateway pid %d on %s", gateway.pid, url)
                for name in args.routes:
                    route = ROUTES[name]
                    if name == "triton_call":
                        results.append(measure_triton_call(triton.grpc_url, route, args.requests, args.rounds))
                        LOGGER.info("%s: %s", route.path, results[-1].cpu_ms)
                        continue
                    for concurrency in args.concurrency:
                        results.append(measure(url, gateway.pid, route, args.requests, args.rounds, concurrency))
                        LOGGER.info("%s at concurrency %d: %s", route.path, concurrency, results[-1].cpu_ms)
                if args.hold:
                    time.sleep(args.hold)
    load = os.getloadavg()[0]
    note = args.note or (
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPUs shared with other users "
        f"(load average {load:.1f} at the end), null engines, 1 gateway process; "
        "CPU of the gateway's threads only (schedstat run time from /proc)."
    )
    table = markdown(results, note)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table)
    sys.stdout.write(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
