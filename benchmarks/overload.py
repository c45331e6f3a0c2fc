"""Overload benchmark: many concurrent /classify clients against one gateway, with and without shedding.

Starts a real tritonserver with ``resnet50_vd`` only (from ``--model-repository``, else a tiny engine
built into a temporary repository) and, per latency budget, a ``python -m gateway`` subprocess.
``--concurrency`` clients then send /classify for ``--duration-s`` seconds; a client that is shed
(503) waits the ``Retry-After`` it was given before its next request, as a well-behaved client does.
The table gives, per budget, the answers by status and the latency of the successful and the shed
ones::

    .venv/bin/python benchmarks/overload.py --model-repository triton_repo --concurrency 300 --budgets 0 5
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import io
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import httpx
import numpy as np

from gateway.settings import Settings
from magicmind_build.build import build_engine
from magicmind_build.specs import SPECS
from triton_local import TritonServer, TritonServerConfig
from triton_local.process import stop_process

ROOT = pathlib.Path(__file__).resolve().parent.parent
MODEL = "resnet50_vd"


@dataclasses.dataclass
class Answers:
    ok: list[float] = dataclasses.field(default_factory=list)
    shed: list[float] = dataclasses.field(default_factory=list)
    by_triton: int = 0  # of the shed: refused by Triton's queue policy rather than the gateway
    other: dict[int | str, int] = dataclasses.field(default_factory=dict)  # status code, or a transport error


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _image() -> bytes:
    from PIL import Image

    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def model_repo(source: pathlib.Path | None, work: pathlib.Path) -> pathlib.Path:
    repo = work / "repo"
    if source is not None and (source / MODEL / "1" / "model.onnx").exists():
        shutil.copytree(source / MODEL, repo / MODEL, ignore=shutil.ignore_patterns("__pycache__"))
        return repo
    shutil.copytree(ROOT / "triton_repo" / MODEL, repo / MODEL, ignore=shutil.ignore_patterns("__pycache__"))
    build_engine(SPECS[MODEL], repo / MODEL / "1", size="tiny")
    return repo


def gateway_repo(repo: pathlib.Path, work: pathlib.Path) -> pathlib.Path:
    """Where the gateway reads its models' tensor sizes: ``repo``'s classifier, and the configuration alone of
    the QA model and the detectors it always serves, which this tritonserver does not load (without them the
    gateway waits ``model_config_wait_s`` for Triton to name their sizes, then refuses to start). Only
    ``/classify`` is sent; the other models are simply not ready."""
    out = work / "gateway-repo"
    out.mkdir()
    (out / MODEL).symlink_to(repo / MODEL, target_is_directory=True)
    defaults = Settings(_env_file=None)  # type: ignore[call-arg]
    for name in dict.fromkeys([defaults.qa_model, *defaults.detect_models]):
        (out / name).mkdir()
        shutil.copy(ROOT / "triton_repo" / name / "config.pbtxt", out / name / "config.pbtxt")
    return out


async def load(url: str, image: bytes, concurrency: int, duration_s: float) -> Answers:
    answers = Answers()
    stop_at = time.monotonic() + duration_s
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:

        async def worker() -> None:
            while time.monotonic() < stop_at:
                start = time.monotonic()
                try:
                    response = await client.post("/classify", files={"file": ("x.jpg", image, "image/jpeg")})
                except httpx.TransportError as exc:  # the connection closed under the request: counted, not fatal
                    kind = type(exc).__name__
                    answers.other[kind] = answers.other.get(kind, 0) + 1
                    continue
                elapsed = time.monotonic() - start
                if response.status_code == 200:
                    answers.ok.append(elapsed)
                elif response.status_code == 503 and response.json()["error"]["code"] == "overloaded":
                    answers.shed.append(elapsed)
                    answers.by_triton += "refused by Triton" in response.json()["error"]["message"]
                    await asyncio.sleep(float(response.headers.get("retry-after", "1")))
                else:
                    answers.other[response.status_code] = answers.other.get(response.status_code, 0) + 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return answers


def run_gateway(
    triton: TritonServer, repo: pathlib.Path, budget: float, log: pathlib.Path
) -> tuple[str, subprocess.Popen[bytes]]:
    port = _free_port()
    env = dict(
        os.environ,
        GATEWAY_PORT=str(port),
        GATEWAY_TRITON_URL=triton.grpc_url,
        GATEWAY_MODEL_REPOSITORY=str(repo),
        GATEWAY_CLASSIFY_MODELS=f'["{MODEL}"]',
        GATEWAY_LATENCY_BUDGET_S=str(budget),
        GATEWAY_LOG_LEVEL="error",
    )
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"gateway did not start; see {log}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return url, process
        except httpx.HTTPError:
            time.sleep(0.1)


def _pct(values: list[float], q: float) -> str:
    return f"{np.percentile(values, q) * 1000:.0f}" if values else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-repository", type=pathlib.Path, default=None, help=f"take {MODEL} from here")
    parser.add_argument("--concurrency", type=int, default=300)
    parser.add_argument("--duration-s", type=float, default=30.0)
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.0, 5.0], help="GATEWAY_LATENCY_BUDGET_S")
    args = parser.parse_args()
    image = _image()
    rows = []
    with tempfile.TemporaryDirectory(prefix="overload-") as tmp:
        work = pathlib.Path(tmp)
        repo = model_repo(args.model_repository, work)
        served = gateway_repo(repo, work)
        config = TritonServerConfig(
            model_repository=repo,
            http_port=_free_port(),
            grpc_port=_free_port(),
            metrics_port=_free_port(),
            log_file=work / "triton.log",
        )
        with TritonServer(config) as triton:
            for budget in args.budgets:
                url, process = run_gateway(triton, served, budget, work / f"gateway-{budget}.log")
                try:
                    for _ in range(5):  # warm up, and a first service-time sample
                        httpx.post(f"{url}/classify", files={"file": ("x.jpg", image, "image/jpeg")}, timeout=60)
                    a = asyncio.run(load(url, image, args.concurrency, args.duration_s))
                finally:
                    stop_process(process, 30, signal.SIGTERM)
                other = ",".join(f"{k}:{v}" for k, v in sorted(a.other.items(), key=lambda kv: str(kv[0]))) or "-"
                rows.append(
                    f"{budget:>8g} {args.concurrency:>5} {len(a.ok):>6} {len(a.ok) / args.duration_s:>7.1f} "
                    f"{_pct(a.ok, 50):>8} {_pct(a.ok, 99):>8} {len(a.shed):>6} {_pct(a.shed, 50):>10} "
                    f"{_pct(a.shed, 99):>10} {a.by_triton:>7} {other:>6}"
                )
    header = (
        f"{'budget s':>8} {'conc':>5} {'200':>6} {'200/s':>7} {'p50 ms':>8} {'p99 ms':>8} {'503':>6} "
        f"{'503 p50 ms':>10} {'503 p99 ms':>10} {'Triton':>7} {'other':>6}"
    )
    sys.stdout.write("\n".join([header, *rows]) + "\n")


if __name__ == "__main__":
    main()
