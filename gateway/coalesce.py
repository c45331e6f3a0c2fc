"""Client-side coalescing: concurrent inferences on one model sent to Triton as one batched call.

Every gRPC call costs CPU on both tiers whatever its batch (about 0.5 ms in the gateway's client, more
in tritonserver and the Python-backend stub: docs/benchmarks.md). A request goes out at once while
fewer than ``inflight`` calls of its model are in flight, so at low load nothing waits and nothing
changes. Otherwise it waits; when one of those calls returns, the waiting requests that fit one call
(same outputs, same per-row shapes and dtypes, at most ``max_rows`` rows in all, in arrival order) go
out together, their inputs concatenated along the batch dimension, and each gets its own rows of the
outputs back. Triton's dynamic batcher would have put them in one engine call anyway (what is saved is
the per-call work on the way there), so the served results are the ones a lone call gets.

- **Deadlines:** a merged call may run until the latest of its members' deadlines; each member still
  ends at its own (the route's deadline cancels it; its rows are dropped).
- **Failure isolation:** when a merged call fails in a way one member may have caused
  (:class:`~gateway.errors.InferenceFailed` while the model can still serve), the failure is not charged
  to all: each member then sends its own call. Outages, overload and timeouts reach every member.
- **Shared memory:** members whose input lies in a region are copied into one region of the client's
  pool sized for ``max_rows`` rows (a memcpy instead of megabytes through gRPC); none free: gRPC.
- **Cancellation:** a waiting member that is cancelled leaves the queue; a merged call whose members
  are all gone is cancelled. The queue is bounded by the requests the gateway admits (``max_inflight``).
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import dataclasses
import enum
import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

import numpy as np

from gateway import deadline
from gateway.errors import InferenceFailed, TritonUnavailable
from gateway.health import cannot_serve
from gateway.request_id import current as request_id_var
from gateway.shared_memory import Region

LOGGER = logging.getLogger(__name__)

Arrays = dict[str, np.ndarray]


class Sender(Protocol):
    """What the coalescer sends through: :class:`gateway.triton.TritonClient`."""

    async def infer_one(
        self,
        model: str,
        inputs: Mapping[str, np.ndarray],
        outputs: Sequence[str],
        placed: Mapping[str, Region] | None = None,
    ) -> Arrays: ...

    async def region(self, tensor: str, nbytes: int) -> Region | None: ...

    def release(self, region: Region) -> None: ...


class _Turn(enum.Enum):
    """A waiter's answer that is not rows: send your own call now."""

    GO = "alone in the queue: its in-flight slot is held for it"
    RETRY = "the merged call failed: it counts its own slot"


_GO, _RETRY = _Turn.GO, _Turn.RETRY


def _signature(inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> tuple[object, ...]:
    """What must match for two requests to share a call: outputs, and each input's dtype and row shape."""
    return tuple(outputs), tuple((name, a.dtype.str, a.shape[1:]) for name, a in inputs.items())


@dataclasses.dataclass(eq=False)
class _Waiter:
    """Args:
    inputs, outputs, placed: the request's call (``placed``: inputs lying in borrowed regions).
    rows: its batch rows.
    signature: :func:`_signature`.
    future: set to its rows of the outputs, an error, or a :class:`_Turn`.
    deadline: the request's deadline (monotonic), None: none.
    request_id: the request's id (a merged call carries all of them).
    """

    inputs: Mapping[str, np.ndarray]
    outputs: Sequence[str]
    placed: Mapping[str, Region] | None
    rows: int
    signature: tuple[object, ...]
    future: asyncio.Future[Arrays | _Turn]
    deadline: float | None
    request_id: str


@dataclasses.dataclass
class _ModelQueue:
    """One model's calls in flight and requests waiting for one of them to return."""

    inflight: int = 0
    waiting: collections.deque[_Waiter] = dataclasses.field(default_factory=collections.deque)


class Coalescer:
    """Merges concurrent inferences per model (module docstring).

    Args:
        sender: the Triton client that sends each call.
        inflight: calls per model in flight before further requests wait to be merged (>= 1).
        max_rows: most rows of a merged call (also never more than the model's ``max_batch_size``).
        on_call: called with (model, requests, rows) for every call sent (metrics); None: nothing.
    """

    def __init__(
        self,
        sender: Sender,
        inflight: int,
        max_rows: int,
        on_call: Callable[[str, int, int], None] | None = None,
    ) -> None:
        if inflight < 1 or max_rows < 1:
            raise ValueError("inflight and max_rows must be at least 1")
        self.sender = sender
        self.inflight = inflight
        self.max_rows = max_rows
        self.on_call = on_call
        self._models: dict[str, _ModelQueue] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    async def infer(
        self,
        model: str,
        inputs: Mapping[str, np.ndarray],
        outputs: Sequence[str],
        placed: Mapping[str, Region] | None,
        max_batch_size: int,
    ) -> Arrays:
        """The outputs of ``inputs`` (rows along axis 0), sent alone or in one call with others."""
        queue = self._models.setdefault(model, _ModelQueue())
        limit = min(self.max_rows, max_batch_size)
        rows = len(next(iter(inputs.values())))
        if rows >= limit or (queue.inflight < self.inflight and not queue.waiting):
            queue.inflight += 1
            return await self._alone(model, queue, limit, inputs, outputs, placed, rows)
        waiter = _Waiter(
            inputs,
            outputs,
            placed,
            rows,
            _signature(inputs, outputs),
            asyncio.get_running_loop().create_future(),
            deadline.current.get(),
            request_id_var.get(),
        )
        queue.waiting.append(waiter)
        try:
            answer = await waiter.future
        except asyncio.CancelledError:
            if waiter in queue.waiting:
                queue.waiting.remove(waiter)
            elif waiter.future.done() and not waiter.future.cancelled() and waiter.future.result() is _GO:
                self._finished(model, queue, limit)  # its turn came as it was cancelled: give the slot back
            raise
        if isinstance(answer, _Turn):  # the slot is held for it (_GO), or counted anew (_RETRY)
            if answer is _RETRY:
                queue.inflight += 1
            return await self._alone(model, queue, limit, inputs, outputs, placed, rows)
        return answer

    async def _alone(
        self,
        model: str,
        queue: _ModelQueue,
        limit: int,
        inputs: Mapping[str, np.ndarray],
        outputs: Sequence[str],
        placed: Mapping[str, Region] | None,
        rows: int,
    ) -> Arrays:
        """One request's own call, in its own context (deadline, request id); its slot is counted."""
        try:
            if self.on_call is not None:
                self.on_call(model, 1, rows)
            return await self.sender.infer_one(model, inputs, outputs, placed)
        finally:
            self._finished(model, queue, limit)

    def _finished(self, model: str, queue: _ModelQueue, limit: int) -> None:
        """A call of ``model`` returned: start calls for the waiting requests while slots are free."""
        queue.inflight -= 1
        if self._closed:  # nothing new goes out through a closing client
            _fail(list(queue.waiting), TritonUnavailable("the gateway is shutting down; retry"))
            queue.waiting.clear()
        while queue.waiting and queue.inflight < self.inflight:
            batch = self._take(queue.waiting, limit)
            queue.inflight += 1
            if len(batch) == 1:  # nothing to merge with: the request sends its own call, in its own context
                batch[0].future.set_result(_GO)
                continue
            task = asyncio.get_running_loop().create_task(
                self._merged(model, limit, batch), context=contextvars.Context()
            )
            self._tasks.add(task)
            # Accounting in a done callback, not in the coroutine: a task cancelled before its first step
            # never runs its body, and its slot would be lost (every later request waiting for good).
            task.add_done_callback(functools.partial(self._merged_done, model, queue, limit, batch))
            abandoned = functools.partial(_cancel_if_abandoned, batch, task)
            for waiter in batch:  # every member gone: so is the call
                waiter.future.add_done_callback(abandoned)

    @staticmethod
    def _take(waiting: collections.deque[_Waiter], limit: int) -> list[_Waiter]:
        """The first waiter and, in arrival order, every later one that fits the same call."""
        first = waiting.popleft()
        batch, rows, kept = [first], first.rows, []
        while waiting:
            waiter = waiting.popleft()
            if waiter.signature == first.signature and rows + waiter.rows <= limit:
                batch.append(waiter)
                rows += waiter.rows
            else:
                kept.append(waiter)
        waiting.extend(kept)
        return batch

    def _merged_done(
        self, model: str, queue: _ModelQueue, limit: int, batch: list[_Waiter], task: asyncio.Task[None]
    ) -> None:
        self._tasks.discard(task)
        _fail(batch, TritonUnavailable("the gateway is shutting down; retry"))  # cancelled before it ran
        self._finished(model, queue, limit)

    async def _merged(self, model: str, limit: int, batch: list[_Waiter]) -> None:
        """One call for every member of ``batch`` (run in a task of its own, in a fresh context)."""
        regions: list[Region] = []
        members = batch
        try:
            deadlines = [w.deadline for w in batch]
            deadline.current.set(None if None in deadlines else max(d for d in deadlines if d is not None))
            request_id_var.set(",".join(w.request_id for w in batch))
            # Regions first (may wait): a member's own region is safe to read only while it still waits.
            shared = await self._batch_regions(model, limit, batch, regions)
            members = [w for w in batch if not w.future.done()]
            if not members:
                return
            inputs, placed = _concatenate(members, shared)
            if self.on_call is not None:
                self.on_call(model, len(members), sum(w.rows for w in members))
            try:
                outputs = await self.sender.infer_one(model, inputs, members[0].outputs, placed)
            except InferenceFailed as exc:
                if len(members) > 1 and not cannot_serve(exc.detail):
                    LOGGER.info("merged call of %d requests on %s failed; each sends its own", len(members), model)
                    _answer(members, _RETRY)
                    return
                raise
            start = 0
            for waiter in members:
                if not waiter.future.done():
                    waiter.future.set_result({n: outputs[n][start : start + waiter.rows] for n in waiter.outputs})
                start += waiter.rows
        except asyncio.CancelledError:  # close(), or every member gone
            _fail(members, TritonUnavailable("the gateway is shutting down; retry"))
            raise
        except Exception as exc:  # every member gets the call's own error
            _fail(members, exc)
        finally:
            for region in regions:
                self.sender.release(region)

    async def _batch_regions(
        self, model: str, limit: int, batch: list[_Waiter], regions: list[Region]
    ) -> dict[str, Region]:
        """A pool region for each input that every member has in shared memory (appended to ``regions``
        to be released by the caller); an input with no free region goes over gRPC."""
        shared = {}
        first = batch[0]
        for name, array in first.inputs.items():
            if all(w.placed and name in w.placed for w in batch):
                row_bytes = array.nbytes // max(first.rows, 1)
                region = await self.sender.region(f"{model}/{name}#batch", limit * row_bytes)
                if region is not None:
                    regions.append(region)
                    shared[name] = region
        return shared

    async def close(self) -> None:
        """Cancel the merged calls still in flight; their members, and requests still waiting for a call
        to return, get 503 ``triton_unavailable``."""
        self._closed = True
        for queue in self._models.values():
            _fail(list(queue.waiting), TritonUnavailable("the gateway is shutting down; retry"))
            queue.waiting.clear()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _concatenate(members: list[_Waiter], shared: Mapping[str, Region]) -> tuple[Arrays, dict[str, Region]]:
    """The members' inputs stacked along axis 0, into the batch's region where there is one."""
    inputs: Arrays = {}
    placed: dict[str, Region] = {}
    rows = sum(w.rows for w in members)
    for name, array in members[0].inputs.items():
        parts = [w.inputs[name] for w in members]
        region = shared.get(name)
        if region is None:
            inputs[name] = np.concatenate(parts)
        else:
            out = region.array(array.dtype, (rows, *array.shape[1:]))
            inputs[name] = np.concatenate(parts, out=out)
            placed[name] = region
    return inputs, placed


def _answer(members: list[_Waiter], answer: _Turn) -> None:
    for waiter in members:
        if not waiter.future.done():
            waiter.future.set_result(answer)


def _fail(members: list[_Waiter], error: BaseException) -> None:
    for waiter in members:
        if not waiter.future.done():
            waiter.future.set_exception(error)


def _cancel_if_abandoned(batch: list[_Waiter], task: asyncio.Task[None], _: object) -> None:
    if all(w.future.cancelled() for w in batch):
        task.cancel()
