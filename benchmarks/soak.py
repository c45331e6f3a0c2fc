"""Soak: mixed, partly hostile load with injected faults for N minutes; every answer is checked.

Against a running stack (faults only touch the PIDs you pass, and the Python-backend stubs that are
children of ``--triton-pid``)::

    .venv/bin/python benchmarks/soak.py --url http://127.0.0.1:8080 --minutes 10 --concurrency 8 \\
        --gateway-pid GATEWAY_PID --triton-pid TRITONSERVER_PID --faults triton_stop stub_kill

Standalone (starts tritonserver on the engines already built in ``--repo`` and ``python -m gateway``)::

    .venv/bin/python -m magicmind_build --repo /tmp/repo --size tiny    # a copy of triton_repo/
    .venv/bin/python benchmarks/soak.py --start-stack --repo /tmp/repo --minutes 2 \\
        --faults triton_stop stub_kill triton_kill

Requests mix real images (scikit-image data) for /detect and /classify and a short /qa with hostile
ones: garbage bytes, an empty upload, a PNG whose header claims 100000x100000 pixels, a text/plain
upload, malformed JSON and a long QA context. Each request sends its own ``X-Request-ID``; an answer
is well formed when it echoes that id, is JSON, its status is one the request may get (see
``Kind.expected``; 503 ``overloaded``/``triton_unavailable`` and 429 are allowed for any request), and
its body is the endpoint's success schema or ``{"error": {"code", "message"}}``. A request with no
answer within ``--request-timeout`` counts as ``no_answer``.

Faults, injected in turn every ``--fault-every`` seconds:

* ``triton_stop``: SIGSTOP tritonserver for ``--fault-seconds``, then SIGCONT.
* ``stub_kill``: SIGKILL the Python-backend stub of one model (rotating over ``--stub-models``).
* ``triton_kill``: SIGKILL tritonserver, restart it on the same ports after ``--fault-seconds``
  (``--start-stack`` only: this script must own the server to restart it).

Prints the request count, status mix per kind, errors by code, p50/p95/p99 per endpoint, the
gateway's peak RSS (``VmHWM`` from ``/proc/<pid>/status``) and the faults injected. Exits 1 if any
request got a malformed answer, an unexpected status or no answer.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import io
import os
import pathlib
import random
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import httpx
from pydantic import BaseModel, ValidationError

from gateway.schemas import ClassifyResponse, DetectResponse, QAResponse
from triton_local import stubs as triton_stubs
from triton_local.process import stop_process

SHED = frozenset({503, 429})  # 503 overloaded / triton_unavailable; 429 a client rate limit (when enabled)
UPSTREAM = frozenset({502, 503, 504})  # inference_failed, triton_unavailable, upstream_timeout
FAULTS = ("triton_stop", "stub_kill", "triton_kill")
SCHEMAS: dict[str, type[BaseModel]] = {"/qa": QAResponse, "/detect": DetectResponse, "/classify": ClassifyResponse}
QA_CONTEXT = "The letter was written by Ada Lovelace in London in 1843, and it described the Analytical Engine."


@dataclasses.dataclass(frozen=True)
class Kind:
    """One kind of request.

    Args:
        name: short name in the report.
        path: request path and query.
        weight: relative frequency.
        expected: statuses a well-behaved gateway may answer (besides ``SHED``).
        json: a JSON body, or
        content: a raw body sent with ``content_type``, or
        file: a multipart ``file`` upload, ``(bytes, content type)``.
    """

    name: str
    path: str
    weight: float
    expected: frozenset[int]
    json: dict[str, Any] | None = None
    content: bytes | None = None
    content_type: str = "application/json"
    file: tuple[bytes, str] | None = None

    @property
    def endpoint(self) -> str:
        return self.path.split("?")[0]


def _jpeg(array: Any) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _png_claiming(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims ``width`` x ``height`` RGB pixels, with one tiny IDAT."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def request_kinds() -> list[Kind]:
    from skimage import data

    astronaut, chelsea = _jpeg(data.astronaut()), _jpeg(data.chelsea())
    ok = frozenset({200}) | UPSTREAM
    long_context = " ".join([QA_CONTEXT] * 300)  # ~30k characters, about 70 windows
    garbage = random.Random(0).randbytes(50_000)
    return [
        Kind("qa", "/qa", 3, ok, json={"question": "Who wrote the letter?", "context": QA_CONTEXT, "top_k": 3}),
        Kind("detect", "/detect", 2, ok, file=(astronaut, "image/jpeg")),
        Kind("classify", "/classify?model=resnet50_vd", 2, ok, file=(chelsea, "image/jpeg")),
        Kind("classify_lite", "/classify?model=efficientnet_lite0&top_k=3", 2, ok, file=(chelsea, "image/jpeg")),
        # A long context may also be refused by a window/size limit.
        Kind("qa_long", "/qa", 0.5, ok | {413, 422}, json={"question": "Who wrote it?", "context": long_context}),
        Kind("garbage", "/detect", 0.5, frozenset({400, 415}), file=(garbage, "image/jpeg")),
        Kind("empty", "/classify", 0.5, frozenset({400, 422}), file=(b"", "image/png")),
        Kind("png_bomb", "/detect", 0.5, frozenset({400, 413}), file=(_png_claiming(100_000, 100_000), "image/png")),
        Kind("wrong_type", "/classify", 0.5, frozenset({415}), file=(chelsea, "text/plain")),
        Kind(
            "bad_json", "/qa", 0.5, frozenset({400, 422}), content=b'{"question": "Who', content_type="application/json"
        ),
    ]


@dataclasses.dataclass
class Outcome:
    """One request's fate. ``failure`` is None, ``malformed``, ``unexpected_status`` or ``no_answer``."""

    kind: str
    endpoint: str
    request_id: str
    seconds: float
    status: int | None = None
    code: str | None = None
    failure: str | None = None
    detail: str = ""


def check_answer(kind: Kind, request_id: str, response: httpx.Response) -> tuple[str | None, str | None, str]:
    """``(error code, failure, detail)`` of one answer."""
    if response.headers.get("x-request-id") != request_id:
        return None, "malformed", f"X-Request-ID {response.headers.get('x-request-id')!r}, sent {request_id!r}"
    if not response.headers.get("content-type", "").startswith("application/json"):
        return None, "malformed", f"content-type {response.headers.get('content-type')!r}"
    try:
        body = response.json()
    except ValueError:
        return None, "malformed", f"body is not JSON: {response.text[:200]!r}"
    code = None
    if response.status_code >= 400:
        error = body.get("error") if isinstance(body, dict) else None
        if (
            not isinstance(body, dict)
            or set(body) != {"error"}
            or not isinstance(error, dict)
            or not isinstance(error.get("code"), str)
            or not isinstance(error.get("message"), str)
        ):
            return None, "malformed", f"error body {str(body)[:200]}"
        code = error["code"]
    elif response.status_code == 200:
        try:
            SCHEMAS[kind.endpoint].model_validate(body)
        except ValidationError as exc:
            return None, "malformed", f"200 body does not fit the schema: {str(exc)[:200]}"
    if response.status_code not in kind.expected | SHED:
        return code, "unexpected_status", f"{response.status_code} {code or ''} {response.text[:200]}"
    return code, None, ""


class Soak:
    """The load: ``concurrency`` workers until the deadline or ``max_requests``."""

    def __init__(self, url: str, kinds: list[Kind], args: argparse.Namespace) -> None:
        self.url = url
        self.kinds = kinds
        self.args = args
        self.outcomes: list[Outcome] = []
        self.sent = 0
        self.answered_ids: set[str] = set()

    async def one(self, client: httpx.AsyncClient, kind: Kind) -> None:
        request_id = f"soak-{os.getpid()}-{self.sent}"
        self.sent += 1
        headers = {"X-Request-ID": request_id}
        start = time.perf_counter()
        outcome = Outcome(kind.name, kind.endpoint, request_id, 0.0)
        try:
            if kind.file is not None:
                files = {"file": ("upload", kind.file[0], kind.file[1])}
                response = await client.post(kind.path, files=files, headers=headers)
            elif kind.json is not None:
                response = await client.post(kind.path, json=kind.json, headers=headers)
            else:
                headers["content-type"] = kind.content_type
                response = await client.post(kind.path, content=kind.content, headers=headers)
        except httpx.HTTPError as exc:  # timeout, refused or reset connection, broken response
            outcome.failure, outcome.detail = "no_answer", f"{type(exc).__name__}: {exc}"
        else:
            outcome.status = response.status_code
            outcome.code, outcome.failure, outcome.detail = check_answer(kind, request_id, response)
            if request_id in self.answered_ids:
                outcome.failure, outcome.detail = "malformed", "a second answer for the same request"
            self.answered_ids.add(request_id)
        outcome.seconds = time.perf_counter() - start
        self.outcomes.append(outcome)

    async def run(self, deadline: float) -> None:
        limits = httpx.Limits(max_connections=self.args.concurrency, max_keepalive_connections=self.args.concurrency)
        timeout = httpx.Timeout(self.args.request_timeout)
        weights = [k.weight for k in self.kinds]
        async with httpx.AsyncClient(base_url=self.url, timeout=timeout, limits=limits) as client:

            async def worker(index: int) -> None:
                rng = random.Random(self.args.seed * 1000 + index)
                while time.monotonic() < deadline and self.sent < self.args.max_requests:
                    await self.one(client, rng.choices(self.kinds, weights)[0])

            await asyncio.gather(*(worker(i) for i in range(self.args.concurrency)))


def read_status_kib(pid: int, field: str) -> int | None:
    """``VmRSS`` / ``VmHWM`` of ``pid`` in KiB, or None when the process is gone."""
    try:
        for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


@dataclasses.dataclass
class RssSampler:
    """Samples a process's ``VmRSS`` and ``VmHWM`` (the kernel's own peak) every ``interval_s``."""

    pid: int
    interval_s: float = 0.5
    start_kib: int | None = None
    max_kib: int = 0
    last_kib: int | None = None
    hwm_kib: int | None = None

    def sample(self) -> None:
        rss = read_status_kib(self.pid, "VmRSS")
        if rss is None:
            return
        self.start_kib = rss if self.start_kib is None else self.start_kib
        self.max_kib, self.last_kib = max(self.max_kib, rss), rss
        self.hwm_kib = read_status_kib(self.pid, "VmHWM") or self.hwm_kib

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.sample()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval_s)
        self.sample()


class Faults:
    """Injects the chosen faults in turn; touches only ``triton_pid`` and its stub children.

    Args:
        names: faults to cycle through.
        triton_pid: returns the current tritonserver PID (it changes after ``triton_kill``).
        restart_triton: kills and restarts the owned tritonserver (``--start-stack``), or None.
        every_s: seconds between the starts of two faults.
        fault_s: how long a stop or an outage lasts.
        stub_models: models whose stubs ``stub_kill`` rotates over.
    """

    def __init__(
        self,
        names: list[str],
        triton_pid: Callable[[], int | None],
        restart_triton: Callable[[float], list[str]] | None,
        every_s: float,
        fault_s: float,
        stub_models: list[str],
    ) -> None:
        self.names = names
        self.triton_pid = triton_pid
        self.restart_triton = restart_triton
        self.every_s = every_s
        self.fault_s = fault_s
        self.stub_models = stub_models
        self.log: list[str] = []
        self.killed_stubs: list[triton_stubs.Stub] = []
        self._started = time.monotonic()

    def note(self, text: str) -> None:
        self.log.append(f"+{time.monotonic() - self._started:6.1f}s {text}")

    async def inject(self, name: str, turn: int) -> None:
        pid = self.triton_pid()
        if pid is None:
            self.note(f"{name}: skipped, tritonserver is not running")
            return
        if name == "triton_stop":
            os.kill(pid, signal.SIGSTOP)
            try:
                self.note(f"triton_stop: SIGSTOP tritonserver {pid} for {self.fault_s:.0f}s")
                await asyncio.sleep(self.fault_s)
            finally:
                os.kill(pid, signal.SIGCONT)
        elif name == "stub_kill":
            model = self.stub_models[turn % len(self.stub_models)]
            found = triton_stubs.stubs(pid, model)
            if not found:
                self.note(f"stub_kill: no live stub of {model} under tritonserver {pid}")
                return
            os.kill(found[0].pid, signal.SIGKILL)
            self.killed_stubs.append(found[0])
            self.note(f"stub_kill: SIGKILL {found[0].instance} stub {found[0].pid}")
        elif name == "triton_kill" and self.restart_triton is not None:
            self.note(f"triton_kill: SIGKILL tritonserver {pid}, restart after {self.fault_s:.0f}s")
            started = time.monotonic()
            orphans = await asyncio.to_thread(self.restart_triton, self.fault_s)
            if orphans:
                self.note(f"triton_kill: stubs that outlived tritonserver {pid}, SIGKILLed: {' '.join(orphans)}")
            self.note(
                f"triton_kill: tritonserver {self.triton_pid()} ready {time.monotonic() - started:.1f}s after the kill"
            )

    async def run(self, deadline: float) -> None:
        turn = 0
        while self.names:
            start = time.monotonic() + self.every_s / 2 if turn == 0 else time.monotonic() + self.every_s
            if start + self.fault_s >= deadline:
                return
            await asyncio.sleep(start - time.monotonic())
            name = self.names[turn % len(self.names)]
            try:
                await self.inject(name, turn // len(self.names))
            except Exception as exc:  # report it with the faults, keep the load going
                self.note(f"{name}: failed: {type(exc).__name__}: {exc}")
            turn += 1


def _percentile(sorted_ms: list[float], p: float) -> float:
    return sorted_ms[min(len(sorted_ms) - 1, round(p * (len(sorted_ms) - 1)))]


def report(
    soak: Soak, elapsed_s: float, rss: RssSampler | None, faults: Faults | None, args: argparse.Namespace
) -> str:
    outcomes = soak.outcomes
    lines = [
        f"soak: {elapsed_s:.0f} s against {soak.url}, concurrency {args.concurrency}, seed {args.seed}, "
        f"faults: {' '.join(args.faults) or 'none'}",
        "",
    ]
    statuses = sorted({o.status for o in outcomes if o.status is not None})
    header = f"{'kind':<14} {'reqs':>6} " + " ".join(f"{s:>5}" for s in statuses) + f" {'no_ans':>6} {'bad':>4}"
    lines.append(header)
    by_kind: dict[str, list[Outcome]] = collections.defaultdict(list)
    for o in outcomes:
        by_kind[o.kind].append(o)
    for name in [k.name for k in soak.kinds] + ["all"]:
        rows = outcomes if name == "all" else by_kind.get(name, [])
        if not rows:
            continue
        mix = collections.Counter(o.status for o in rows)
        bad = sum(o.failure in {"malformed", "unexpected_status"} for o in rows)
        no_answer = sum(o.failure == "no_answer" for o in rows)
        lines.append(
            f"{name:<14} {len(rows):>6} "
            + " ".join(f"{mix.get(s, 0):>5}" for s in statuses)
            + f" {no_answer:>6} {bad:>4}"
        )
    codes = collections.Counter(o.code for o in outcomes if o.code is not None)
    lines += ["", "errors by code: " + (", ".join(f"{c} {n}" for c, n in sorted(codes.items())) or "none"), ""]
    lines.append(f"{'endpoint':<10} {'reqs':>6} {'req/s':>7} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for endpoint in sorted({o.endpoint for o in outcomes}):
        ms = sorted(o.seconds * 1000 for o in outcomes if o.endpoint == endpoint and o.status is not None)
        if ms:
            lines.append(
                f"{endpoint:<10} {len(ms):>6} {len(ms) / elapsed_s:>7.1f} {_percentile(ms, 0.5):>8.1f} "
                f"{_percentile(ms, 0.95):>8.1f} {_percentile(ms, 0.99):>8.1f} {ms[-1]:>8.1f}"
            )
    lines.append("")
    if rss is not None and rss.start_kib is not None:
        mib = 1024.0
        hwm = f"{rss.hwm_kib / mib:.1f} MiB" if rss.hwm_kib else "n/a"
        lines.append(
            f"gateway peak RSS: {hwm} (VmHWM); VmRSS start {rss.start_kib / mib:.1f}, "
            f"max sampled {rss.max_kib / mib:.1f}, end {(rss.last_kib or 0) / mib:.1f} MiB"
        )
    else:
        lines.append("gateway peak RSS: not measured (no --gateway-pid)")
    if faults is not None:
        lines += ["faults injected:", *(f"  {entry}" for entry in faults.log or ["none (run shorter than the first)"])]
    failures = collections.Counter(o.failure for o in outcomes if o.failure)
    lines += [
        "",
        f"requests {len(outcomes)}, well-formed answers {sum(o.failure is None for o in outcomes)}, "
        f"malformed {failures['malformed']}, unexpected status {failures['unexpected_status']}, "
        f"no answer {failures['no_answer']}",
    ]
    examples = [o for o in outcomes if o.failure][:10]
    lines += [f"  {o.failure}: {o.kind} {o.request_id} {o.status} {o.detail}" for o in examples]
    return "\n".join(lines) + "\n"


def _wait_healthy(url: str, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gateway exited with code {process.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"gateway not healthy after {timeout_s:.0f}s")


@contextlib.contextmanager
def start_stack(args: argparse.Namespace) -> Iterator[tuple[str, int, Any]]:
    """tritonserver (``triton_local``) on ``args.repo`` and ``python -m gateway`` on the given ports.

    Yields the gateway URL, its PID and the ``TritonServer``; stops both (bounded) on exit.
    """
    from triton_local import TritonServer, TritonServerConfig

    log_dir = args.log_dir or pathlib.Path(tempfile.mkdtemp(prefix="soak-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    http_port, grpc_port, metrics_port = args.triton_ports
    config = TritonServerConfig(
        model_repository=args.repo,
        http_port=http_port,
        grpc_port=grpc_port,
        metrics_port=metrics_port,
        startup_timeout_s=300,
        shutdown_timeout_s=15,
        log_file=log_dir / "tritonserver.log",
    )
    env = {
        **os.environ,
        "GATEWAY_HOST": "127.0.0.1",
        "GATEWAY_PORT": str(args.gateway_port),
        "GATEWAY_TRITON_URL": f"127.0.0.1:{grpc_port}",
        "GATEWAY_MODEL_REPOSITORY": str(args.repo),
        "GATEWAY_LOG_LEVEL": "warning",
        **dict(item.split("=", 1) for item in args.gateway_env),
    }
    url = f"http://127.0.0.1:{args.gateway_port}"
    sys.stderr.write(f"soak: starting tritonserver on {args.repo} and the gateway at {url}; logs in {log_dir}\n")
    with contextlib.ExitStack() as stack:
        triton = TritonServer(config)
        triton.start()

        @stack.callback
        def stop_triton() -> None:
            stale = [] if triton.pid is None else triton_stubs.stubs(triton.pid)
            triton.stop()
            triton_stubs.reap(stale, timeout_s=10)  # a server killed after ignoring SIGINT can leave stubs

        log = stack.enter_context(open(log_dir / "gateway.log", "ab"))
        process = subprocess.Popen([sys.executable, "-m", "gateway"], env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_healthy(url, process, 60)
            yield url, process.pid, triton
        finally:
            stop_process(process, 15, signal.SIGTERM)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="the gateway (ignored with --start-stack)")
    parser.add_argument("--minutes", type=float, default=5.0, help="how long to send requests")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--max-requests", type=int, default=1_000_000, help="stop after this many requests")
    parser.add_argument("--request-timeout", type=float, default=60.0, help="client timeout: past it, no_answer")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--faults", nargs="*", default=[], choices=FAULTS)
    parser.add_argument("--fault-every", type=float, default=30.0, help="seconds between faults")
    parser.add_argument("--fault-seconds", type=float, default=5.0, help="length of a SIGSTOP or a Triton outage")
    parser.add_argument("--stub-models", nargs="+", default=["bert_qa", "efficientnet_lite0", "yolov5n", "resnet50_vd"])
    parser.add_argument("--gateway-pid", type=int, default=None, help="for peak RSS from /proc")
    parser.add_argument("--triton-pid", type=int, default=None, help="tritonserver to SIGSTOP (and its stubs)")
    parser.add_argument("--start-stack", action="store_true", help="start tritonserver and the gateway here")
    parser.add_argument("--repo", type=pathlib.Path, default=pathlib.Path("triton_repo"), help="with --start-stack")
    parser.add_argument(
        "--triton-ports", type=int, nargs=3, default=[8000, 8001, 8002], metavar=("HTTP", "GRPC", "METRICS")
    )
    parser.add_argument("--gateway-port", type=int, default=8080)
    parser.add_argument("--gateway-env", nargs="*", default=[], metavar="GATEWAY_X=V", help="with --start-stack")
    parser.add_argument("--log-dir", type=pathlib.Path, default=None, help="with --start-stack; a temp dir if unset")
    args = parser.parse_args(argv)
    if "triton_kill" in args.faults and not args.start_stack:
        parser.error("triton_kill needs --start-stack (the script must own tritonserver to restart it)")
    if {"triton_stop", "stub_kill"} & set(args.faults) and not (args.start_stack or args.triton_pid):
        parser.error("triton_stop and stub_kill need --triton-pid (or --start-stack)")
    if any("=" not in item for item in args.gateway_env):
        parser.error("--gateway-env takes GATEWAY_NAME=VALUE items")
    return args


async def soak(
    url: str, args: argparse.Namespace, faults: Faults | None, gateway_pid: int | None
) -> tuple[Soak, float, RssSampler | None]:
    load = Soak(url, request_kinds(), args)
    rss = RssSampler(gateway_pid) if gateway_pid else None
    stop = asyncio.Event()
    sampler = asyncio.create_task(rss.run(stop)) if rss else None
    started = time.monotonic()
    deadline = started + args.minutes * 60
    injector = asyncio.create_task(faults.run(deadline)) if faults else None
    try:
        await load.run(deadline)
    finally:
        elapsed = time.monotonic() - started
        if injector is not None:
            injector.cancel()  # a SIGSTOP in progress is undone by its finally
            with contextlib.suppress(asyncio.CancelledError):
                await injector
        stop.set()
        if sampler is not None:
            await sampler
    return load, elapsed, rss


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with contextlib.ExitStack() as stack:
        url, gateway_pid, triton = args.url, args.gateway_pid, None
        if args.start_stack:
            url, gateway_pid, triton = stack.enter_context(start_stack(args))

        def triton_pid() -> int | None:
            return triton.pid if triton is not None else args.triton_pid

        def restart_triton(outage_s: float) -> list[str]:
            """SIGKILL the owned tritonserver, clean up after its stubs, start it again; orphaned stubs."""
            assert triton is not None
            pid = triton.pid
            stale = triton_stubs.stubs(pid) if pid is not None else []
            killed_at = time.monotonic()
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
            triton.stop()  # reaps it
            orphans = triton_stubs.reap(stale, timeout_s=outage_s)
            time.sleep(max(0.0, killed_at + outage_s - time.monotonic()))
            triton.start()
            return [s.instance for s in orphans]

        faults = None
        if args.faults:
            faults = Faults(
                args.faults,
                triton_pid,
                restart_triton if triton is not None else None,
                args.fault_every,
                args.fault_seconds,
                args.stub_models,
            )
        load, elapsed, rss = asyncio.run(soak(url, args, faults, gateway_pid))
    if triton is not None and faults is not None:
        triton_stubs.reap(faults.killed_stubs, timeout_s=1)  # our server is gone: drop the stubs' shm regions
    sys.stdout.write(report(load, elapsed, rss, faults, args))
    return 1 if any(o.failure for o in load.outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
