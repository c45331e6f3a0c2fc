"""System shared memory between the gateway and Triton, when they share a host.

A tensor sent over gRPC is copied into the request, serialised, received and parsed by Triton; one in
a POSIX shared-memory region that both processes mapped is not. The image models' input pays for it
(:meth:`gateway.tasks.base.ImageTask.placement`): a detector's (640x640x3 bytes, 1.2 MB) is letterboxed
straight into a region, a classifier's crop (224x224x3, 150 kB) copied into one, and the request only
names it (docs/benchmarks.md, "What sets the gateway's CPU": less CPU in the gateway and in Triton per
``/detect``, and per ``/classify`` a little). Outputs (``detections``, 72 kB; ``logits``) come back over
gRPC: through shared memory the detector's measured no cheaper.

The Triton client owns the one :class:`RegionPool` of the process: every region of every model
(created with the client, so two first requests cannot create two pools). Regions are created and
registered with Triton on first use, under the pool's lock, named ``gw-<pid>-<random>-<n>`` (unique
per worker process); each in-flight request borrows a region and gives it back; when all ``size``
regions of a tensor are busy (or Triton refuses to register one) the request simply takes the
ordinary gRPC path. :meth:`RegionPool.close` unregisters and unmaps them all.

Only for deployments where both processes see the same ``/dev/shm`` (one machine, or one pod with
a shared memory volume): set ``GATEWAY_TRITON_SHARED_MEMORY=true``.

A process that dies without closing its pool (SIGKILL, the OOM killer, a container restarted on a
shared ``/dev/shm``) leaves its regions behind: their ``/dev/shm`` names, and Triton's registration and
mapping of each, for as long as Triton runs. Liveness is told by a lock, not a pid (pids mean nothing
across pid namespaces and are reused): while a process owns a region it holds a shared ``flock`` on the
region's ``/dev/shm`` file, which the kernel drops when the process dies, however it dies.
:func:`sweep_stale` (run by :class:`RegionSweeper` at start-up and every
``GATEWAY_TRITON_SHARED_MEMORY_SWEEP_S``) takes an exclusive lock on each ``gw-*`` file no process holds,
unregisters it from Triton and unlinks it. Where the dead process's names are already gone (Python's
resource tracker, which outlives it, unlinks them) but Triton still maps them, the sweep unregisters
Triton's ``gw-*`` regions that have no name left, once this process has registered one of its own
(proof that it sees Triton's ``/dev/shm``). A gateway worker's supervisor also releases a dead worker's
regions at once (:func:`gateway.workers.release_regions`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import logging
import os
import pathlib
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import numpy as np
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException

from gateway import deadline
from gateway.errors import UpstreamTimeout

LOGGER = logging.getLogger(__name__)

SHM_DIR = pathlib.Path("/dev/shm")
NAME_PREFIX = "gw-"
# A region file younger than this is never swept: its creator opens it and only then takes its lock.
MIN_AGE_S = 5.0


@dataclasses.dataclass(frozen=True)
class Region:
    """Args:
    name: the region's name in Triton.
    key: the POSIX shared-memory key (``/name``).
    handle: tritonclient's handle of the mapping in this process.
    nbytes: the region's size.
    tensor: what the region is for (``<model>/<tensor>``): regions are reused for that tensor only.
    lock_fd: the descriptor holding the shared lock that marks the region live (:func:`hold`); -1: none.
    """

    name: str
    key: str
    handle: Any
    nbytes: int
    tensor: str
    lock_fd: int = -1

    def array(self, dtype: Any, shape: Sequence[int]) -> np.ndarray:
        """A writable view of the region's first bytes as an array (valid while the region is held)."""
        return shm.get_contents_as_numpy(self.handle, np.dtype(dtype), list(shape))  # type: ignore[no-any-return]


def region_prefix(pid: int) -> str:
    """How the names of process ``pid``'s regions begin (a supervisor finds a dead worker's by it)."""
    return f"{NAME_PREFIX}{pid}-"


def hold(name: str, directory: pathlib.Path = SHM_DIR) -> int:
    """Take a shared lock on region ``name``'s file for as long as this process owns the region, and
    return the descriptor that holds it (-1 where the file is not there to lock, e.g. not Linux)."""
    try:
        fd = os.open(directory / name, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return -1
    fcntl.flock(fd, fcntl.LOCK_SH)
    return fd


def claim_stale(directory: pathlib.Path = SHM_DIR, min_age_s: float = MIN_AGE_S) -> list[tuple[str, int]]:
    """The ``gw-*`` region files no live process holds, each with a descriptor holding its exclusive
    lock (so no other sweeper takes it meanwhile; close it when done). Files younger than
    ``min_age_s`` are left alone: a creator opens its region before it can lock it."""
    claimed = []
    now = time.time()
    for path in sorted(directory.glob(f"{NAME_PREFIX}*")):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:  # gone meanwhile
            continue
        try:
            if now - os.fstat(fd).st_ctime < min_age_s:
                raise BlockingIOError
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError: its owner is alive
        except OSError:
            os.close(fd)
            continue
        claimed.append((path.name, fd))
    return claimed


async def sweep_stale(
    client: Any,
    timeout_s: float,
    directory: pathlib.Path = SHM_DIR,
    min_age_s: float = MIN_AGE_S,
    orphans: bool = False,
) -> list[str]:
    """Unregister from Triton and unlink every region whose owner died (:func:`claim_stale`); returns
    their names. A region Triton cannot unregister now (unreachable, too slow) is kept for the next sweep:
    unlinking its name would leave Triton's mapping with nothing left to find it by.

    ``orphans``: also unregister the ``gw-*`` regions Triton holds whose name is gone from ``directory``
    (a dead process's names unlinked by multiprocessing's resource tracker, which outlives it: Triton
    still maps them). Only for a caller that has registered a region of its own, which proves that
    Triton and it share ``directory``: a gateway that does not would take every region for an orphan.
    """
    swept = []
    if orphans:
        # Triton's list first, the names after: a region registered meanwhile is then never missed
        # (its name exists before its registration), and one closed meanwhile is unregistered twice.
        try:
            status = await client.get_system_shared_memory_status(as_json=True, client_timeout=timeout_s)
        except InferenceServerException as exc:
            LOGGER.warning("cannot read Triton's shared-memory regions: %s", exc.message())
            status = {}
        registered = [name for name in status.get("regions", {}) if name.startswith(NAME_PREFIX)]
        for name in registered:
            if (directory / name).exists():
                continue
            try:
                await client.unregister_system_shared_memory(name, client_timeout=timeout_s)
            except InferenceServerException as exc:
                LOGGER.warning("orphaned shared-memory region %s kept for the next sweep: %s", name, exc.message())
                continue
            swept.append(name)
    for name, fd in claim_stale(directory, min_age_s):
        try:
            try:
                await client.unregister_system_shared_memory(name, client_timeout=timeout_s)
            except InferenceServerException as exc:
                LOGGER.warning("stale shared-memory region %s kept for the next sweep: %s", name, exc.message())
                continue
            with contextlib.suppress(FileNotFoundError):
                (directory / name).unlink()
            swept.append(name)
        finally:
            os.close(fd)
    if swept:
        LOGGER.warning("swept %d shared-memory regions of gateway processes that died: %s", len(swept), swept)
    return swept


class RegionSweeper:
    """Runs ``sweep`` (:func:`sweep_stale` through the Triton client) at start-up and then every
    ``interval_s`` (0: never), counting what it swept in ``swept`` (a metric's ``inc``).

    Args:
        sweep: one sweep; returns the names swept.
        interval_s: seconds between sweeps; 0 turns the sweeper off.
        swept: called with the number of regions each sweep removed.
    """

    def __init__(
        self, sweep: Callable[[], Awaitable[list[str]]], interval_s: float, swept: Callable[[int], None]
    ) -> None:
        self.sweep = sweep
        self.interval_s = interval_s
        self.swept = swept
        self._task: asyncio.Task[None] | None = None

    async def _loop(self) -> None:
        while True:
            try:
                self.swept(len(await self.sweep()))
            except Exception:  # a failed sweep must not end sweeping
                LOGGER.exception("shared-memory sweep failed")
            await asyncio.sleep(self.interval_s)

    def start(self) -> None:
        if self.interval_s > 0 and self._task is None:
            self._task = asyncio.create_task(self._loop(), name="shared-memory-sweeper")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


class RegionPool:
    """Every shared-memory region of one gateway process, created on first use.

    Args:
        size: most regions per tensor (= most concurrent requests served through shared memory).
        timeout_s: deadline of one (un)registration call to Triton, cut to what is left of the
            request's deadline (:mod:`gateway.deadline`); a frozen Triton never holds a request longer.
    """

    def __init__(self, size: int, timeout_s: float = 30.0) -> None:
        self.size = size
        self.timeout_s = timeout_s
        self.prefix = f"{region_prefix(os.getpid())}{uuid.uuid4().hex[:8]}"
        self._all: list[Region] = []
        self._count: dict[str, int] = {}
        self._free: dict[str, list[Region]] = {}
        self._lock = asyncio.Lock()
        # Set once Triton has registered a region of this pool: Triton and this process share /dev/shm.
        self.shares_dev_shm = False

    @property
    def regions(self) -> list[Region]:
        return list(self._all)

    async def acquire(self, client: Any, tensor: str, nbytes: int) -> Region | None:
        """A free region of at least ``nbytes`` for ``tensor``, registered with Triton; None when all
        ``size`` of them are busy or Triton cannot register one now (the call then takes gRPC).

        Raises :class:`UpstreamTimeout` when Triton does not answer the registration in time."""
        free = self._free.get(tensor)
        if free:
            region = free.pop()
            if region.nbytes >= nbytes:
                return region
            free.append(region)
            return None
        async with self._lock:  # two first requests: one creates, the other waits and counts it
            if self._count.get(tensor, 0) >= self.size:
                return None
            name = f"{self.prefix}-{len(self._all)}"
            handle = shm.create_shared_memory_region(name, f"/{name}", nbytes)
            region = Region(name, f"/{name}", handle, nbytes, tensor, hold(name))
            try:
                await client.register_system_shared_memory(
                    region.name, region.key, region.nbytes, client_timeout=self._timeout()
                )
            except (InferenceServerException, UpstreamTimeout) as exc:
                _destroy(region)
                if isinstance(exc, UpstreamTimeout) or exc.status() == "StatusCode.DEADLINE_EXCEEDED":
                    raise UpstreamTimeout("registering shared memory with Triton did not finish in time") from exc
                LOGGER.warning("cannot register shared memory with Triton (%s); using gRPC", exc.message())
                return None
            except asyncio.CancelledError:  # Triton may have registered it: pooled, so that close() unregisters it
                self._add(region)
                self.release(region)
                raise
            self._add(region)
            self.shares_dev_shm = True
            return region

    def _timeout(self) -> float:
        left = deadline.remaining()
        timeout = self.timeout_s if left is None else min(self.timeout_s, left)
        if timeout <= 0:
            raise UpstreamTimeout("the request's deadline passed before shared memory was registered")
        return timeout

    def _add(self, region: Region) -> None:
        self._all.append(region)
        self._count[region.tensor] = self._count.get(region.tensor, 0) + 1

    def release(self, region: Region) -> None:
        self._free.setdefault(region.tensor, []).append(region)

    async def reregister(self, client: Any) -> bool:
        """Register every region again (after a Triton restart forgot them); False if Triton refuses."""
        LOGGER.warning("re-registering %d shared-memory regions with Triton", len(self._all))
        try:
            for region in self._all:
                await client.register_system_shared_memory(
                    region.name, region.key, region.nbytes, client_timeout=self._timeout()
                )
        except (InferenceServerException, UpstreamTimeout) as exc:
            LOGGER.warning("re-registering shared memory failed: %s", exc)
            return False
        return True

    async def close(self, client: Any) -> None:
        """Unregister (best effort: Triton may be gone) and unmap every region."""
        async with self._lock:
            for region in self._all:
                try:
                    await client.unregister_system_shared_memory(region.name, client_timeout=self.timeout_s)
                except InferenceServerException as exc:  # shutting down: the mapping is removed below regardless
                    LOGGER.info("could not unregister %s: %s", region.name, exc)
                _destroy(region)
            self._all.clear()
            self._count.clear()
            self._free.clear()


def _destroy(region: Region) -> None:
    try:
        shm.destroy_shared_memory_region(region.handle)
    except BufferError:  # an array still views the mapping: unlink the name, the mapping goes with the array
        LOGGER.info("%s is still mapped by an array; unlinking its name", region.name)
        region.handle._mpsm_handle.unlink()
    finally:
        if region.lock_fd >= 0:  # after the unlink: a sweeper never sees the name unlocked
            os.close(region.lock_fd)
