"""The Python-backend stub processes of one tritonserver, found through ``/proc`` (Linux).

Each model instance runs in a ``triton_python_backend_stub`` child of tritonserver whose argv names
the model file, a ``/dev/shm`` region and the instance (``<model>_<group>_<index>``). Fault tests and
the soak benchmark use this to kill one model's stub, and to clean up after a SIGKILLed
tritonserver: a stub busy at that moment can outlive its parent (PPID 1) and keep its region.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import re
import signal
import time

STUB_BINARY = "triton_python_backend_stub"
_REGION_PREFIX = "triton_python_backend_shm_region_"
_INSTANCE = re.compile(r"^(?P<model>.+)_\d+_\d+$")


@dataclasses.dataclass(frozen=True)
class Stub:
    """Args:
    pid: the stub's process id.
    instance: the model instance it serves, ``<model>_<group>_<index>``.
    model: the model name.
    region: its ``/dev/shm`` region name ('' when not in argv).
    argv: its full command line (to recognise the same process later).
    """

    pid: int
    instance: str
    model: str
    region: str
    argv: tuple[str, ...]


def children(pid: int) -> list[int]:
    """Direct children of ``pid``."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in pathlib.Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError, ValueError):
                found += [int(c) for c in (task / "children").read_text().split()]
    return found


def _argv(pid: int) -> tuple[str, ...]:
    try:
        return tuple(pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1])
    except OSError:
        return ()


def stubs(triton_pid: int, model: str | None = None) -> list[Stub]:
    """The stubs among the children of ``triton_pid`` (only ``model``'s when given)."""
    found = []
    for pid in children(triton_pid):
        argv = _argv(pid)
        if not argv or not argv[0].endswith(STUB_BINARY):
            continue
        instance = next((a for a in argv[1:] if _INSTANCE.match(a) and not a.startswith(_REGION_PREFIX)), "")
        match = _INSTANCE.match(instance)
        if match is None or (model is not None and match["model"] != model):
            continue
        region = next((a for a in argv if a.startswith(_REGION_PREFIX)), "")
        found.append(Stub(pid, instance, match["model"], region, argv))
    return found


def is_running(stub: Stub) -> bool:
    """``stub.pid`` still runs the same command line (not exited or a zombie, and not a reused PID)."""
    return _argv(stub.pid) == stub.argv


def reap(stale: list[Stub], timeout_s: float = 10.0) -> list[Stub]:
    """After their tritonserver died: wait (bounded) for ``stale`` stubs to exit, SIGKILL survivors,
    and unlink the ``/dev/shm`` regions they leave. Returns the stubs that had to be killed.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(is_running(s) for s in stale):
        time.sleep(0.1)
    survivors = [s for s in stale if is_running(s)]
    for stub in survivors:
        with contextlib.suppress(ProcessLookupError):
            os.kill(stub.pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(is_running(s) for s in survivors):
        time.sleep(0.1)
    for stub in stale:
        if stub.region:
            with contextlib.suppress(FileNotFoundError):
                (pathlib.Path("/dev/shm") / stub.region).unlink()
    return survivors
