"""The serving ceiling, tier by tier: gateway, Triton direct and the bare engine, real and null engines.

One command starts everything it measures (tritonserver through ``triton_local``, the gateway as
``python -m gateway`` subprocesses, on ports from ``--port-base``) and writes a markdown table, a
JSON file and a PNG plot (throughput vs concurrency per path) to ``--out``::

    .venv/bin/python benchmarks/ceiling.py --engines real null \\
        --endpoints qa detect detect_nanodet classify --concurrency 1 4 \\
        --requests 400 --real-requests 60 --workers 1 2 --port-base 28000

For the tax on the real engines on a shared host, interleave them (``--rounds``; see below)::

    .venv/bin/python benchmarks/ceiling.py --engines real --concurrency 1 --rounds 5 --real-requests 8

The gateway runs with its health prober off (``GATEWAY_HEALTH_PROBE_INTERVAL_S=0`` unless set): a probe
round is one real inference per model, a per-time cost that would land in whichever window it fell in.

Paths, for each engine kind (``real``: the ONNX engines in ``--repo``; ``null``: the benchmark-only
null engine, zero outputs of the real shapes at no engine cost, served with ``MM_ALLOW_NULL_ENGINE=1``):

- ``gateway``: HTTP to ``python -m gateway`` (``GATEWAY_WORKERS`` from ``--workers``; the image models'
  input through shared memory, as the local stack runs it, unless ``GATEWAY_TRITON_SHARED_MEMORY=false``);
- ``triton``: ``tritonclient.grpc.aio`` with the preprocessed tensors straight to Triton (plain gRPC);
- ``triton+MS:HOW`` (``--triton-think``): Triton direct again, but each client holds the load generator's
  one event loop MS after every answer (``spin``: burning CPU on the same cores; ``sleep``: idle), so
  requests reach Triton spaced as a gateway's would be; compared with ``triton``, what the arrival
  rate alone does to Triton's cost per request;
- ``bare``: the engine called in this process, batch = concurrency, with the session options the
  served model gets from its ``config.pbtxt`` (threads, spinning, providers), so like is compared
  with like.

CPU accounting (precise to well under 0.1 ms per request):

- The load generator (``benchmarks/loadgen.py``) is its own process and reports its own CPU.
- Around each measured window this script reads, for every thread of the gateway processes (the
  parent and its workers), of tritonserver and of its Python-backend stubs (tritonserver's children),
  the nanoseconds it has run (``/proc/<pid>/task/<tid>/schedstat``, field 1); a tier's CPU is the
  sum of its threads' differences. ``utime+stime`` from ``/proc/<pid>/stat`` (10 ms ticks) is read too,
  only as a check: a warning is logged when it exceeds the per-thread sum (a thread that ended inside
  the window is missing from that sum).
- Inside the stub, each model counts with ``time.process_time()`` (nanosecond clock, all the stub's
  threads) its engine calls (``mm_engine_cpu_us``) and its whole ``execute`` (``mm_stub_cpu_us``),
  exported on Triton's metrics port every 500 ms; the script reads them until two readings 0.8 s
  apart agree, before the start and after the end of a window, outside the /proc readings (so
  rendering the metrics is never counted, and no engine time crosses a window's edge).
- Columns, CPU ms per request: ``gateway``; ``triton`` (tritonserver); ``stub-engine`` (stubs minus
  engine: the Python backend's own work and ``execute``'s Python code), of which ``execute-engine``
  is spent in ``execute`` outside the engine call; ``engine``; ``loadgen``. ``batch`` = Triton's
  ``nv_inference_count / nv_inference_exec_count`` for the model: mean rows per engine call.
- ``gw ceiling/core`` = 1000 / gateway CPU ms per request: the requests per second one core of
  gateway can serve, whatever the load generator and the other tiers cost on a shared machine.

Two summary tables follow the main one:

- **Triton tier** (null engines): ``triton + stub-engine`` per request around an engine that costs
  nothing, against the 1.0 ms target. With a real engine the stub's split between engine and the
  rest rests on ``process_time`` inside the stub, which was seen several ms per request off on a
  loaded host (even below zero): the whole-process figures are exact, that split is not.
- **Tax on the real engines**: (gateway + tritonserver + the stubs, engine included) per request /
  the bare engine's CPU per item at batch = concurrency, against the 1.10 target. It uses the
  whole-process figures only. A row with errors (e.g. requests shed with 503) gets no verdict.
- **Interleaved** (``--rounds N``, real engines): one tritonserver and one gateway stay up; per
  endpoint and concurrency, N rounds of bare engine, Triton direct and gateway, the order rotated each
  round, each served round divided by the bare round of the same minutes (the engine's own CPU swings
  by tens of percent within minutes on a loaded host). Min / median / max over rounds, and the tax
  were the engine to cost in the stub what it cost bare (the serving tiers alone). The bare engine
  must run the session the Triton model logged (:func:`served_session`), else the run stops.
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
import socket
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

from latency import LoadResult, percentiles_ms  # noqa: E402
from loadgen import ENDPOINTS  # noqa: E402

from triton_local import stubs  # noqa: E402
from triton_local.process import stop_process  # noqa: E402

LOGGER = logging.getLogger("ceiling")
TICKS = os.sysconf("SC_CLK_TCK")
NULL_ENV = "MM_ALLOW_NULL_ENGINE"
# The models send their engine counters every metrics_flush_ms (500 ms by default): wait longer.
METRICS_WAIT_S = 0.8
# The stubs count as idle (no execute in flight) below this much CPU in METRICS_WAIT_S (flush threads, polling).
STUBS_IDLE_S = 0.02


@dataclasses.dataclass(kw_only=True)
class Row(LoadResult):
    """One measured (engine, path, workers, endpoint, concurrency): the load's fields, then these."""

    engine: str
    path: str
    workers: int | None
    cpu_ms: dict[str, float | None]  # per request, by tier
    batch: float | None = None  # mean rows per engine call (Triton's inference / execution counts)
    round: int | None = None  # interleaved runs (--rounds): which round of bare / Triton / gateway
    load1: float | None = None  # the host's 1-minute load average at the end of the measurement

    @property
    def ceiling_per_core(self) -> float | None:
        gateway = self.cpu_ms.get("gateway")
        return 1000.0 / gateway if gateway else None


# ---------------------------------------------------------------- CPU accounting through /proc


def _ticks_s(pid: int) -> float:
    """utime + stime of one process (all its threads, dead ones included), in seconds; 0 if it is gone.

    Kept as a cross-check only: the kernel reports it in clock ticks (10 ms).
    """
    try:
        fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS  # fields 14 and 15 of stat(5)


def _threads_ns(pid: int) -> dict[int, int]:
    """Thread id -> nanoseconds it has run on a CPU (``/proc/<pid>/task/<tid>/schedstat``, field 1)."""
    found: dict[int, int] = {}
    with contextlib.suppress(OSError):
        for task in pathlib.Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError, ValueError, IndexError):
                found[int(task.name)] = int((task / "schedstat").read_text().split()[0])
    return found


def _descendants(pid: int) -> list[int]:
    """Children, grandchildren, ... of ``pid`` (``/proc/<pid>/task/*/children``)."""
    found = []
    for child in stubs.children(pid):
        found += [child, *_descendants(child)]
    return found


@dataclasses.dataclass
class CpuSample:
    """Per-thread run time (ns) and tick-based process time (s) of some processes at one instant."""

    threads: dict[tuple[int, int], int]  # (pid, tid) -> ns
    ticks_s: float

    @classmethod
    def read(cls, pids: list[int]) -> CpuSample:
        threads = {(pid, tid): ns for pid in pids for tid, ns in _threads_ns(pid).items()}
        return cls(threads, sum(_ticks_s(pid) for pid in pids))

    def seconds_since(self, before: CpuSample) -> float:
        """CPU seconds run between ``before`` and this sample by the threads alive now (a thread born
        in between counts whole; one that ended in between is missing: see ``ticks_s`` for a check)."""
        return sum(ns - before.threads.get(key, 0) for key, ns in self.threads.items()) / 1e9


def _metrics(metrics_url: str) -> dict[str, dict[str, float]]:
    """Per model: ``mm_engine_cpu_us`` (the stub's CPU during engine calls, s), ``mm_stub_cpu_us`` (the
    stub's CPU inside ``execute``, s) and Triton's ``nv_inference_count`` / ``nv_inference_exec_count``."""
    with urllib.request.urlopen(metrics_url, timeout=10) as response:
        text = response.read().decode()
    found: dict[str, dict[str, float]] = {}
    names = "mm_engine_cpu_us|mm_stub_cpu_us|nv_inference_count|nv_inference_exec_count"
    pattern = rf'^({names})\{{[^}}]*model="([^"]+)"[^}}]*\}} (\S+)$'
    for name, model, value in re.findall(pattern, text, re.M):
        scale = 1e-6 if name.endswith("_us") else 1.0
        found.setdefault(model, {}).setdefault(name, 0.0)
        found[model][name] += float(value) * scale
    return found


@dataclasses.dataclass
class Tiers:
    """The processes whose CPU is read around a measured window.

    The metrics endpoint is read outside the /proc readings (before them at the start, after them at
    the end), so that rendering the metrics is never counted as serving.
    """

    triton_pid: int
    metrics_url: str
    gateway_pid: int | None = None

    def _procs(self) -> dict[str, CpuSample]:
        stub_pids = stubs.children(self.triton_pid)
        gateway = [self.gateway_pid, *_descendants(self.gateway_pid)] if self.gateway_pid else []
        return {
            "gateway": CpuSample.read(gateway),
            "triton": CpuSample.read([self.triton_pid]),
            "stubs": CpuSample.read(stub_pids),
        }

    def _settled_metrics(self) -> dict[str, dict[str, float]]:
        """The counters once the stubs have sent all they hold: two readings ``METRICS_WAIT_S`` apart
        agree and the stubs were idle in between (at most 10 s; a loaded machine can delay a stub's flush
        thread, and an ``execute`` still running adds its engine time only when it ends)."""
        stub_pids = stubs.children(self.triton_pid)
        metrics, busy = _metrics(self.metrics_url), CpuSample.read(stub_pids)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            time.sleep(METRICS_WAIT_S)
            again, busy_again = _metrics(self.metrics_url), CpuSample.read(stub_pids)
            if again == metrics and busy_again.seconds_since(busy) < STUBS_IDLE_S:
                return again
            metrics, busy = again, busy_again
        LOGGER.warning("the stubs' engine counters did not settle in 10 s: the split engine / rest is off")
        return metrics

    def start(self) -> tuple[dict[str, dict[str, float]], dict[str, CpuSample]]:
        metrics = self._settled_metrics()  # the warm-up's engine time has reached the counters
        return metrics, self._procs()

    def stop(self, start: tuple[dict[str, dict[str, float]], dict[str, CpuSample]], model: str) -> dict[str, float]:
        procs = self._procs()
        metrics = self._settled_metrics()  # the window's last engine time has reached the counters
        metrics0, procs0 = start
        delta = {k: procs[k].seconds_since(procs0[k]) for k in procs}
        delta |= {f"{k}_ticks": procs[k].ticks_s - procs0[k].ticks_s for k in procs}
        for name in ("mm_engine_cpu_us", "mm_stub_cpu_us"):  # every model: a stub's idle time is the tier's
            delta[name] = sum(m.get(name, 0.0) for m in metrics.values()) - sum(
                m.get(name, 0.0) for m in metrics0.values()
            )
        for name in ("nv_inference_count", "nv_inference_exec_count"):  # this model's batches
            delta[name] = metrics.get(model, {}).get(name, 0.0) - metrics0.get(model, {}).get(name, 0.0)
        return delta


# ---------------------------------------------------------------- the stack


def _null_repo(work: pathlib.Path, size: str) -> pathlib.Path:
    from magicmind_build.build import build_null_manifest
    from magicmind_build.specs import SPECS

    repo = work / "null_repo"
    ignore = shutil.ignore_patterns("*.onnx", "manifest.json", "__pycache__", "*.tmp")
    # The base models only: precision variants built into triton_repo (<model>_fp16/_int8) get no null
    # engine, and a model without one would stop tritonserver from starting.
    for name, spec in SPECS.items():
        shutil.copytree(ROOT / "triton_repo" / name, repo / name, ignore=ignore)
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
        # The health prober sends every model one real inference every 10 s: per time, not per request, and
        # landing in whichever window it falls (a probe round of the full CPU engines is ~0.8 s of stub CPU).
        "GATEWAY_HEALTH_PROBE_INTERVAL_S": os.environ.get("GATEWAY_HEALTH_PROBE_INTERVAL_S", "0"),
    }
    if workers > 1:
        env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    else:
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    with socket.socket() as probe:  # else /readyz could be answered by someone else's gateway on that port
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as error:
            raise RuntimeError(f"port {port} is in use; choose another --port-base") from error
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
        stop_process(process, 30)


def _load(
    mode: str, target: str, endpoint: str, concurrency: int, requests: int, tiers: Tiers, think: str = ""
) -> dict[str, Any]:
    """Run one load-generator process; the tiers' CPU is read only around its measured window.

    ``think``: ``<ms>:<spin|sleep>``, what the load generator does after each response (``--think-ms``).
    """
    cmd = [sys.executable, str(LOADGEN), "--mode", mode, "--target", target, "--endpoint", endpoint]
    cmd += ["--concurrency", str(concurrency), "--requests", str(requests)]
    if think:
        ms, how = think.split(":")
        cmd += ["--think-ms", ms, "--think", how]
    process = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert process.stdin is not None and process.stdout is not None
    line = process.stdout.readline()
    if line.strip() != "READY":
        process.kill()
        raise RuntimeError(f"load generator failed to warm up: {line!r}")
    start = tiers.start()
    process.stdin.write("go\n")
    process.stdin.flush()
    result = json.loads(process.stdout.readline())
    result["cpu_delta_s"] = tiers.stop(start, ENDPOINTS[endpoint].model)
    process.wait()
    for tier in ("gateway", "triton", "stubs"):
        precise, ticks = result["cpu_delta_s"][tier], result["cpu_delta_s"][f"{tier}_ticks"]
        if ticks - precise > 2.5 / TICKS:  # more than the ticks' own error: threads ended in the window
            LOGGER.warning("%s: %.3f s by thread run times, %.3f s by ticks", tier, precise, ticks)
    return result  # type: ignore[no-any-return]


def _served_row(engine: str, path: str, workers: int | None, endpoint: str, c: int, r: dict[str, Any]) -> Row:
    n = len(r["latencies_s"])
    d = r["cpu_delta_s"]
    p50, p95, p99 = percentiles_ms(r["latencies_s"])
    engine_s = d["mm_engine_cpu_us"]
    cpu = {
        "gateway": d["gateway"] * 1000 / n if path == "gateway" else None,
        "triton": d["triton"] * 1000 / n,
        "stub-engine": (d["stubs"] - engine_s) * 1000 / n,
        "execute-engine": (d["mm_stub_cpu_us"] - engine_s) * 1000 / n,
        "engine": engine_s * 1000 / n,
        "loadgen": r["cpu_s"] * 1000 / n,
    }
    batch = d["nv_inference_count"] / d["nv_inference_exec_count"] if d["nv_inference_exec_count"] else None
    return Row(
        endpoint=endpoint,
        concurrency=c,
        requests=n,
        errors=r["errors"],
        requests_per_s=n / r["wall_s"],
        p50_ms=p50,
        p95_ms=p95,
        p99_ms=p99,
        engine=engine,
        path=path,
        workers=workers,
        cpu_ms=cpu,
        batch=batch,
        load1=os.getloadavg()[0],
    )


def stub_engine_options(model_dir: pathlib.Path) -> dict[str, Any]:
    """The ONNX Runtime options the Triton model passes to its engine, from its ``config.pbtxt``
    (``providers``, ``intra_op_threads``, ``allow_spinning``), so the bare engine runs like the served one."""
    text = (model_dir / "config.pbtxt").read_text()
    params = dict(re.findall(r'key:\s*"([^"]+)"\s*value\s*\{\s*string_value:\s*"([^"]*)"', text))
    return {
        "providers": [p for p in params.get("providers", "").split(",") if p] or None,
        "intra_op_threads": int(params.get("intra_op_threads") or 0),
        "spin": params.get("allow_spinning", "false").lower() == "true",
    }


def _bare_engine(repo: pathlib.Path, name: str) -> Any:
    """The engine of endpoint ``name`` loaded in this process with the served model's session options."""
    from engine_runtime.engine import load_engine
    from engine_runtime.manifest import Manifest

    model_dir = repo / ENDPOINTS[name].model
    manifest = Manifest.read(model_dir / "1")
    options = {} if manifest.null else stub_engine_options(model_dir)
    engine = load_engine(model_dir / "1" / manifest.engine_file, manifest, **options)
    LOGGER.info("bare %s: %s %s", name, engine.description, options)
    return engine


def _bare_row(engine_kind: str, engine: Any, name: str, c: int, feeds: Any, iters: int) -> Row:
    """``iters`` calls at batch ``c``; CPU = this process's ``process_time`` (ONNX Runtime's threads
    included, nanosecond clock). Nothing else in this process runs meanwhile."""
    times = []
    cpu0 = time.process_time()
    for _ in range(iters):
        start = time.perf_counter()
        engine.run(feeds)
        times.append(time.perf_counter() - start)
    cpu = time.process_time() - cpu0
    p50, p95, p99 = percentiles_ms(times)
    items = iters * c
    cpu_ms: dict[str, float | None] = dict.fromkeys(_TIERS)
    cpu_ms["engine"] = cpu * 1000 / items
    return Row(
        endpoint=name,
        concurrency=c,
        requests=items,
        errors=0,
        requests_per_s=items / sum(times),
        p50_ms=p50,
        p95_ms=p95,
        p99_ms=p99,
        engine=engine_kind,
        path="bare",
        workers=None,
        cpu_ms=cpu_ms,
        batch=c,
        load1=os.getloadavg()[0],
    )


def _bare_rows(engine_kind: str, repo: pathlib.Path, endpoints: list[str], conc: list[int], iters: int) -> list[Row]:
    """The engine in this process with the served model's session options, after Triton has stopped."""
    from magicmind_build.bench import random_feeds

    rows = []
    for name in endpoints:
        engine = _bare_engine(repo, name)
        for c in conc:
            feeds = random_feeds(engine, c)
            engine.run(feeds)
            rows.append(_bare_row(engine_kind, engine, name, c, feeds, iters))
    return rows


def served_session(log: pathlib.Path, model: str) -> str | None:
    """The ONNX Runtime session the Triton model logged at ``initialize`` (``engine_runtime.engine.session_summary``
    inside its ``description``), or None when the log has no such line."""
    found = None
    with contextlib.suppress(OSError):
        for match in re.finditer(rf"\b{re.escape(model)}: (onnxruntime [^,(]*\([^)]*\))", log.read_text()):
            found = match.group(1)
    return found


def _interleaved_rows(
    repo: pathlib.Path,
    endpoints: list[str],
    conc: list[int],
    rounds: int,
    requests: int,
    tiers: Tiers,
    urls: dict[str, str],
    triton_log: pathlib.Path,
) -> list[Row]:
    """Real engines, one endpoint at a time: ``rounds`` rounds of the bare engine (``requests`` items at
    batch = concurrency, in this process) and ``requests`` requests on each served path in ``urls``
    (``gateway``, ``triton``), the order rotated every round, so each served round has a bare round of
    the same minutes to be divided by. The bare engine must run exactly the session the Triton model
    logged (threads, CPUs, execution mode, graph optimisation, spinning): else this raises."""
    from magicmind_build.bench import random_feeds

    gateway_pid = tiers.gateway_pid
    rows = []
    for name in endpoints:
        engine = _bare_engine(repo, name)
        served = served_session(triton_log, ENDPOINTS[name].model)
        if served != engine.description:
            raise RuntimeError(f"{name}: the bare engine runs {engine.description!r}, Triton's model {served!r}")
        for c in conc:
            feeds = random_feeds(engine, c)
            engine.run(feeds)
            order = ["bare", *urls]
            for r in range(rounds):
                for path in order[r % len(order) :] + order[: r % len(order)]:
                    if path == "bare":
                        row = _bare_row("real", engine, name, c, feeds, max(1, requests // c))
                    else:
                        tiers.gateway_pid = gateway_pid if path == "gateway" else None
                        result = _load(path, urls[path], name, c, requests, tiers)
                        row = _served_row("real", path, 1 if path == "gateway" else None, name, c, result)
                    row.round = r
                    rows.append(row)
                    LOGGER.info("%s", row)
        del engine
    tiers.gateway_pid = gateway_pid
    return rows


# ---------------------------------------------------------------- output

_TIERS = ("gateway", "triton", "stub-engine", "execute-engine", "engine", "loadgen")
TAX_TARGET = 1.10
TRITON_TARGET_MS = 1.0


def _fmt(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def markdown(rows: list[Row], note: str) -> str:
    head = ["engine", "path", "workers", "endpoint", "conc", "reqs", "err", "req/s", "p50 ms", "p95 ms", "p99 ms"]
    head += ["batch"] + [f"{t} CPU ms/req" for t in _TIERS] + ["gw ceiling/core req/s", "round", "load 1 min"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r.engine, r.path, str(r.workers or "–"), r.endpoint, str(r.concurrency), str(r.requests)]
        cells += [str(r.errors), _fmt(r.requests_per_s, 1), _fmt(r.p50_ms, 1), _fmt(r.p95_ms, 1), _fmt(r.p99_ms, 1)]
        cells += [_fmt(r.batch)] + [_fmt(r.cpu_ms.get(t)) for t in _TIERS] + [_fmt(r.ceiling_per_core, 0)]
        cells += ["–" if r.round is None else str(r.round), _fmt(r.load1, 1)]
        lines.append("| " + " | ".join(cells) + " |")
    out = note + "\n\n" + "\n".join(lines) + "\n"
    tables = (
        ("Triton tier", triton_tier_table(rows)),
        ("Tax on the real engines", tax_table(rows)),
        (
            "Tax on the real engines, bare and served rounds interleaved (min / median / max over rounds)",
            tax_rounds_table(rows),
        ),
    )
    for title, table in tables:
        out += f"\n{title}:\n\n{table}\n" if table else ""
    summary = workers_summary(rows)
    return out + (f"\nGateway workers:\n\n{summary}\n" if summary else "")


def _overhead(r: Row) -> float:
    """Triton tier beyond the engine: tritonserver + the stubs' CPU outside engine calls, ms/request."""
    return (r.cpu_ms.get("triton") or 0.0) + (r.cpu_ms.get("stub-engine") or 0.0)


def triton_tier_table(rows: list[Row]) -> str:
    """Null-engine rows: tritonserver + stub CPU per request around an engine that costs nothing, against
    the target. (With a real engine the stub's split between engine and the rest comes from
    ``process_time`` inside the stub and was seen several ms off per request on a loaded host: the
    whole-process figures are exact, that split is not; the tax table needs only the former.)"""
    head = ["engine", "path", "endpoint", "conc", "batch", "triton ms/req", "stub-engine ms/req"]
    head += ["of which in execute", "Triton tier ms/req", f"≤ {TRITON_TARGET_MS:.1f} ms"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if r.engine != "null" or r.path == "bare" or (r.workers or 1) != 1:
            continue
        total = _overhead(r)
        cells = [r.engine, r.path, r.endpoint, str(r.concurrency), _fmt(r.batch), _fmt(r.cpu_ms.get("triton"))]
        cells += [_fmt(r.cpu_ms.get("stub-engine")), _fmt(r.cpu_ms.get("execute-engine")), f"**{total:.2f}**"]
        verdict = "met" if total <= TRITON_TARGET_MS else "NOT met"
        cells += [verdict if not r.errors else f"n/a ({r.errors} errors)"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) if len(lines) > 2 else ""


def tax_table(rows: list[Row]) -> str:
    """Real engines: CPU of every serving tier per request (gateway, tritonserver, the stubs with the
    engine in them) / the bare engine's CPU per item at the same batch size (concurrency).

    Needs no split of the stubs' CPU between engine and the rest: only whole-process figures."""
    rows = [r for r in rows if r.round is None]  # interleaved rounds: tax_rounds_table
    bare = {(r.endpoint, r.concurrency): r for r in rows if r.engine == "real" and r.path == "bare"}
    head = ["endpoint", "path", "conc", "served batch", "bare engine ms/item", "gateway ms/req"]
    head += ["tritonserver ms/req", "stubs (engine incl.) ms/req", "all tiers ms/req", "beyond bare ms/req"]
    head += ["**tax**", f"≤ {TAX_TARGET:.2f}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        ref = bare.get((r.endpoint, r.concurrency))
        if r.engine != "real" or r.path == "bare" or (r.workers or 1) != 1 or ref is None:
            continue
        base = ref.cpu_ms["engine"] or float("nan")
        gateway, triton = r.cpu_ms.get("gateway") or 0.0, r.cpu_ms.get("triton") or 0.0
        stubs_ms = (r.cpu_ms.get("stub-engine") or 0.0) + (r.cpu_ms.get("engine") or 0.0)
        total = gateway + triton + stubs_ms
        verdict = "met" if total / base <= TAX_TARGET else "NOT met"
        if r.errors:  # an error (e.g. 503 shed) costs less than an answer: the ratio would flatter
            verdict = f"n/a ({r.errors} errors)"
        cells = [r.endpoint, r.path, str(r.concurrency), _fmt(r.batch), _fmt(base, 1)]
        cells += [_fmt(r.cpu_ms.get("gateway")), _fmt(triton), _fmt(stubs_ms, 1), _fmt(total, 1)]
        cells += [_fmt(total - base, 1), f"**{total / base:.2f}**", verdict]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) if len(lines) > 2 else ""


def _spread(values: list[float], digits: int = 2) -> str:
    """``min / median / max`` of per-round values."""
    return " / ".join(_fmt(v, digits) for v in (min(values), statistics.median(values), max(values)))


def _served_total(r: Row) -> float:
    """Every serving tier's CPU per request: gateway + tritonserver + the stubs (engine included)."""
    cpu = r.cpu_ms
    return sum(cpu.get(t) or 0.0 for t in ("gateway", "triton", "stub-engine", "engine"))


def tax_rounds_table(rows: list[Row]) -> str:
    """Interleaved real-engine rounds (``--rounds``): per round, all serving tiers' CPU per request / the bare
    engine's CPU per item in the same round; the tax's min / median / max over rounds, and the medians of
    what it is made of. ``engine in stub / bare`` is the engine's CPU inside the stub (its ``process_time``
    counter) over the bare engine's in the same round: the engine itself costing more when served.
    ``tax, engine as bare`` = (bare + gateway + tritonserver + stub-engine) / bare: the tax were the engine to
    cost in the stub exactly what it cost bare, i.e. what the serving tiers alone add, without the engine's
    own round-to-round swings on a loaded host. The verdict: met when both medians are within the target
    (the first alone swings with the engine's noise, the second alone would hide an engine that costs more
    when served); a path with errors in any round gets none."""
    rounds = [r for r in rows if r.round is not None and r.engine == "real"]
    bare = {(r.endpoint, r.concurrency, r.round): r for r in rounds if r.path == "bare"}
    head = ["endpoint", "path", "conc", "rounds", "served batch", "bare engine ms/item", "gateway ms/req"]
    head += ["tritonserver ms/req", "stub-engine ms/req", "engine in stub ms/req", "engine in stub / bare"]
    head += ["beyond bare ms/req", "**tax** min / median / max", f"≤ {TAX_TARGET:.2f}", "tax, engine as bare"]
    head += ["load 1 min"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    groups: dict[tuple[str, str, int], list[tuple[Row, Row]]] = {}
    for r in rounds:
        ref = bare.get((r.endpoint, r.concurrency, r.round))
        if r.path != "bare" and ref is not None and ref.cpu_ms.get("engine"):
            groups.setdefault((r.endpoint, r.path, r.concurrency), []).append((r, ref))
    for (endpoint, path, c), pairs in groups.items():
        base = [ref.cpu_ms["engine"] or 0.0 for _, ref in pairs]
        taxes = [_served_total(r) / b for (r, _), b in zip(pairs, base)]

        def med(tier: str, pairs: list[tuple[Row, Row]] = pairs) -> str:
            values = [r.cpu_ms.get(tier) for r, _ in pairs]
            return "–" if any(v is None for v in values) else _fmt(statistics.median(v or 0.0 for v in values))

        engine_ratio = [(r.cpu_ms.get("engine") or 0.0) / b for (r, _), b in zip(pairs, base)]
        beyond = [_served_total(r) - b for (r, _), b in zip(pairs, base)]
        errors = sum(r.errors for r, _ in pairs)
        tiers = [(_served_total(r) - (r.cpu_ms.get("engine") or 0.0) + b) / b for (r, _), b in zip(pairs, base)]
        verdict = "met" if max(statistics.median(taxes), statistics.median(tiers)) <= TAX_TARGET else "NOT met"
        loads = [x for r, ref in pairs for x in (r.load1, ref.load1) if x is not None]
        cells = [endpoint, path, str(c), str(len(pairs)), _fmt(statistics.median(r.batch or 0.0 for r, _ in pairs))]
        cells += [_spread(base, 1), med("gateway"), med("triton"), med("stub-engine"), med("engine")]
        cells += [_spread(engine_ratio), _spread(beyond, 1), f"**{_spread(taxes)}**"]
        cells += [verdict if not errors else f"n/a ({errors} errors)", _spread(tiers)]
        cells += [_spread(loads, 1) if loads else "–"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) if len(lines) > 2 else ""


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


def exit_on_sigterm() -> None:
    """SIGTERM (``kill``, ``timeout``) unwinds like Ctrl-C, so the tritonserver and gateway this
    script started are stopped by their context managers instead of being left running."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def main(argv: list[str] | None = None) -> int:
    exit_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", type=pathlib.Path, default=ROOT / "triton_repo", help="built real engines")
    parser.add_argument("--engines", nargs="+", choices=("real", "null"), default=["real", "null"])
    parser.add_argument(
        "--endpoints", nargs="+", choices=sorted(ENDPOINTS), default=["qa", "detect", "detect_nanodet", "classify"]
    )
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 4])
    parser.add_argument("--real-concurrency", nargs="+", type=int, help="concurrency for real engines")
    parser.add_argument("--requests", type=int, default=400, help="measured requests per row (null engines)")
    parser.add_argument("--real-requests", type=int, default=60, help="measured requests per row (real engines)")
    parser.add_argument("--workers", nargs="+", type=int, default=[1, 2], help="gateway worker counts (null engine)")
    parser.add_argument("--real-workers", nargs="+", type=int, default=[1], help="gateway worker counts (real)")
    parser.add_argument(
        "--paths", nargs="+", choices=("gateway", "triton", "bare"), default=["gateway", "triton", "bare"]
    )
    parser.add_argument(
        "--triton-think",
        nargs="*",
        default=[],
        metavar="MS:spin|sleep",
        help="extra Triton-direct rows (path triton+MS:HOW) whose load generator holds its one event loop MS "
        "after each response, spinning or sleeping: Triton's cost per request when requests arrive as a "
        "gateway's would (one event loop's work apart), with that work on the same cores (spin) or not (sleep)",
    )
    parser.add_argument("--bare-iterations", type=int, default=20)
    parser.add_argument(
        "--rounds",
        type=int,
        default=0,
        help="real engines: alternate this many rounds of bare, Triton and gateway (--real-requests each, gateway "
        "with the first --real-workers), so the tax divides by a bare engine measured minutes apart at most; "
        "0: one run per path, the bare engine after Triton stops",
    )
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
        for row in rows:
            row.cpu_ms = {t: row.cpu_ms.get(t) for t in _TIERS}
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
            requests = args.requests if null else args.real_requests
            concurrency = args.concurrency if null else (args.real_concurrency or args.concurrency)
            triton_log = work / f"triton-{kind}.log"
            with _triton(repo, null, args.port_base, triton_log) as triton:
                tiers = Tiers(triton._process.pid, triton.metrics_url)
                if not null and args.rounds:
                    urls = {"triton": triton.grpc_url} if "triton" in args.paths else {}
                    with contextlib.ExitStack() as stack:
                        if "gateway" in args.paths:
                            port = args.port_base + 10 + args.real_workers[0]
                            log = work / f"gateway-{kind}.log"
                            gw, urls["gateway"] = stack.enter_context(
                                _gateway(repo, triton.grpc_url, port, args.real_workers[0], log)
                            )
                            tiers.gateway_pid = gw.pid
                        rows += _interleaved_rows(
                            repo, args.endpoints, concurrency, args.rounds, requests, tiers, urls, triton_log
                        )
                    continue
                for workers in (args.workers if null else args.real_workers) if "gateway" in args.paths else []:
                    port = args.port_base + 10 + workers
                    with _gateway(repo, triton.grpc_url, port, workers, work / f"gateway-{kind}.log") as (gw, url):
                        formats = {m["name"]: m["engine_format"] for m in httpx.get(f"{url}/models").json()["models"]}
                        if any((f is None) != null for f in formats.values()):
                            raise RuntimeError(f"gateway reports engine formats {formats} for {kind} engines")
                        tiers.gateway_pid = gw.pid
                        for endpoint in args.endpoints:
                            for c in concurrency:
                                r = _load("gateway", url, endpoint, c, requests, tiers)
                                rows.append(_served_row(kind, "gateway", workers, endpoint, c, r))
                                LOGGER.info("%s", rows[-1])
                tiers.gateway_pid = None
                for endpoint in args.endpoints if "triton" in args.paths else []:
                    for c in concurrency:
                        r = _load("triton", triton.grpc_url, endpoint, c, requests, tiers)
                        rows.append(_served_row(kind, "triton", None, endpoint, c, r))
                        LOGGER.info("%s", rows[-1])
                        for think in args.triton_think:
                            r = _load("triton", triton.grpc_url, endpoint, c, requests, tiers, think)
                            rows.append(_served_row(kind, f"triton+{think}", None, endpoint, c, r))
                            LOGGER.info("%s", rows[-1])
            if "bare" in args.paths:
                rows += _bare_rows(kind, repo, args.endpoints, concurrency, args.bare_iterations)
    note = args.note or f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPUs"
    records = [{**dataclasses.asdict(r), "ceiling_per_core": r.ceiling_per_core} for r in rows]
    (args.out / "ceiling.json").write_text(json.dumps({"note": note, "rows": records}, indent=2) + "\n")
    _write(rows, note, args.out)
    return 0


def _write(rows: list[Row], note: str, out: pathlib.Path) -> None:
    order = (list(ENDPOINTS), ["real", "null"], ["gateway", "triton", "bare"])
    rows = sorted(
        rows,
        key=lambda r: (
            order[0].index(r.endpoint),
            order[1].index(r.engine),
            order[2].index(r.path.split("+")[0]),
            r.path,
            r.workers or 0,
        ),
    )
    (out / "ceiling.md").write_text(markdown(rows, note))
    plot(rows, out / "ceiling.png")
    sys.stdout.write(markdown(rows, note))


if __name__ == "__main__":
    sys.exit(main())
