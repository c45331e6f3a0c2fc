"""The serving ceiling, tier by tier: gateway, Triton direct and the bare engine, real and null engines.

One command starts everything it measures (tritonserver through ``triton_local``, the gateway as
``python -m gateway`` subprocesses, on ports from ``--port-base``) and writes a markdown table, a
JSON file and a PNG plot (throughput vs concurrency per path) to ``--out``::

    .venv/bin/python benchmarks/ceiling.py --engines real null --endpoints qa detect classify \\
        --concurrency 1 4 --requests 60 --workers 1 2 --port-base 28000

Paths, for each engine kind (``real``: the ONNX engines in ``--repo``; ``null``: the benchmark-only
null engine, zero outputs of the real shapes at no engine cost, served with ``MM_ALLOW_NULL_ENGINE=1``):

- ``gateway``: HTTP to ``python -m gateway`` (``GATEWAY_WORKERS`` from ``--workers``; the detectors'
  output through shared memory, as the local stack runs it, unless ``GATEWAY_TRITON_SHARED_MEMORY=false``);
- ``triton``: ``tritonclient.grpc.aio`` with the preprocessed tensors straight to Triton (plain gRPC);
- ``bare``: the engine called in this process, batch = concurrency.

The load generator (``benchmarks/loadgen.py``) is its own process. Around each measured window this
script reads utime+stime from ``/proc/<pid>/stat`` of the gateway processes (the parent and its
workers), tritonserver and its Python-backend stubs (tritonserver's children), and the engine time
the Triton models count (``mm_engine_cpu_us``, the stubs' CPU during engine calls). CPU ms per request:
``gateway``, ``triton`` (tritonserver), ``stub-engine`` (stubs minus engine), ``engine``, ``loadgen``.
``gw ceiling/core`` = 1000 / gateway CPU ms per request: the requests per second one core of gateway
can serve, whatever the load generator and the other tiers cost on a shared machine.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import pathlib
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import httpx

ROOT = pathlib.Path(__file__).resolve().parent.parent
LOADGEN = pathlib.Path(__file__).resolve().parent / "loadgen.py"
sys.path.insert(0, str(LOADGEN.parent))

from loadgen import ENDPOINTS  # noqa: E402

LOGGER = logging.getLogger("ceiling")
TICKS = os.sysconf("SC_CLK_TCK")
NULL_ENV = "MM_ALLOW_NULL_ENGINE"


@dataclasses.dataclass
class Row:
    """One measured (engine, path, workers, endpoint, concurrency)."""

    engine: str
    path: str
    workers: int | None
    endpoint: str
    concurrency: int
    requests: int
    errors: int
    requests_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    cpu_ms: dict[str, float | None]  # per request, by tier

    @property
    def ceiling_per_core(self) -> float | None:
        gateway = self.cpu_ms.get("gateway")
        return 1000.0 / gateway if gateway else None


def _percentiles(latencies_s: list[float]) -> tuple[float, float, float]:
    ms = sorted(x * 1000 for x in latencies_s)

    def pct(p: float) -> float:
        return ms[min(len(ms) - 1, int(round(p * (len(ms) - 1))))]

    return statistics.median(ms), pct(0.95), pct(0.99)


# ---------------------------------------------------------------- CPU accounting through /proc


def _cpu_s(pid: int) -> float:
    """utime + stime of one live process, in seconds (0 if it is gone)."""
    try:
        fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS  # fields 14 and 15 of stat(5)


def _children(pid: int) -> list[int]:
    """Direct children of ``pid``, found by scanning /proc for their parent id."""
    found = []
    for stat in pathlib.Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid:
            found.append(int(stat.parent.name))
    return found


def _tree_cpu_s(pid: int) -> float:
    return _cpu_s(pid) + sum(_tree_cpu_s(child) for child in _children(pid))


def _engine_cpu_s(metrics_url: str) -> float:
    """Sum over models of the Triton models' ``mm_engine_cpu_us`` counters, in seconds."""
    with urllib.request.urlopen(metrics_url, timeout=10) as response:
        text = response.read().decode()
    return sum(float(v) for v in re.findall(r"^mm_engine_cpu_us\{[^}]*\} (\S+)$", text, re.M)) / 1e6


@dataclasses.dataclass
class Tiers:
    """The processes whose CPU is read around a measured window."""

    triton_pid: int
    metrics_url: str
    gateway_pid: int | None = None

    def sample(self) -> dict[str, float]:
        stubs = _children(self.triton_pid)
        return {
            "gateway": _tree_cpu_s(self.gateway_pid) if self.gateway_pid else 0.0,
            "triton": _cpu_s(self.triton_pid),
            "stubs": sum(_tree_cpu_s(s) for s in stubs),
            "engine": _engine_cpu_s(self.metrics_url),
        }


# ---------------------------------------------------------------- the stack


def _null_repo(work: pathlib.Path, size: str) -> pathlib.Path:
    from magicmind_build.build import build_null_manifest
    from magicmind_build.specs import SPECS

    repo = work / "null_repo"
    ignore = shutil.ignore_patterns("*.onnx", "manifest.json", "__pycache__", "*.tmp")
    shutil.copytree(ROOT / "triton_repo", repo, ignore=ignore)
    for name, spec in SPECS.items():
        build_null_manifest(spec, repo / name / "1", size)
    return repo


@contextlib.contextmanager
def _triton(repo: pathlib.Path, null: bool, port_base: int, log: pathlib.Path) -> Iterator[Any]:
    from triton_local import TritonServer, TritonServerConfig

    config = TritonServerConfig(
        model_repository=repo,
        http_port=port_base,
        grpc_port=port_base + 1,
        metrics_port=port_base + 2,
        log_file=log,
        env={NULL_ENV: "1"} if null else {},
    )
    with TritonServer(config) as server:
        yield server


@contextlib.contextmanager
def _gateway(repo: pathlib.Path, triton_grpc: str, port: int, workers: int, log: pathlib.Path) -> Iterator[Any]:
    metrics_dir = log.parent / f"prometheus-{port}"  # emptied by the gateway at start
    env = {
        **os.environ,
        "GATEWAY_PORT": str(port),
        "GATEWAY_TRITON_URL": triton_grpc,
        "GATEWAY_MODEL_REPOSITORY": str(repo),
        "GATEWAY_TRITON_SHARED_MEMORY": os.environ.get("GATEWAY_TRITON_SHARED_MEMORY", "true"),
        "GATEWAY_WORKERS": str(workers),
        "GATEWAY_LOG_LEVEL": "warning",
    }
    if workers > 1:
        env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    else:
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    with open(log, "ab") as out:
        process = subprocess.Popen([sys.executable, "-m", "gateway"], cwd=ROOT, env=env, stdout=out, stderr=out)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"gateway exited with {process.returncode}; see {log}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"gateway not ready after 120 s; see {log}")
            time.sleep(0.5)
        # Wait until every worker has answered (each builds its app in its own process; the
        # first may answer long before the last is up): new connections, one worker's file each.
        while workers > 1 and len(list(metrics_dir.glob("counter_*.db"))) < workers:
            if time.monotonic() > deadline + 120:
                raise RuntimeError(f"not all {workers} gateway workers answered; see {log}")
            with contextlib.suppress(httpx.HTTPError):
                httpx.get(f"{url}/healthz", headers={"Connection": "close"}, timeout=5)
        yield process, url
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _load(mode: str, target: str, endpoint: str, concurrency: int, requests: int, tiers: Tiers) -> dict[str, Any]:
    """Run one load-generator process; the tiers' CPU is read only around its measured window."""
    cmd = [sys.executable, str(LOADGEN), "--mode", mode, "--target", target, "--endpoint", endpoint]
    cmd += ["--concurrency", str(concurrency), "--requests", str(requests)]
    process = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert process.stdin is not None and process.stdout is not None
    line = process.stdout.readline()
    if line.strip() != "READY":
        process.kill()
        raise RuntimeError(f"load generator failed to warm up: {line!r}")
    before = tiers.sample()
    process.stdin.write("go\n")
    process.stdin.flush()
    result = json.loads(process.stdout.readline())
    after = tiers.sample()
    process.wait()
    result["cpu_delta_s"] = {k: after[k] - before[k] for k in before}
    return result  # type: ignore[no-any-return]


def _served_row(engine: str, path: str, workers: int | None, endpoint: str, c: int, r: dict[str, Any]) -> Row:
    n = len(r["latencies_s"])
    d = r["cpu_delta_s"]
    p50, p95, p99 = _percentiles(r["latencies_s"])
    cpu = {
        "gateway": d["gateway"] * 1000 / n if path == "gateway" else None,
        "triton": d["triton"] * 1000 / n,
        "stub-engine": (d["stubs"] - d["engine"]) * 1000 / n,
        "engine": d["engine"] * 1000 / n,
        "loadgen": r["cpu_s"] * 1000 / n,
    }
    return Row(engine, path, workers, endpoint, c, n, r["errors"], n / r["wall_s"], p50, p95, p99, cpu)


def _bare_rows(engine_kind: str, repo: pathlib.Path, endpoints: list[str], conc: list[int], iters: int) -> list[Row]:
    from magicmind_build.bench import load_bare_engine, random_feeds

    rows = []
    for name in endpoints:
        engine, _ = load_bare_engine(repo / ENDPOINTS[name].model / "1")
        for c in conc:
            feeds = random_feeds(engine, c)
            engine.run(feeds)
            times = []
            cpu0 = time.process_time()
            for _ in range(iters):
                start = time.perf_counter()
                engine.run(feeds)
                times.append(time.perf_counter() - start)
            cpu = time.process_time() - cpu0
            p50, p95, p99 = _percentiles(times)
            items = iters * c
            cpu_ms = {"gateway": None, "triton": None, "stub-engine": None, "engine": cpu * 1000 / items}
            cpu_ms["loadgen"] = None
            rows.append(Row(engine_kind, "bare", None, name, c, items, 0, items / sum(times), p50, p95, p99, cpu_ms))
    return rows


# ---------------------------------------------------------------- output

_TIERS = ("gateway", "triton", "stub-engine", "engine", "loadgen")


def _fmt(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def markdown(rows: list[Row], note: str) -> str:
    head = ["engine", "path", "workers", "endpoint", "conc", "reqs", "err", "req/s", "p50 ms", "p95 ms", "p99 ms"]
    head += [f"{t} CPU ms/req" for t in _TIERS] + ["gw ceiling/core req/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r.engine, r.path, str(r.workers or "–"), r.endpoint, str(r.concurrency), str(r.requests)]
        cells += [str(r.errors), _fmt(r.requests_per_s, 1), _fmt(r.p50_ms, 1), _fmt(r.p95_ms, 1), _fmt(r.p99_ms, 1)]
        cells += [_fmt(r.cpu_ms.get(t)) for t in _TIERS] + [_fmt(r.ceiling_per_core, 0)]
        lines.append("| " + " | ".join(cells) + " |")
    summary = workers_summary(rows)
    return note + "\n\n" + "\n".join(lines) + "\n" + (f"\nGateway workers:\n\n{summary}\n" if summary else "")


def workers_summary(rows: list[Row]) -> str:
    """Per endpoint and engine: gateway CPU per request with 1 and N workers, the ceiling it implies
    (N workers on N free cores: N x 1000 / CPU ms per request) and the measured req/s ratio."""
    lines = []
    gateway = [r for r in rows if r.path == "gateway" and r.cpu_ms.get("gateway")]
    for endpoint, engine in dict.fromkeys((r.endpoint, r.engine) for r in gateway):
        mine = [r for r in gateway if (r.endpoint, r.engine) == (endpoint, engine)]
        top = max(r.concurrency for r in mine)
        by_workers = {r.workers: r for r in mine if r.concurrency == top}
        if 1 not in by_workers or len(by_workers) < 2:
            continue
        one = by_workers[1]
        for n, many in sorted(by_workers.items()):
            if n == 1 or n is None:
                continue
            cpu1, cpun = one.cpu_ms["gateway"] or 0.0, many.cpu_ms["gateway"] or 0.0
            lines.append(
                f"- {engine} `/{endpoint}`, concurrency {top}: gateway CPU {cpu1:.2f} ms/req with 1 worker, "
                f"{cpun:.2f} with {n}; CPU-derived ceiling {1000 / cpu1:.0f} req/s (1 core) vs "
                f"{n * 1000 / cpun:.0f} req/s ({n} cores) = **{n * cpu1 / cpun:.2f}x**; measured here "
                f"{one.requests_per_s:.1f} vs {many.requests_per_s:.1f} req/s "
                f"= {many.requests_per_s / one.requests_per_s:.2f}x "
                "(load generator, Triton and other users on the same 2 cores)"
            )
    return "\n".join(lines)


def plot(rows: list[Row], path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    endpoints = list(dict.fromkeys(r.endpoint for r in rows))
    fig, axes = plt.subplots(1, len(endpoints), figsize=(5 * len(endpoints), 4.2), squeeze=False)
    for ax, endpoint in zip(axes[0], endpoints):
        series: dict[tuple[str, str], list[Row]] = {}
        for r in rows:
            if r.endpoint == endpoint:
                route = r.path + (f" x{r.workers}" if r.workers else "")
                series.setdefault((r.engine, route), []).append(r)
        colours = {route: f"C{i}" for i, route in enumerate(dict.fromkeys(route for _, route in series))}
        for (engine, route), points in series.items():
            points.sort(key=lambda r: r.concurrency)
            x, y = [p.concurrency for p in points], [p.requests_per_s for p in points]
            style = "--" if engine == "null" else "-"
            ax.plot(x, y, style, marker="o", color=colours[route], label=f"{engine} {route}")
        ax.set_xticks(sorted({r.concurrency for r in rows}))
        ax.set_title(endpoint)
        ax.set_xlabel("concurrency (bare: batch size)")
        ax.set_ylabel("requests/s")
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Throughput vs concurrency per path (null = zero-cost engine, benchmark only)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", type=pathlib.Path, default=ROOT / "triton_repo", help="built real engines")
    parser.add_argument("--engines", nargs="+", choices=("real", "null"), default=["real", "null"])
    parser.add_argument("--endpoints", nargs="+", choices=sorted(ENDPOINTS), default=["qa", "detect", "classify"])
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 4])
    parser.add_argument("--requests", type=int, default=60, help="measured requests per row")
    parser.add_argument("--workers", nargs="+", type=int, default=[1, 2], help="gateway worker counts (null engine)")
    parser.add_argument("--real-workers", nargs="+", type=int, default=[1], help="gateway worker counts (real)")
    parser.add_argument("--bare-iterations", type=int, default=20)
    parser.add_argument("--port-base", type=int, default=28000)
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--note", default="", help="a line printed above the table (machine, load)")
    parser.add_argument("--render", type=pathlib.Path, help="only redraw table and plot from this ceiling.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.render:
        data = json.loads(args.render.read_text())
        data = data if isinstance(data, dict) else {"note": "", "rows": data}
        fields = {f.name for f in dataclasses.fields(Row)}
        rows = [Row(**{k: v for k, v in d.items() if k in fields}) for d in data["rows"]]
        _write(rows, args.note or data["note"], args.out)
        return 0
    rows = []
    with tempfile.TemporaryDirectory(prefix="ceiling-") as tmp:
        work = pathlib.Path(tmp)
        for kind in args.engines:
            null = kind == "null"
            repo = _null_repo(work, "full") if null else args.repo.resolve()
            if null:
                os.environ[NULL_ENV] = "1"  # explicitly enabled, for this benchmark's bare null engine
            LOGGER.info("%s engines from %s", kind, repo)
            with _triton(repo, null, args.port_base, work / f"triton-{kind}.log") as triton:
                tiers = Tiers(triton._process.pid, triton.metrics_url)
                for workers in args.workers if null else args.real_workers:
                    port = args.port_base + 10 + workers
                    with _gateway(repo, triton.grpc_url, port, workers, work / f"gateway-{kind}.log") as (gw, url):
                        formats = {m["name"]: m["engine_format"] for m in httpx.get(f"{url}/models").json()["models"]}
                        if any((f is None) != null for f in formats.values()):
                            raise RuntimeError(f"gateway reports engine formats {formats} for {kind} engines")
                        tiers.gateway_pid = gw.pid
                        for endpoint in args.endpoints:
                            for c in args.concurrency:
                                r = _load("gateway", url, endpoint, c, args.requests, tiers)
                                rows.append(_served_row(kind, "gateway", workers, endpoint, c, r))
                                LOGGER.info("%s", rows[-1])
                tiers.gateway_pid = None
                for endpoint in args.endpoints:
                    for c in args.concurrency:
                        r = _load("triton", triton.grpc_url, endpoint, c, args.requests, tiers)
                        rows.append(_served_row(kind, "triton", None, endpoint, c, r))
                        LOGGER.info("%s", rows[-1])
            rows += _bare_rows(kind, repo, args.endpoints, args.concurrency, args.bare_iterations)
    note = args.note or f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPUs"
    records = [{**dataclasses.asdict(r), "ceiling_per_core": r.ceiling_per_core} for r in rows]
    (args.out / "ceiling.json").write_text(json.dumps({"note": note, "rows": records}, indent=2) + "\n")
    _write(rows, note, args.out)
    return 0


def _write(rows: list[Row], note: str, out: pathlib.Path) -> None:
    endpoints = ["qa", "detect", "detect_yolov5n", "detect_nanodet", "classify", "classify_lite"]
    order = (endpoints, ["real", "null"], ["gateway", "triton", "bare"])
    rows = sorted(
        rows,
        key=lambda r: (order[0].index(r.endpoint), order[1].index(r.engine), order[2].index(r.path), r.workers or 0),
    )
    (out / "ceiling.md").write_text(markdown(rows, note))
    plot(rows, out / "ceiling.png")
    sys.stdout.write(markdown(rows, note))


if __name__ == "__main__":
    sys.exit(main())
