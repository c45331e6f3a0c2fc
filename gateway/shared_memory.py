"""System shared memory for one Triton output, when the gateway and Triton share a host.

Sent back over gRPC an output is serialised, copied and parsed; written by Triton straight into a
POSIX shared-memory region the gateway mapped, it is not. That paid off for YOLOv5n's former 8.5 MB
output; the detectors' ``detections`` are 72 kB now, where it measured no faster than gRPC (README,
"Detector outputs"). Each
in-flight request borrows one region from a pool (regions are created and registered with Triton
on first use); when all are busy the request simply takes the ordinary gRPC path.

Only for deployments where both processes see the same ``/dev/shm`` (one machine, or one pod
with a shared memory volume): set ``GATEWAY_TRITON_SHARED_MEMORY=true``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import uuid
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
    """

    name: str
    key: str
    handle: Any
    nbytes: int


class OutputRegions:
    """A pool of shared-memory regions for one output of one model.

    Args:
        output: the output tensor name.
        nbytes: bytes of that output for one request.
        size: most regions (= most concurrent requests served through shared memory).
        timeout_s: deadline of one (un)registration call to Triton, cut to what is left of the
            request's deadline (:mod:`gateway.deadline`); a frozen Triton never holds a request longer.
    """

    def __init__(self, output: str, nbytes: int, size: int, timeout_s: float = 30.0) -> None:
        self.output = output
        self.nbytes = nbytes
        self.size = size
        self.timeout_s = timeout_s
        self._prefix = f"gw-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._all: list[Region] = []
        self._free: list[Region] = []
        self._lock = asyncio.Lock()

    async def acquire(self, client: Any) -> Region | None:
        """A free region, registered with Triton; None when all ``size`` regions are busy or
        Triton cannot register one now (the call then takes the gRPC path and its error handling).

        Raises :class:`UpstreamTimeout` when Triton does not answer the registration in time."""
        if self._free:
            return self._free.pop()
        async with self._lock:
            if len(self._all) >= self.size:
                return None
            name = f"{self._prefix}-{len(self._all)}"
            handle = shm.create_shared_memory_region(name, f"/{name}", self.nbytes)
            region = Region(name, f"/{name}", handle, self.nbytes)
            try:
                await client.register_system_shared_memory(
                    region.name, region.key, region.nbytes, client_timeout=self._timeout()
                )
            except (InferenceServerException, UpstreamTimeout) as exc:
                shm.destroy_shared_memory_region(region.handle)
                if isinstance(exc, UpstreamTimeout) or exc.status() == "StatusCode.DEADLINE_EXCEEDED":
                    raise UpstreamTimeout("registering shared memory with Triton did not finish in time") from exc
                LOGGER.warning("cannot register shared memory with Triton (%s); using gRPC", exc.message())
                return None
            self._all.append(region)
            return region

    def _timeout(self) -> float:
        left = deadline.remaining()
        timeout = self.timeout_s if left is None else min(self.timeout_s, left)
        if timeout <= 0:
            raise UpstreamTimeout("the request's deadline passed before shared memory was registered")
        return timeout

    def release(self, region: Region) -> None:
        self._free.append(region)

    @staticmethod
    def read(region: Region, dtype: np.dtype[Any], shape: list[int]) -> np.ndarray:
        """A copy of the output held in ``region`` (the region goes back to the pool afterwards)."""
        return np.array(shm.get_contents_as_numpy(region.handle, dtype, shape), copy=True)

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
        for region in self._all:
            try:
                await client.unregister_system_shared_memory(region.name, client_timeout=self.timeout_s)
            except InferenceServerException as exc:  # shutting down: the mapping is removed below regardless
                LOGGER.info("could not unregister %s: %s", region.name, exc)
            shm.destroy_shared_memory_region(region.handle)
        self._all.clear()
        self._free.clear()
