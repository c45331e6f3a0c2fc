"""Client-side coalescing (gateway.coalesce) over a FAKE sender that holds calls in flight until told.

Unit tier: which requests share a call, that each gets its own rows, and what deadlines, failures,
cancellation and shared memory do to a merged call. The same coalescing against a real tritonserver
(real batching, real shared memory): tests/gateway/test_coalesce_e2e.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import Mapping, Sequence

import numpy as np
import pytest
import tritonclient.utils.shared_memory as shm

from gateway import deadline
from gateway.coalesce import Coalescer, _ModelQueue
from gateway.errors import InferenceFailed, Overloaded, TritonUnavailable
from gateway.request_id import current as request_id_var
from gateway.shared_memory import Region

pytestmark = pytest.mark.unit

MODEL = "m"


@dataclasses.dataclass
class SentCall:
    inputs: dict[str, np.ndarray]
    placed: list[str]
    deadline: float | None
    request_id: str
    release: asyncio.Event
    cancelled: bool = False


class HeldSender:
    """FAKE Triton client: each call waits until released (``release_all``); the output ``y`` is the input
    ``x`` doubled, row by row, so every caller can check it got its own rows; a row of -1 is refused."""

    def __init__(self, hold: bool = True) -> None:
        self.calls: list[SentCall] = []
        self.hold = hold
        self.regions: list[Region] = []
        self.released: list[Region] = []
        self.fail_with: Exception | None = None

    async def infer_one(
        self,
        model: str,
        inputs: Mapping[str, np.ndarray],
        outputs: Sequence[str],
        placed: Mapping[str, Region] | None = None,
    ) -> dict[str, np.ndarray]:
        call = SentCall(
            {n: np.array(a) for n, a in inputs.items()},
            sorted(placed or {}),
            deadline.current.get(),
            request_id_var.get(),
            asyncio.Event(),
        )
        self.calls.append(call)
        try:
            if self.hold:
                await call.release.wait()
        except asyncio.CancelledError:
            call.cancelled = True
            raise
        if self.fail_with is not None:
            raise self.fail_with
        x = call.inputs["x"]
        if (x == -1).all(axis=1).any():
            raise InferenceFailed("inference failed", "a row of -1")
        return {"y": x * 2}

    def release_all(self) -> None:
        for call in self.calls:
            call.release.set()

    async def region(self, tensor: str, nbytes: int) -> Region | None:
        name = f"test-coalesce-{os.getpid()}-{len(self.regions)}"
        handle = shm.create_shared_memory_region(name, f"/{name}", nbytes)
        region = Region(name, f"/{name}", handle, nbytes, tensor)
        self.regions.append(region)
        return region

    def release(self, region: Region) -> None:
        self.released.append(region)

    def destroy(self) -> None:
        for region in self.regions:
            shm.destroy_shared_memory_region(region.handle)


def rows(*values: int) -> dict[str, np.ndarray]:
    return {"x": np.array([[v, v] for v in values], dtype=np.float32)}


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_at_low_load_every_request_is_its_own_call() -> None:
    sender = HeldSender(hold=False)
    coalescer = Coalescer(sender, inflight=1, max_rows=8)

    async def scenario() -> None:
        for value in range(3):
            out = await coalescer.infer(MODEL, rows(value), ["y"], None, 32)
            assert out["y"].tolist() == [[2 * value, 2 * value]]

    asyncio.run(scenario())
    assert [len(c.inputs["x"]) for c in sender.calls] == [1, 1, 1]


def test_requests_that_wait_share_one_call_and_each_gets_its_own_rows() -> None:
    sender = HeldSender()
    seen: list[tuple[int, int]] = []
    coalescer = Coalescer(sender, inflight=1, max_rows=8, on_call=lambda _, n, r: seen.append((n, r)))

    async def scenario() -> None:
        first = asyncio.create_task(coalescer.infer(MODEL, rows(1), ["y"], None, 32))
        await settle()
        waiting = [asyncio.create_task(coalescer.infer(MODEL, rows(*v), ["y"], None, 32)) for v in ([2], [3, 4], [5])]
        await settle()
        assert len(sender.calls) == 1  # the others wait for the call in flight
        sender.release_all()
        assert (await first)["y"].tolist() == [[2, 2]]
        await settle()
        assert len(sender.calls) == 2
        sender.release_all()
        answers = [(await t)["y"].tolist() for t in waiting]
        assert answers == [[[4, 4]], [[6, 6], [8, 8]], [[10, 10]]]

    asyncio.run(scenario())
    assert sender.calls[1].inputs["x"][:, 0].tolist() == [2, 3, 4, 5]
    assert seen == [(1, 1), (3, 4)]


@pytest.mark.parametrize(("max_rows", "max_batch_size"), [(3, 32), (8, 3)])
def test_a_merged_call_holds_at_most_max_rows_nor_more_than_the_model_batches(
    max_rows: int, max_batch_size: int
) -> None:
    sender = HeldSender()
    coalescer = Coalescer(sender, inflight=1, max_rows=max_rows)

    async def scenario() -> None:
        tasks = [asyncio.create_task(coalescer.infer(MODEL, rows(v), ["y"], None, max_batch_size)) for v in range(6)]
        for _ in range(4):
            await settle()
            sender.release_all()
        assert [(await t)["y"][0, 0] for t in tasks] == [0, 2, 4, 6, 8, 10]

    asyncio.run(scenario())
    assert [len(c.inputs["x"]) for c in sender.calls] == [1, 3, 2]


def test_only_requests_of_the_same_shape_and_outputs_share_a_call() -> None:
    sender = HeldSender()
    coalescer = Coalescer(sender, inflight=1, max_rows=8)
    wide = {"x": np.zeros((1, 3), dtype=np.float32)}

    async def scenario() -> None:
        tasks = [asyncio.create_task(coalescer.infer(MODEL, rows(0), ["y"], None, 32))]
        await settle()
        tasks += [
            asyncio.create_task(coalescer.infer(MODEL, inputs, ["y"], None, 32))
            for inputs in (rows(1), wide, rows(2), wide)
        ]
        for _ in range(4):
            await settle()
            sender.release_all()
        await asyncio.gather(*tasks)

    asyncio.run(scenario())
    assert [c.inputs["x"].shape for c in sender.calls] == [(1, 2), (2, 2), (2, 3)]


def test_a_merged_call_runs_to_the_latest_deadline_and_carries_every_request_id() -> None:
    sender = HeldSender()
    coalescer = Coalescer(sender, inflight=1, max_rows=8)

    async def one(value: int, ends: float) -> None:
        deadline.current.set(ends)
        request_id_var.set(f"r{value}")
        await coalescer.infer(MODEL, rows(value), ["y"], None, 32)

    async def scenario() -> None:
        now = asyncio.get_running_loop().time()
        tasks = [asyncio.create_task(one(0, now + 5))]
        await settle()
        tasks += [asyncio.create_task(one(v, now + v)) for v in (1, 3, 2)]
        for _ in range(3):
            await settle()
            sender.release_all()
        await asyncio.gather(*tasks)
        assert sender.calls[1].deadline == now + 3
        assert sender.calls[1].request_id == "r1,r3,r2"

    asyncio.run(scenario())


def test_a_failure_one_request_may_have_caused_is_not_charged_to_the_others() -> None:
    sender = HeldSender()
    coalescer = Coalescer(sender, inflight=1, max_rows=8)

    async def scenario() -> list[object]:
        tasks = [asyncio.create_task(coalescer.infer(MODEL, rows(0), ["y"], None, 32))]
        await settle()
        tasks += [asyncio.create_task(coalescer.infer(MODEL, rows(v), ["y"], None, 32)) for v in (1, -1, 2)]
        for _ in range(6):
            await settle()
            sender.release_all()
        return await asyncio.gather(*tasks, return_exceptions=True)

    results = asyncio.run(scenario())
    assert [r["y"][0, 0] for r in results if isinstance(r, dict)] == [0, 2, 4]
    assert isinstance(results[2], InferenceFailed)
    # the merged call, then each of its members alone
    assert [c.inputs["x"][:, 0].tolist() for c in sender.calls[1:]] == [[1, -1, 2], [1], [-1], [2]]


def test_overload_reaches_every_member_of_a_merged_call_unretried() -> None:
    sender = HeldSender()
    coalescer = Coalescer(sender, inflight=1, max_rows=8)

    async def scenario() -> list[object]:
        tasks = [asyncio.create_task(coalescer.infer(MODEL, rows(0), ["y"], None, 32))]
        await settle()
        tasks += [asyncio.create_task(coalescer.infer(MODEL, rows(v), ["y"], None, 32)) for v in (1, 2)]
        await settle()
        sender.release_all()
        await tasks[0]
        sender.fail_with = Overloaded("shed")
        await settle()
        sender.release_all()
        return await asyncio.gather(*tasks[1:], return_exceptions=True)

    results = asyncio.run(scenario())
    assert all(isinstance(r, Overloaded) for r in results)
    assert len(sender.calls) == 2


def test_a_cancelled_waiting_request_leaves_the_queue() -> None:
    sender = HeldSender()
    coalescer = Coalescer(sender, inflight=1, max_rows=8)

    async def scenario() -> None:
        first = asyncio.create_task(coalescer.infer(MODEL, rows(0), ["y"], None, 32))
        await settle()
        gone, kept = (asyncio.create_task(coalescer.infer(MODEL, rows(v), ["y"], None, 32)) for v in (1, 2))
        await settle()
        gone.cancel()
        await settle()
        sender.release_all()
        await first
        await settle()
        sender.release_all()
        assert (await kept)["y"].tolist() == [[4, 4]]

    asyncio.run(scenario())
    assert [c.inputs["x"][:, 0].tolist() for c in sender.calls] == [[0], [2]]


def test_a_merged_call_whose_members_are_all_gone_is_cancelled_and_frees_its_slot() -> None:
    sender = HeldSender()
    coalescer = Coalescer(sender, inflight=1, max_rows=8)

    async def scenario() -> None:
        first = asyncio.create_task(coalescer.infer(MODEL, rows(0), ["y"], None, 32))
        await settle()
        members = [asyncio.create_task(coalescer.infer(MODEL, rows(v), ["y"], None, 32)) for v in (1, 2)]
        await settle()
        sender.calls[0].release.set()
        await first
        await settle()
        assert len(sender.calls) == 2 and not sender.calls[1].release.is_set()
        for task in members:
            task.cancel()
        await settle()
        assert sender.calls[1].cancelled
        # the slot is free again: the next request goes at once
        sender.hold = False
        assert (await coalescer.infer(MODEL, rows(7), ["y"], None, 32))["y"][0, 0] == 14

    asyncio.run(scenario())


def test_a_request_cancelled_as_its_turn_comes_gives_its_slot_back() -> None:
    sender = HeldSender(hold=False)
    coalescer = Coalescer(sender, inflight=1, max_rows=8)  # a lone waiter sends its own call when its turn comes

    async def scenario() -> None:
        queue = coalescer._models.setdefault(MODEL, _ModelQueue())
        queue.inflight = 1  # a call in flight
        second = asyncio.create_task(coalescer.infer(MODEL, rows(1), ["y"], None, 32))
        await settle()
        assert list(queue.waiting) and not sender.calls
        # That call returns, which gives `second` its turn, and `second` is cancelled before it runs:
        # the narrow race, driven by hand (a real completion wakes `second` before anything can cancel it).
        coalescer._finished(MODEL, queue, 32)
        second.cancel()
        with pytest.raises(asyncio.CancelledError):
            await second
        assert queue.inflight == 0 and not queue.waiting
        assert (await coalescer.infer(MODEL, rows(3), ["y"], None, 32))["y"][0, 0] == 6

    asyncio.run(scenario())
    assert [c.inputs["x"][0, 0] for c in sender.calls] == [3]


def test_close_answers_the_members_of_a_merged_call_that_never_ran_and_frees_its_slot() -> None:
    sender = HeldSender()
    coalescer = Coalescer(sender, inflight=1, max_rows=8)

    async def scenario() -> None:
        queue = coalescer._models.setdefault(MODEL, _ModelQueue())
        queue.inflight = 1  # a call in flight
        members = [asyncio.create_task(coalescer.infer(MODEL, rows(v), ["y"], None, 32)) for v in (1, 2)]
        wide = {"x": np.zeros((1, 3), dtype=np.float32)}  # not mergeable with them: stays waiting
        late = asyncio.create_task(coalescer.infer(MODEL, wide, ["y"], None, 32))
        await settle()
        coalescer._finished(MODEL, queue, 32)  # it returns: the merged call's task is created, not yet run
        assert len(queue.waiting) == 1
        await coalescer.close()  # cancelled before its first step: its body never runs
        results = await asyncio.wait_for(asyncio.gather(*members, late, return_exceptions=True), 5)  # a hang guard
        assert all(isinstance(r, TritonUnavailable) for r in results), results
        assert queue.inflight == 0 and not sender.calls

    asyncio.run(scenario())


def test_inputs_in_shared_memory_are_copied_into_one_region_for_the_merged_call() -> None:
    sender = HeldSender()
    coalescer = Coalescer(sender, inflight=1, max_rows=4)

    async def scenario() -> None:
        own = [await sender.region(f"{MODEL}/x", 8) for _ in range(3)]
        arrays = []
        for value, region in enumerate(own):
            array = region.array(np.float32, (1, 2))
            array[:] = value
            arrays.append(array)
        tasks = [
            asyncio.create_task(coalescer.infer(MODEL, {"x": a}, ["y"], {"x": r}, 32))
            for a, r in zip(arrays, own, strict=True)
        ]
        for _ in range(3):
            await settle()
            sender.release_all()
        assert [(await t)["y"][0, 0] for t in tasks] == [0, 2, 4]

    try:
        asyncio.run(scenario())
        merged = sender.calls[1]
        assert merged.placed == ["x"] and merged.inputs["x"][:, 0].tolist() == [1, 2]
        batch_region = sender.regions[3]
        assert batch_region.tensor == f"{MODEL}/x#batch" and batch_region.nbytes == 4 * 8
        assert sender.released == [batch_region]
    finally:
        sender.destroy()


def test_rejects_a_useless_configuration() -> None:
    with pytest.raises(ValueError):
        Coalescer(HeldSender(), inflight=0, max_rows=8)
