"""The shared image decoding budget: reservations across requests, FIFO, time-out to 503, no leaks."""

from __future__ import annotations

import asyncio

import pytest

from gateway.errors import Overloaded, PayloadTooLarge
from gateway.image_budget import ImageBudget


async def _hold(budget: ImageBudget, nbytes: int, release: asyncio.Event, log: list[str], name: str) -> None:
    async with budget.reserve(nbytes):
        log.append(name)
        await release.wait()


async def _until(predicate, timeout_s: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout_s):
        while not predicate():
            await asyncio.sleep(0.001)


def test_reservations_are_bounded_across_requests_and_granted_in_order() -> None:
    async def scenario() -> None:
        budget = ImageBudget(capacity_bytes=100, wait_s=10)
        log: list[str] = []
        first, second, third = asyncio.Event(), asyncio.Event(), asyncio.Event()
        a = asyncio.create_task(_hold(budget, 60, first, log, "a"))
        await _until(lambda: log == ["a"])
        b = asyncio.create_task(_hold(budget, 50, second, log, "b"))  # 60 + 50 > 100: waits
        await _until(lambda: budget.waiting == 1)
        c = asyncio.create_task(_hold(budget, 10, third, log, "c"))  # would fit, but may not overtake b
        await _until(lambda: budget.waiting == 2)
        assert log == ["a"] and budget.reserved_bytes == 60
        first.set()
        await _until(lambda: log == ["a", "b", "c"])
        assert budget.reserved_bytes == 60
        second.set()
        third.set()
        await asyncio.gather(a, b, c)
        assert budget.reserved_bytes == 0 and budget.waiting == 0

    asyncio.run(scenario())


def test_a_wait_past_the_deadline_is_503_and_leaves_nothing_reserved() -> None:
    async def scenario() -> None:
        budget = ImageBudget(capacity_bytes=100, wait_s=0.05, retry_after_s=3)
        release = asyncio.Event()
        log: list[str] = []
        holder = asyncio.create_task(_hold(budget, 100, release, log, "a"))
        await _until(lambda: log == ["a"])
        with pytest.raises(Overloaded) as raised:
            async with budget.reserve(1):
                pass
        assert raised.value.status_code == 503 and raised.value.code == "overloaded"
        assert raised.value.headers == {"Retry-After": "3"}
        assert budget.waiting == 0 and budget.reserved_bytes == 100
        release.set()
        await holder
        async with budget.reserve(100):
            assert budget.reserved_bytes == 100
        assert budget.reserved_bytes == 0

    asyncio.run(scenario())


def test_a_cancelled_waiter_lets_the_next_one_through() -> None:
    async def scenario() -> None:
        budget = ImageBudget(capacity_bytes=100, wait_s=10)
        log: list[str] = []
        hold_a, hold_c = asyncio.Event(), asyncio.Event()
        a = asyncio.create_task(_hold(budget, 50, hold_a, log, "a"))
        await _until(lambda: log == ["a"])
        b = asyncio.create_task(_hold(budget, 100, asyncio.Event(), log, "b"))  # head of the queue, blocks c
        await _until(lambda: budget.waiting == 1)
        c = asyncio.create_task(_hold(budget, 40, hold_c, log, "c"))
        await _until(lambda: budget.waiting == 2)
        b.cancel()  # e.g. the client went away
        await _until(lambda: log == ["a", "c"])
        assert budget.reserved_bytes == 90
        hold_a.set()
        hold_c.set()
        await asyncio.gather(a, c)
        with pytest.raises(asyncio.CancelledError):
            await b
        assert budget.reserved_bytes == 0 and budget.waiting == 0

    asyncio.run(scenario())


def test_an_image_larger_than_the_whole_budget_is_413() -> None:
    async def scenario() -> None:
        with pytest.raises(PayloadTooLarge):
            async with ImageBudget(capacity_bytes=100, wait_s=1).reserve(101):
                pass

    asyncio.run(scenario())


def test_zero_capacity_means_no_budget() -> None:
    async def scenario() -> None:
        async with ImageBudget(capacity_bytes=0, wait_s=0).reserve(10**12):
            pass

    asyncio.run(scenario())
