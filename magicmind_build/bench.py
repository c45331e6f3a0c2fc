"""Measure bare engines: latency and throughput per batch size, no Triton, no gateway.

``python -m magicmind_build.bench --repo triton_repo --batch-sizes 1 8 32`` prints one table
row per (model, batch size); the serving benchmark (``benchmarks/serving.py``) compares against it.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import pathlib
import statistics
import sys
import time
from collections.abc import Sequence

import numpy as np

from engine_runtime.engine import Engine, load_engine
from engine_runtime.manifest import Manifest

LOGGER = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class BenchResult:
    """Args:
    model: model name.
    batch: rows per engine call.
    p50_ms, p95_ms: latency percentiles of one engine call.
    items_per_s: rows per second (batch / mean call time).
    """

    model: str
    batch: int
    p50_ms: float
    p95_ms: float
    items_per_s: float


def load_bare_engine(version_dir: pathlib.Path) -> tuple[Engine, Manifest]:
    """The engine built in ``version_dir``, set up to have the machine to itself.

    ONNX Runtime's idle threads may spin here (Triton's models turn that off, as they share the CPU).
    A null-engine manifest gives the benchmark-only :class:`~engine_runtime.engine.NullEngine`.
    """
    manifest = Manifest.read(version_dir)
    path = version_dir / manifest.engine_file
    spin = manifest.engine_format is not None and path.suffix == ".onnx"
    engine = load_engine(path, manifest, spin=True) if spin else load_engine(path, manifest)
    return engine, manifest


def random_feeds(engine: Engine, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs of the engine's shapes; token ids stay inside the vocabulary, masks are all ones."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in engine.inputs:
        shape = (batch, *spec.shape[1:])
        if spec.name == "attention_mask":
            feeds[spec.name] = np.ones(shape, dtype=spec.dtype)
        elif spec.name == "token_type_ids":
            feeds[spec.name] = np.zeros(shape, dtype=spec.dtype)
        else:
            high = 30522 if spec.dtype == "int64" else 256
            feeds[spec.name] = rng.integers(0, high, shape).astype(spec.dtype)
    return feeds


def bench_engine(name: str, engine: Engine, batch: int, iterations: int, warmup: int = 2) -> BenchResult:
    feeds = random_feeds(engine, batch)
    for _ in range(warmup):
        engine.run(feeds)
    times = []
    for _ in range(iterations):
        start = time.perf_counter()
        engine.run(feeds)
        times.append(time.perf_counter() - start)
    times_ms = sorted(t * 1000 for t in times)
    return BenchResult(
        model=name,
        batch=batch,
        p50_ms=statistics.median(times_ms),
        p95_ms=times_ms[min(len(times_ms) - 1, int(round(0.95 * (len(times_ms) - 1))))],
        items_per_s=batch / statistics.fmean(times),
    )


def format_table(results: Sequence[BenchResult]) -> str:
    lines = [f"{'model':<20} {'batch':>5} {'p50 ms':>9} {'p95 ms':>9} {'items/s':>9}"]
    for r in results:
        lines.append(f"{r.model:<20} {r.batch:>5} {r.p50_ms:>9.2f} {r.p95_ms:>9.2f} {r.items_per_s:>9.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m magicmind_build.bench", description=__doc__)
    parser.add_argument("--repo", type=pathlib.Path, default=pathlib.Path("triton_repo"))
    parser.add_argument(
        "--models", nargs="+", default=["bert_qa", "yolov5n", "nanodet", "resnet50_vd", "efficientnet_lite0"]
    )
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--iterations", type=int, default=10)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    results = []
    for name in args.models:
        engine, manifest = load_bare_engine(args.repo / name / "1")
        LOGGER.info("%s: %s, %s, %s weights", name, engine.description, manifest.config.get("size"), manifest.weights)
        for batch in args.batch_sizes:
            results.append(bench_engine(name, engine, batch, args.iterations))
    sys.stdout.write(format_table(results) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
