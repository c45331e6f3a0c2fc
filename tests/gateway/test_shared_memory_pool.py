"""The shared-memory region pool over the FAKE gRPC client (unit tier): bounded, one registration per
region, no leak when Triton refuses, re-registered after a restart, nothing left after close.

The same pool against a real tritonserver: tests/gateway/test_shared_memory.py.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import pytest

from gateway import deadline
from gateway.errors import UpstreamTimeout
from gateway.shared_memory import OutputRegions
from tests.fakes import INTERNAL, FakeTritonGrpc, FrozenTritonGrpc, grpc_error

pytestmark = pytest.mark.unit

NBYTES = 4096


def segments(pool: OutputRegions) -> list[str]:
    return sorted(name for name in os.listdir("/dev/shm") if name.startswith(pool._prefix))


def test_the_pool_is_bounded_and_reuses_released_regions() -> None:
    fake, pool = FakeTritonGrpc(), OutputRegions("detections", NBYTES, size=2)

    async def scenario() -> None:
        first, second = await pool.acquire(fake), await pool.acquire(fake)
        assert first is not None and second is not None and first.name != second.name
        assert await pool.acquire(fake) is None  # all busy: the call takes the gRPC path
        pool.release(first)
        again = await pool.acquire(fake)
        assert again is first  # reused, not created again
        assert fake.registered == {first.name: NBYTES, second.name: NBYTES}
        await pool.close(fake)

    asyncio.run(scenario())
    assert fake.registered == {} and segments(pool) == []


def test_concurrent_first_requests_create_distinct_regions_once_each() -> None:
    fake, pool = FakeTritonGrpc(), OutputRegions("detections", NBYTES, size=4)

    async def scenario() -> list[Any]:
        regions = await asyncio.gather(*(pool.acquire(fake) for _ in range(6)))
        assert len(segments(pool)) == 4
        await pool.close(fake)
        return regions

    regions = asyncio.run(scenario())
    named = [r.name for r in regions if r is not None]
    assert len(named) == len(set(named)) == 4 and regions.count(None) == 2
    assert segments(pool) == []


def test_a_refused_registration_leaves_no_segment_and_falls_back() -> None:
    fake, pool = FakeTritonGrpc(), OutputRegions("detections", NBYTES, size=2)

    async def refuse(*_: Any, **__: Any) -> None:
        raise grpc_error(INTERNAL, "failed to register shared memory region")

    fake.register_system_shared_memory = refuse  # type: ignore[method-assign]
    assert asyncio.run(pool.acquire(fake)) is None
    assert segments(pool) == []


def test_regions_are_registered_again_after_a_restart() -> None:
    fake, pool = FakeTritonGrpc(), OutputRegions("detections", NBYTES, size=2)

    async def scenario() -> None:
        region = await pool.acquire(fake)
        assert region is not None
        fake.registered.clear()  # a restarted Triton has forgotten every region
        assert await pool.reregister(fake)
        assert fake.registered == {region.name: NBYTES}

        async def refuse(*_: Any, **__: Any) -> None:
            raise grpc_error(INTERNAL, "failed to register shared memory region")

        fake.register_system_shared_memory = refuse  # type: ignore[method-assign]
        assert not await pool.reregister(fake)
        await pool.close(fake)

    asyncio.run(scenario())
    assert segments(pool) == []


def test_a_frozen_triton_holds_no_registration_past_its_timeout() -> None:
    """Registering a region with a Triton that never answers: 504 after the pool's timeout (the
    request's deadline when sooner), the segment removed; it used to wait for ever."""
    fake, pool = FrozenTritonGrpc(), OutputRegions("detections", NBYTES, size=2, timeout_s=0.3)
    with pytest.raises(UpstreamTimeout):
        asyncio.run(asyncio.wait_for(pool.acquire(fake), 5.0))
    assert fake.waits == [0.3] and segments(pool) == []  # no request deadline: the pool timeout itself

    async def with_deadline() -> None:
        token = deadline.current.set(time.monotonic() + 0.1)
        try:
            await pool.acquire(fake)
        finally:
            deadline.current.reset(token)

    with pytest.raises(UpstreamTimeout):
        asyncio.run(asyncio.wait_for(with_deadline(), 5.0))
    assert fake.waits[1] is not None and fake.waits[1] <= 0.1 and segments(pool) == []
