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
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException

from gateway import deadline
from gateway.errors import UpstreamTimeout

LOGGER = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Region:
    """Args:
    name: the region's name in Triton.
    key: the POSIX shared-memory key (``/name``).
    handle: tritonclient's handle of the mapping in this process.
    nbytes: the region's size.
    tensor: what the region is for (``<model>/<tensor>``): regions are reused for that tensor only.
    """

    name: str
    key: str
    handle: Any
    nbytes: int
    tensor: str

    def array(self, dtype: Any, shape: Sequence[int]) -> np.ndarray:
        """A writable view of the region's first bytes as an array (valid while the region is held)."""
        return shm.get_contents_as_numpy(self.handle, np.dtype(dtype), list(shape))  # type: ignore[no-any-return]


def region_prefix(pid: int) -> str:
    """How the names of process ``pid``'s regions begin (a supervisor finds a dead worker's by it)."""
    return f"gw-{pid}-"


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
            region = Region(name, f"/{name}", handle, nbytes, tensor)
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
