"""A memory budget for image decoding, shared by every image request of one app.

A per-image pixel limit bounds one request; it does not bound ten of them decoding at once. Each
image request reserves its decoding cost (``ImageHeader.decode_bytes``: width x height x bytes a
pixel by mode, read from the image header before any pixel is decoded) while it is preprocessed.
Reservations are granted first come, first served; a request that cannot be granted within ``wait_s`` gets 503
``overloaded`` with ``Retry-After``, one that could never fit gets 413.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
from collections.abc import AsyncIterator

from gateway.errors import Overloaded, PayloadTooLarge


@dataclasses.dataclass
class _Waiter:
    nbytes: int
    granted: asyncio.Future[None]


class ImageBudget:
    """Args:
    capacity_bytes: the most decoding memory reserved at once (0: unbounded).
    wait_s: how long a request may wait for its reservation before 503.
    retry_after_s: the ``Retry-After`` given with that 503.
    """

    def __init__(self, capacity_bytes: int, wait_s: float, retry_after_s: int = 1) -> None:
        self.capacity_bytes = capacity_bytes
        self.wait_s = wait_s
        self.retry_after_s = retry_after_s
        self.reserved_bytes = 0
        self._waiters: collections.deque[_Waiter] = collections.deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    @contextlib.asynccontextmanager
    async def reserve(self, nbytes: int) -> AsyncIterator[None]:
        """Hold ``nbytes`` of the budget for the duration of the ``async with`` block."""
        if not self.capacity_bytes:
            yield
            return
        if nbytes > self.capacity_bytes:
            raise PayloadTooLarge(
                f"decoding this image needs about {nbytes} bytes; the gateway's image budget is "
                f"{self.capacity_bytes} bytes"
            )
        await self._acquire(nbytes)
        try:
            yield
        finally:
            self._release(nbytes)

    async def _acquire(self, nbytes: int) -> None:
        # Single event loop: no lock needed. FIFO: nobody overtakes a waiter (no starvation of big images).
        if not self._waiters and self.reserved_bytes + nbytes <= self.capacity_bytes:
            self.reserved_bytes += nbytes
            return
        waiter = _Waiter(nbytes, asyncio.get_running_loop().create_future())
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(self.wait_s):
                await waiter.granted
        except BaseException as exc:
            if waiter.granted.done() and not waiter.granted.cancelled():
                self._release(nbytes)  # granted just as the wait ended: give it back
            else:
                waiter.granted.cancel()
                self._waiters.remove(waiter)
                self._grant()  # a waiter behind this one may fit now
            if isinstance(exc, TimeoutError):
                raise Overloaded(
                    f"the image decoding budget ({self.capacity_bytes} bytes) stayed busy for {self.wait_s} s; retry",
                    retry_after_s=self.retry_after_s,
                ) from None
            raise

    def _release(self, nbytes: int) -> None:
        self.reserved_bytes -= nbytes
        self._grant()

    def _grant(self) -> None:
        while self._waiters and self.reserved_bytes + self._waiters[0].nbytes <= self.capacity_bytes:
            waiter = self._waiters.popleft()
            self.reserved_bytes += waiter.nbytes
            waiter.granted.set_result(None)
