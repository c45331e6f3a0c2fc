"""CLI: ``python -m triton_local --model-repository triton_repo``; Ctrl-C stops the server."""

from __future__ import annotations

import argparse
import logging
import pathlib
import signal
import sys

from triton_local.server import TritonServer, TritonServerConfig, TritonServerError


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the real tritonserver from the nvidia-pytriton wheel")
    parser.add_argument("--model-repository", type=pathlib.Path, default=pathlib.Path("triton_repo"))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument("--work-dir", type=pathlib.Path, default=None)
    parser.add_argument("--startup-timeout", type=float, default=600.0)
    parser.add_argument("--log-verbose", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
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
            return server.wait()
    except KeyboardInterrupt:
        return 0
    except TritonServerError as exc:
        logging.getLogger(__name__).error("%s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
