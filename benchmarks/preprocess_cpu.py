"""CPU of the image preprocessing per request, JPEG fast path on and off (``GATEWAY_FAST_JPEG``), in one process.

Hot loops of what a request runs (``read_header`` on the event loop; ``classify_input`` or ``detect_input``
in a worker thread) on the load generator's 512x512 JPEG q90, timed with ``time.thread_time`` (this
thread's CPU, not the wall clock). The two paths alternate in short chunks, ``--rounds`` of each, so a
neighbour's load hits both alike; the table gives each path's lowest and median microseconds per call,
and the median of the per-round fast/PIL ratios. glibc's malloc thresholds are the gateway's
(``GATEWAY_MALLOC_*``)::

    .venv/bin/python benchmarks/preprocess_cpu.py --rounds 30
"""

from __future__ import annotations

import argparse
import functools
import os
import pathlib
import statistics
import sys
import time
from collections.abc import Callable

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from loadgen import jpeg_512

from gateway._malloc import tune_malloc
from gateway.processing import images
from gateway.settings import Settings


def _per_call_us(function: Callable[[], object], calls: int) -> float:
    started = time.thread_time()
    for _ in range(calls):
        function()
    return (time.thread_time() - started) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=30, help="chunks of each path, alternating")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the calls per chunk")
    args = parser.parse_args()
    s = Settings()
    tune_malloc(s.malloc_mmap_threshold_bytes, s.malloc_trim_threshold_bytes)  # as the gateway process does
    data = jpeg_512()
    limits = (data, s.max_image_pixels, s.max_image_aspect_ratio)
    cases: dict[str, tuple[Callable[[bool], object], int]] = {
        "read_header": (lambda fast: images.read_header(*limits, fast), 1000),
        "classify_input 256/224": (lambda fast: images.classify_input(*limits, 256, 224, True, fast), 40),
        "detect_input 640 (yolov5n)": (lambda fast: images.detect_input(*limits, 640, fast_jpeg=fast), 20),
        "detect_input 416 (NanoDet)": (lambda fast: images.detect_input(*limits, 416, fast_jpeg=fast), 40),
    }
    load = os.getloadavg()
    print(f"{len(data)}-byte 512x512 JPEG q90, {args.rounds} rounds; load average {load[0]:.2f} {load[1]:.2f}")
    print()
    print("| call | PIL min µs | PIL median µs | fast min µs | fast median µs | fast/PIL (median of rounds) |")
    print("|---|---|---|---|---|---|")
    for name, (call, calls) in cases.items():
        calls = max(1, int(calls * args.scale))
        for fast in (False, True, False, True):
            call(fast)  # warm up both
        times: dict[bool, list[float]] = {False: [], True: []}
        for round_ in range(args.rounds):
            for fast in (False, True) if round_ % 2 == 0 else (True, False):
                times[fast].append(_per_call_us(functools.partial(call, fast), calls))
        ratio = statistics.median(f / p for p, f in zip(times[False], times[True]))
        print(
            f"| {name} | {min(times[False]):.1f} | {statistics.median(times[False]):.1f} | "
            f"{min(times[True]):.1f} | {statistics.median(times[True]):.1f} | {ratio:.3f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
