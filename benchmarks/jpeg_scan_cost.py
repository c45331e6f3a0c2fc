"""CPU of decoding a large progressive JPEG by its scans: the worst file ``max_jpeg_scans`` alone let through, and
the worst ``max_jpeg_scan_pixels`` lets through.

A progressive decode reads every scan over the whole image, and a scan can be a few bytes, so what a decode costs
is about pixels x scans, whatever the file's size. The files: a ``--width`` x ``--height`` radial gradient (PIL,
``progressive=True``; ``--subsampling 0`` is 4:4:4, where a chroma scan covers every pixel as the luma's does),
then one of its scans repeated (libjpeg warns about the bogus progression and decodes each one again). First a
probe: each scan of the file repeated ``--probe`` times, its extra CPU per copy (PIL path); the costliest scan
whose copies still fit ``max_upload_bytes`` is the one repeated in each file. The table: ``classify_input``
(256/224, the served preprocessing) of the plain file, of the file with that scan repeated up to
``max_jpeg_scans`` (the worst accepted before) and up to ``max_jpeg_scan_pixels`` / pixels scans (the worst
accepted now), through the JPEG fast path and through PIL, timed with ``time.thread_time`` (this thread's CPU),
files and paths interleaved, ``--rounds`` of each; lowest and median seconds::

    .venv/bin/python benchmarks/jpeg_scan_cost.py --rounds 3
"""

from __future__ import annotations

import argparse
import io
import os
import pathlib
import statistics
import sys
import time
from collections.abc import Callable

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from PIL import Image

from gateway.processing import images
from gateway.settings import Settings


def _scans(jpeg: bytes) -> list[bytes]:
    """Each scan of ``jpeg`` (its SOS segment and entropy-coded data), in order."""
    starts, i = [], jpeg.find(b"\xff\xda")
    while i >= 0:
        starts.append(i)
        i = jpeg.find(b"\xff\xda", i + 2)
    ends = [*starts[1:], jpeg.rindex(b"\xff\xd9")]
    return [jpeg[s:e] for s, e in zip(starts, ends, strict=True)]


def _repeated(jpeg: bytes, scan: int, extra: int) -> bytes:
    """``jpeg`` with its scan ``scan`` repeated ``extra`` more times before its end."""
    end = jpeg.rindex(b"\xff\xd9")
    return jpeg[:end] + _scans(jpeg)[scan] * extra + jpeg[end:]


def _cpu_s(function: Callable[[], object]) -> float:
    started = time.thread_time()
    function()
    return time.thread_time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=8000)
    parser.add_argument("--height", type=int, default=5000)
    parser.add_argument("--subsampling", type=int, default=0, help="PIL's: 0 is 4:4:4, 2 is 4:2:0; -1: grey")
    parser.add_argument("--probe", type=int, default=10, help="copies of each scan in the probe")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    s = Settings()
    pixels = args.width * args.height
    gradient = Image.radial_gradient("L").resize((args.width, args.height))
    buffer = io.BytesIO()
    if args.subsampling < 0:
        gradient.save(buffer, "JPEG", progressive=True)
    else:
        gradient.convert("RGB").save(buffer, "JPEG", progressive=True, subsampling=args.subsampling)
    plain = buffer.getvalue()
    scans = _scans(plain)

    def classify(data: bytes, fast: bool) -> Callable[[], object]:
        return lambda: images.classify_input(data, pixels, 0.0, 256, 224, True, fast, max_jpeg_scans=0)

    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{args.width}x{args.height} ({pixels / 1e6:g} MP), {len(plain)} bytes, {len(scans)} scans")
    print()
    print("| scan | bytes | extra CPU per copy, PIL path (ms) |")
    print("|---|---|---|")
    base = min(_cpu_s(classify(plain, False)) for _ in range(3))
    per_copy = []
    for index, scan in enumerate(scans):
        cost = (_cpu_s(classify(_repeated(plain, index, args.probe), False)) - base) / args.probe
        per_copy.append(cost)
        print(f"| {index} | {len(scan)} | {cost * 1e3:.1f} |", flush=True)
    after = min(s.max_jpeg_scans, s.max_jpeg_scan_pixels // pixels)

    def costliest(total: int) -> int:
        """The scan whose copies cost the most CPU while a file of ``total`` scans still fits an upload."""
        extra = total - len(scans)
        fits = [i for i in range(len(scans)) if len(plain) + len(scans[i]) * extra <= s.max_upload_bytes]
        return max(fits, key=lambda i: per_copy[i])

    before_scan, after_scan = costliest(s.max_jpeg_scans), costliest(after)
    candidates = {
        f"plain ({len(scans)} scans)": plain,
        f"scan {before_scan} repeated: {s.max_jpeg_scans} scans (worst accepted before)": _repeated(
            plain, before_scan, s.max_jpeg_scans - len(scans)
        ),
        f"scan {after_scan} repeated: {after} scans (worst accepted now)": _repeated(
            plain, after_scan, after - len(scans)
        ),
    }
    files = {}
    for name, data in candidates.items():  # which the gateway's limits accept now
        try:
            images.check_jpeg_scans(data, s.max_jpeg_scans, pixels, s.max_jpeg_scan_pixels)
            files[name] = data
        except images.PayloadTooLarge:
            files[f"{name}; now 413"] = data
    times: dict[tuple[str, bool], list[float]] = {(name, fast): [] for name in files for fast in (True, False)}
    for _ in range(args.rounds):
        for name, data in files.items():
            for fast in (True, False):
                times[name, fast].append(_cpu_s(classify(data, fast)))
    print()
    print(f"classify_input 256/224, {args.rounds} rounds; load average {os.getloadavg()[0]:.2f} at the end")
    print()
    print("| file | bytes | PIL min s | PIL median s | fast path min s | fast path median s |")
    print("|---|---|---|---|---|---|")
    for name, data in files.items():
        pil, fast = times[name, False], times[name, True]
        print(
            f"| {name} | {len(data)} | {min(pil):.2f} | {statistics.median(pil):.2f} | {min(fast):.2f} | "
            f"{statistics.median(fast):.2f} |"
        )


if __name__ == "__main__":
    main()
