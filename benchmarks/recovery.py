"""Recovery benchmark: after a Triton outage, how long until the gateway serves again?

Starts a real tritonserver with ``bert_qa`` only (tiny engine built into a temporary repository
unless ``--model-repository`` has one), serves one request through the gateway app, stops Triton
for ``--outage-s`` while a client keeps calling ``/qa`` (so gRPC's reconnect back-off grows), starts
a new tritonserver on the same ports and measures the time from Triton ready (HTTP readiness,
polled every 20 ms) to the gateway's first 200 (polled every 50 ms, one attempt per request).
Each gRPC back-off configuration runs in turn::

    .venv/bin/python benchmarks/recovery.py --outage-s 25 --runs 1
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import pathlib
import shutil
import socket
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

from fastapi.testclient import TestClient

from gateway import Settings, create_app
from magicmind_build.build import build_engine
from magicmind_build.specs import SPECS
from triton_local import TritonServer, TritonServerConfig

ROOT = pathlib.Path(__file__).resolve().parent.parent
QA = {"question": "Who wrote it?", "context": "The letter was written by Ada in London."}

# name -> (initial, max, connect timeout) reconnect back-off in seconds
CONFIGS = {
    "grpc defaults (1 s, 120 s, 20 s)": (1.0, 120.0, 20.0),
    "gateway defaults (0.1 s, 1 s, 1 s)": (0.1, 1.0, 1.0),
}


@dataclasses.dataclass(frozen=True)
class Recovery:
    config: str
    outage_s: float
    recovery_s: float | None
    failures_after_ready: int


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=1) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def qa_repo(source: pathlib.Path | None, work: pathlib.Path) -> pathlib.Path:
    """A repository with only ``bert_qa``: copied from ``source``, or with a tiny engine built here."""
    repo = work / "repo"
    if source is not None and (source / "bert_qa" / "1" / "model.onnx").exists():
        shutil.copytree(source / "bert_qa", repo / "bert_qa")
        return repo
    shutil.copytree(ROOT / "triton_repo" / "bert_qa", repo / "bert_qa", ignore=shutil.ignore_patterns("__pycache__"))
    build_engine(SPECS["bert_qa"], repo / "bert_qa" / "1", size="tiny")
    return repo


def measure(name: str, backoff: tuple[float, float, float], repo: pathlib.Path, outage_s: float) -> Recovery:
    http_port, grpc_port, metrics_port = _free_port(), _free_port(), _free_port()

    def server() -> TritonServer:
        log = repo.parent / "triton.log"
        return TritonServer(TritonServerConfig(repo, http_port, grpc_port, metrics_port, log_file=log))

    initial, largest, connect = backoff
    settings = Settings(
        triton_url=f"127.0.0.1:{grpc_port}",
        model_repository=repo,
        triton_retries=0,
        triton_reconnect_backoff_initial_s=initial,
        triton_reconnect_backoff_max_s=largest,
        triton_connect_timeout_s=connect,
        _env_file=None,  # type: ignore[call-arg]
    )
    with TestClient(create_app(settings)) as client:
        with server():
            if client.post("/qa", json=QA).status_code != 200:
                raise RuntimeError("the gateway did not serve before the outage")
        down_until = time.monotonic() + outage_s
        while time.monotonic() < down_until:
            client.post("/qa", json=QA)
            time.sleep(0.25)
        restarted = server()
        starter = threading.Thread(target=restarted.start)
        starter.start()
        try:
            deadline = time.monotonic() + 300
            while not _ready(restarted.http_url):
                if time.monotonic() > deadline:
                    raise RuntimeError("tritonserver did not become ready")
                time.sleep(0.02)
            ready_at = time.monotonic()
            failures = 0
            while time.monotonic() < ready_at + 180:
                if client.post("/qa", json=QA).status_code == 200:
                    return Recovery(name, outage_s, time.monotonic() - ready_at, failures)
                failures += 1
                time.sleep(0.05)
            return Recovery(name, outage_s, None, failures)
        finally:
            starter.join(timeout=300)
            restarted.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--outage-s", type=float, default=25.0, help="how long Triton stays down")
    parser.add_argument("--runs", type=int, default=1, help="runs per configuration")
    parser.add_argument("--model-repository", type=pathlib.Path, default=None, help="take bert_qa from here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("gateway").setLevel(logging.ERROR)  # one warning per failed request otherwise
    results = []
    with tempfile.TemporaryDirectory(prefix="recovery-") as tmp:
        repo = qa_repo(args.model_repository, pathlib.Path(tmp))
        for name, backoff in CONFIGS.items():
            for _ in range(args.runs):
                results.append(measure(name, backoff, repo, args.outage_s))
    header = f"{'reconnect back-off (initial, max, connect)':<44} {'outage s':>8} {'ready->200 s':>12} {'failed':>7}"
    sys.stdout.write("\n".join([header, *(_row(r) for r in results)]) + "\n")


def _row(r: Recovery) -> str:
    recovery = "never" if r.recovery_s is None else f"{r.recovery_s:.2f}"
    return f"{r.config:<44} {r.outage_s:>8.0f} {recovery:>12} {r.failures_after_ready:>7}"


if __name__ == "__main__":
    main()
