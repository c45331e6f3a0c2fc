"""glibc ``malloc`` thresholds for the gateway process (``mallopt``).

A request allocates and frees buffers of 150 kB to a few MB (decoded images, the letterboxed
canvas, resize outputs, protobuf payloads). glibc serves blocks over ``M_MMAP_THRESHOLD`` (128 kB
until a freed block raises it) with a fresh ``mmap`` and returns freed memory above
``M_TRIM_THRESHOLD`` to the kernel, so each request page-faults its buffers in again: measured here,
``detect_input`` of a 512x512 JPEG took 5.1 ms of CPU with the defaults and 2.4-3.2 ms with the
thresholds below. Raising both keeps those pages in the process instead; the memory it may keep is
about ``trim_threshold`` per malloc arena (one per thread that allocates, at most 8 per core), and
blocks over ``mmap_threshold`` (a decoded 12-megapixel photo) still go straight back to the kernel.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

LOGGER = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # <malloc.h>
M_MMAP_THRESHOLD = -3


def tune_malloc(mmap_threshold: int | None, trim_threshold: int | None) -> bool:
    """Set glibc's thresholds for this process (None or 0: leave that one as it is).

    Returns whether they were set: False where the C library is not glibc (musl, macOS) or refuses.
    """
    wanted = [
        (option, value)
        for option, value in ((M_MMAP_THRESHOLD, mmap_threshold), (M_TRIM_THRESHOLD, trim_threshold))
        if value
    ]
    if not wanted:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        LOGGER.info("malloc thresholds left as they are: no glibc mallopt here")
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    done = all(mallopt(option, value) == 1 for option, value in wanted)
    if not done:
        LOGGER.warning("mallopt refused the malloc thresholds %s", wanted)
    return done
