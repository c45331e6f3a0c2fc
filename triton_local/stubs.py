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
import signal
import time

STUB_BINARY = "triton_python_backend_stub"


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


def _parse(pid: int, argv: tuple[str, ...]) -> Stub | None:
    """A stub's argv: ``<stub> <repo>/<model>/<version>/model.py <shm region> ... <instance> <device>``."""
    if len(argv) < 10 or not argv[0].endswith(STUB_BINARY):
        return None
    model = pathlib.Path(argv[1]).parent.parent.name
    return Stub(pid=pid, instance=argv[-2], model=model, region=argv[2], argv=argv)


def stubs(triton_pid: int, model: str | None = None) -> list[Stub]:
    """The live stubs among the children of ``triton_pid`` (only ``model``'s when given)."""
    found = []
    for pid in children(triton_pid):
        stub = _parse(pid, _argv(pid))  # a zombie's cmdline is empty: not listed
        if stub is not None and (model is None or stub.model == model):
            found.append(stub)
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
