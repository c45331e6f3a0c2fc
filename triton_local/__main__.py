"""CLI: ``python -m triton_local --model-repository triton_repo``; Ctrl-C stops the server.

The server is supervised (a model whose stub died is reloaded, a dead server restarted)
unless ``--no-heal``. ``python -m triton_local probe --http-url URL [--model M ...]`` exits 0
only when every model (all loaded ones by default) answers a probe inference: a health check
for Compose and a Kubernetes liveness probe.
"""

from __future__ import annotations

import argparse
import logging
import pathlib
import signal
import sys
import threading

from triton_local.heal import HealConfig, Supervisor
from triton_local.probe import probe_all, reload_dead
from triton_local.server import TritonServer, TritonServerConfig, TritonServerError


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def probe_main(argv: list[str]) -> int:
    """``probe``: 0 when every model answers a probe inference, 1 otherwise (each result on stderr)."""
    parser = argparse.ArgumentParser(prog="python -m triton_local probe", description=probe_main.__doc__)
    parser.add_argument("--http-url", default="http://127.0.0.1:8000", help="Triton's HTTP endpoint")
    parser.add_argument("--model", action="append", default=[], help="model to probe (repeatable; default: all loaded)")
    parser.add_argument("--timeout", type=float, default=10.0, help="deadline of each probe inference, seconds")
    parser.add_argument(
        "--reload-dead",
        action="store_true",
        help="unload and load again every model whose stub process died, then probe it again "
        "(needs --model-control-mode=explicit): a health check that heals",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    log = logging.getLogger("triton_local.probe")
    url = args.http_url.rstrip("/")
    results = probe_all(url, args.model, args.timeout)
    if args.reload_dead and any(r.stub_dead for r in results):
        for r in results:
            if r.stub_dead:
                log.warning("%s: stub process died; reloading", r.model)
        results = reload_dead(url, results, args.timeout)
    for r in results:
        if r.ok:
            log.info("%s: ok (%.0f ms)", r.model, r.seconds * 1000)
        else:
            log.error("%s: FAILED (%.0f ms): %s", r.model, r.seconds * 1000, r.error)
    return 0 if all(r.ok for r in results) else 1


def _serve_healing(server: TritonServer, heal: HealConfig) -> int:
    stop = threading.Event()
    supervisor = Supervisor(server, heal)
    thread = threading.Thread(target=supervisor.run, args=(stop,), name="triton-heal", daemon=True)
    thread.start()
    try:
        while thread.is_alive():
            thread.join(0.5)
    finally:
        stop.set()
        thread.join()
    return 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["probe"]:
        return probe_main(argv[1:])
    parser = argparse.ArgumentParser(description="Run the real tritonserver from the nvidia-pytriton wheel")
    parser.add_argument("--model-repository", type=pathlib.Path, default=pathlib.Path("triton_repo"))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument("--work-dir", type=pathlib.Path, default=None)
    parser.add_argument("--startup-timeout", type=float, default=600.0)
    parser.add_argument("--log-verbose", type=int, default=0)
    parser.add_argument(
        "--no-heal", dest="heal", action="store_false", help="do not reload dead models or restart a dead server"
    )
    parser.add_argument("--heal-interval", type=float, default=1.0, help="seconds between stub-process checks")
    parser.add_argument("--probe-interval", type=float, default=10.0, help="seconds between probe inferences (0: off)")
    parser.add_argument("--probe-timeout", type=float, default=10.0, help="deadline of one probe inference")
    parser.add_argument(
        "--log-format",
        choices=("json", "text"),
        default="json",
        help="this launcher's log lines (not tritonserver's own): JSON objects (the gateway's formatter) or text",
    )
    args = parser.parse_args(argv)
    # The gateway's formatter (gateway.logs) where the whole distribution is installed. The CPU Triton
    # image (deploy/Dockerfile.triton-cpu) ships triton_local and engine_runtime only: there this
    # launcher's own few lines are plain text (tritonserver's output is Triton's text either way).
    try:
        from gateway.logs import configure_logging
    except ImportError:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    else:
        configure_logging(args.log_format, logging.INFO)
    config = TritonServerConfig(
        model_repository=args.model_repository,
        host=args.host,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        work_dir=args.work_dir,
        startup_timeout_s=args.startup_timeout,
        log_verbose=args.log_verbose,
    )
    server = TritonServer(config)
    # SIGTERM (a supervisor) and SIGINT (Ctrl-C, also when started in the background, where a
    # shell leaves SIGINT ignored) take the same clean path: stop tritonserver, then exit.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    try:
        with server:
            if args.heal:
                heal = HealConfig(
                    interval_s=args.heal_interval,
                    probe_interval_s=args.probe_interval,
                    probe_timeout_s=args.probe_timeout,
                )
                return _serve_healing(server, heal)
            return server.wait()
    except KeyboardInterrupt:
        return 0
    except TritonServerError as exc:
        logging.getLogger(__name__).error("%s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
