"""Measure bare engines: latency and throughput per batch size, no Triton, no gateway.

``python -m magicmind_build.bench --repo triton_repo --batch-sizes 1 8 32`` prints one table
row per (model, batch size); the serving benchmark (``benchmarks/serving.py``) compares against it.

``--precisions fp32 fp16 int8`` measures each built precision variant too (``<model>_<precision>``), and
``--served-url http://127.0.0.1:8080`` puts the served throughput of the same model at the same precision
next to each row: ``batch`` concurrent clients, each sending one item per request through the gateway
(``?model=<model>_<precision>``), so Triton's dynamic batching can form batches of up to ``batch`` rows.
``--markdown`` prints one table per model in the reference's format (precision, device, batch size,
latency, throughput; served p95/p99 and throughput next to the bare engine's).
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
    precision: the engine's precision (from its manifest).
    mean_ms: mean latency of one engine call.
    """

    model: str
    batch: int
    p50_ms: float
    p95_ms: float
    items_per_s: float
    precision: str = "fp32"
    mean_ms: float = 0.0


@dataclasses.dataclass(frozen=True)
class ServedResult:
    """Args:
    requests: requests answered 200 (one item each).
    errors: other answers.
    items_per_s: items answered per second with ``batch`` concurrent clients.
    p95_ms, p99_ms: client latency percentiles.
    """

    requests: int
    errors: int
    items_per_s: float
    p95_ms: float
    p99_ms: float


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


def bench_engine(
    name: str, engine: Engine, batch: int, iterations: int, warmup: int = 2, precision: str = "fp32"
) -> BenchResult:
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
        precision=precision,
        mean_ms=statistics.fmean(times_ms),
    )


def _percentile(sorted_ms: list[float], p: float) -> float:
    return sorted_ms[min(len(sorted_ms) - 1, int(round(p * (len(sorted_ms) - 1))))]


def served_request(task: str) -> dict[str, object]:
    """The body of one one-item request to the gateway for a model of ``task`` (httpx keyword arguments)."""
    if task == "qa":
        return {
            "json": {
                "question": "Who designed the bridge?",
                "context": "Ada Lovelace was born in London in 1815. Years later, Ada Lovelace designed the bridge.",
            }
        }
    import io

    from PIL import Image
    from skimage import data

    buffer = io.BytesIO()
    Image.fromarray(data.chelsea() if task == "classify" else data.astronaut()).save(buffer, "JPEG", quality=90)
    return {"files": {"file": ("image.jpg", buffer.getvalue(), "image/jpeg")}}


def bench_served(url: str, task: str, model: str, concurrency: int, requests: int) -> ServedResult:
    """``requests`` one-item requests to ``/<task>?model=<model>`` from ``concurrency`` clients."""
    import asyncio

    import httpx

    body = served_request(task)
    latencies: list[float] = []
    errors = 0

    async def run() -> float:
        nonlocal errors
        remaining = requests
        async with httpx.AsyncClient(base_url=url, timeout=300) as client:

            async def one() -> bool:
                start = time.perf_counter()
                response = await client.post(f"/{task}", params={"model": model}, **body)  # type: ignore[arg-type]
                latencies.append(time.perf_counter() - start)
                return response.status_code == 200

            async def worker() -> None:
                nonlocal remaining, errors
                while remaining > 0:
                    remaining -= 1
                    ok = await one()  # not `errors += not await one()`: that reads `errors` before the await
                    errors += not ok  # and concurrent workers' failures overwrite each other

            for _ in range(min(concurrency, 2)):  # warm-up
                await one()
            latencies.clear()
            started = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            return time.perf_counter() - started

    elapsed = asyncio.run(run())
    ms = sorted(x * 1000 for x in latencies)
    return ServedResult(
        len(ms) - errors, errors, (len(ms) - errors) / elapsed, _percentile(ms, 0.95), _percentile(ms, 0.99)
    )


def format_markdown(results: Sequence[BenchResult], served: dict[tuple[str, int], ServedResult], device: str) -> str:
    """One table per model, in the reference's format (rows by precision, then batch size)."""
    out = []
    for model in dict.fromkeys(r.model for r in results):
        out += [
            f"**{model}**",
            "",
            "| Precision | Device | Batch Size | Bare mean latency ms | Bare p95 ms | Bare items/s "
            "| Served p95 ms | Served p99 ms | Served items/s | Served failed |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in (r for r in results if r.model == model):
            s = served.get((variant_key(r), r.batch))
            # items/s counts answered requests only; failed ones (e.g. 503) are shown, never hidden in the rate
            total = s.requests + s.errors if s else 0
            cells = (
                f"{s.p95_ms:.0f} | {s.p99_ms:.0f} | {s.items_per_s:.1f} | {s.errors}/{total}" if s else "- | - | - | -"
            )
            out.append(
                f"| {r.precision.upper()} | {device} | {r.batch} | {r.mean_ms:.1f} | {r.p95_ms:.1f} "
                f"| {r.items_per_s:.1f} | {cells} |"
            )
        out.append("")
    return "\n".join(out)


def variant_key(result: BenchResult) -> str:
    return result.model if result.precision == "fp32" else f"{result.model}_{result.precision}"


def format_table(results: Sequence[BenchResult]) -> str:
    lines = [f"{'model':<20} {'batch':>5} {'p50 ms':>9} {'p95 ms':>9} {'items/s':>9} {'precision':>9}"]
    for r in results:
        lines.append(
            f"{r.model:<20} {r.batch:>5} {r.p50_ms:>9.2f} {r.p95_ms:>9.2f} {r.items_per_s:>9.1f} {r.precision:>9}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m magicmind_build.bench", description=__doc__)
    parser.add_argument("--repo", type=pathlib.Path, default=pathlib.Path("triton_repo"))
    parser.add_argument(
        "--models", nargs="+", default=["bert_qa", "yolov5n", "nanodet", "resnet50_vd", "efficientnet_lite0"]
    )
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--precisions", nargs="+", choices=["fp32", "fp16", "int8"], default=["fp32"])
    parser.add_argument("--served-url", default=None, help="the gateway, for served throughput next to each row")
    parser.add_argument("--served-requests", type=int, default=4, help="served requests per client and row")
    parser.add_argument("--markdown", action="store_true", help="tables in the reference's format")
    parser.add_argument("--device", default="CPU (ONNX Runtime)", help="the Device column of --markdown")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    results = []
    served: dict[tuple[str, int], ServedResult] = {}
    for name in args.models:
        for precision in args.precisions:
            model = name if precision == "fp32" else f"{name}_{precision}"
            if not (args.repo / model / "1" / "manifest.json").exists():
                LOGGER.info("%s: not built; skipped", model)
                continue
            engine, manifest = load_bare_engine(args.repo / model / "1")
            LOGGER.info(
                "%s: %s, %s, %s weights", model, engine.description, manifest.config.get("size"), manifest.weights
            )
            for batch in args.batch_sizes:
                results.append(bench_engine(name, engine, batch, args.iterations, precision=manifest.precision))
                LOGGER.info("%s bare: %s", model, results[-1])  # rows of a run cut short are not lost
            del engine  # the served run below must not compete with this process's ONNX Runtime threads
            if args.served_url:
                for batch in args.batch_sizes:
                    served[(model, batch)] = bench_served(
                        args.served_url, manifest.task, model, batch, batch * args.served_requests
                    )
                    LOGGER.info("%s served, %d clients: %s", model, batch, served[(model, batch)])
    sys.stdout.write((format_markdown(results, served, args.device) if args.markdown else format_table(results)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
