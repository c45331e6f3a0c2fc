"""Stopping a child process: a signal, a bounded wait, then SIGKILL.

The one place this is written (``TritonServer.stop``, the benchmarks' and the tests' gateways and
helper servers all use it). It lives here, with no dependency beyond the standard library, because
``triton_local`` is what the gateway's tests, the benchmarks and the local tools all import.
"""

from __future__ import annotations

import logging
import signal
import subprocess
from typing import Any

LOGGER = logging.getLogger(__name__)


def stop_process(
    process: subprocess.Popen[Any], timeout_s: float, stop_signal: signal.Signals = signal.SIGINT
) -> int | None:
    """Send ``stop_signal`` to ``process``, wait up to ``timeout_s`` for it to exit, else SIGKILL it.

    Nothing is sent to a process that has already exited (its exit status is returned). After the
    SIGKILL the process is reaped, waiting up to ``timeout_s`` again (``subprocess.TimeoutExpired``
    only for a process stuck in the kernel, which not even SIGKILL ends at once).

    Args:
        process: a child of this process.
        timeout_s: how long it may take to exit after ``stop_signal``.
        stop_signal: what asks it to stop: SIGINT (Ctrl-C: tritonserver, the gateway under uvicorn)
            or SIGTERM (``Popen.terminate``).

    Returns:
        its exit status when it exited by itself (before or after the signal); None when it had to
        be killed (``process.returncode`` is then ``-SIGKILL``).
    """
    if process.poll() is not None:
        return process.returncode
    process.send_signal(stop_signal)
    try:
        return process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        LOGGER.warning("pid %d ignored %s for %gs; killing it", process.pid, stop_signal.name, timeout_s)
        process.kill()
        process.wait(timeout=timeout_s)
        return None
