"""The shared-memory region pool over the FAKE gRPC client (unit tier): bounded per tensor, one
registration per region, no leak when Triton refuses, re-registered after a restart, nothing left
after close; the Triton client is its one owner.

The same pool against a real tritonserver: tests/gateway/test_shared_memory.py.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import numpy as np
import pytest

from gateway import deadline
from gateway.errors import UpstreamTimeout
from gateway.shared_memory import RegionPool
from gateway.triton import TritonClient
from tests.fakes import INTERNAL, FakeTritonGrpc, FrozenTritonGrpc, grpc_error

pytestmark = pytest.mark.unit

NBYTES = 4096
TENSOR = "yolov5n/images"


def segments(prefix: str) -> list[str]:
    return sorted(name for name in os.listdir("/dev/shm") if name.startswith(prefix))


def test_the_pool_is_bounded_per_tensor_and_reuses_released_regions() -> None:
    fake, pool = FakeTritonGrpc(), RegionPool(size=2)

    async def scenario() -> None:
        first, second = await pool.acquire(fake, TENSOR, NBYTES), await pool.acquire(fake, TENSOR, NBYTES)
        assert first is not None and second is not None and first.name != second.name
        assert await pool.acquire(fake, TENSOR, NBYTES) is None  # all busy: the call takes the gRPC path
        other = await pool.acquire(fake, "nanodet/images", NBYTES)  # another tensor has its own regions
        assert other is not None
        pool.release(first)
        again = await pool.acquire(fake, TENSOR, NBYTES)
        assert again is first  # reused, not created again
        assert fake.registered == {first.name: NBYTES, second.name: NBYTES, other.name: NBYTES}
        await pool.close(fake)

    asyncio.run(scenario())
    assert fake.registered == {} and segments(pool.prefix) == []


def test_a_region_is_a_writable_view_of_the_segment() -> None:
    fake, pool = FakeTritonGrpc(), RegionPool(size=1)

    async def scenario() -> None:
        region = await pool.acquire(fake, TENSOR, NBYTES)
        assert region is not None
        region.array(np.uint8, (16, 16, 16))[:] = 7
        with open("/dev/shm" + region.key, "rb") as segment:
            assert segment.read(NBYTES) == b"\x07" * NBYTES
        await pool.close(fake)

    asyncio.run(scenario())
    assert segments(pool.prefix) == []


def test_concurrent_first_requests_create_distinct_regions_once_each() -> None:
    fake, pool = FakeTritonGrpc(), RegionPool(size=4)

    async def scenario() -> list[Any]:
        regions = await asyncio.gather(*(pool.acquire(fake, TENSOR, NBYTES) for _ in range(6)))
        assert len(segments(pool.prefix)) == 4
        await pool.close(fake)
        return regions

    regions = asyncio.run(scenario())
    named = [r.name for r in regions if r is not None]
    assert len(named) == len(set(named)) == 4 and regions.count(None) == 2
    assert segments(pool.prefix) == []


def test_two_racing_first_requests_share_the_clients_one_pool_and_leak_nothing() -> None:
    """The Triton client owns the pool (made with it): two first requests racing for a region get
    one each from that pool; closing the client unregisters and unmaps both."""
    fake = FakeTritonGrpc()
    client = TritonClient("triton.internal:8001", 5.0, 0, 0.001, grpc_client=fake, shared_memory_regions=4)
    assert client.pool is not None
    prefix = client.pool.prefix
    assert prefix.startswith(f"gw-{os.getpid()}-")

    async def scenario() -> None:
        first, second = await asyncio.gather(client.region(TENSOR, NBYTES), client.region(TENSOR, NBYTES))
        assert first is not None and second is not None and first.name != second.name
        assert {r.name.rsplit("-", 1)[0] for r in (first, second)} == {prefix}
        assert sorted(fake.registered) == sorted([first.name, second.name]) == segments(prefix)
        client.release(first)
        client.release(second)
        await client.close()

    asyncio.run(scenario())
    assert fake.registered == {} and segments(prefix) == [] and fake.closed


def test_no_shared_memory_no_pool() -> None:
    client = TritonClient("triton.internal:8001", 5.0, 0, 0.001, grpc_client=FakeTritonGrpc())
    assert client.pool is None and asyncio.run(client.region(TENSOR, NBYTES)) is None


def test_a_refused_registration_leaves_no_segment_and_falls_back() -> None:
    fake, pool = FakeTritonGrpc(), RegionPool(size=2)

    async def refuse(*_: Any, **__: Any) -> None:
        raise grpc_error(INTERNAL, "failed to register shared memory region")

    fake.register_system_shared_memory = refuse  # type: ignore[method-assign]
    assert asyncio.run(pool.acquire(fake, TENSOR, NBYTES)) is None
    assert segments(pool.prefix) == []


def test_regions_are_registered_again_after_a_restart() -> None:
    fake, pool = FakeTritonGrpc(), RegionPool(size=2)

    async def scenario() -> None:
        region = await pool.acquire(fake, TENSOR, NBYTES)
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
    assert segments(pool.prefix) == []


def test_a_frozen_triton_holds_no_registration_past_its_timeout() -> None:
    """Registering a region with a Triton that never answers: 504 after the pool's timeout (the
    request's deadline when sooner), the segment removed; it used to wait for ever."""
    fake, pool = FrozenTritonGrpc(), RegionPool(size=2, timeout_s=0.3)
    with pytest.raises(UpstreamTimeout):
        asyncio.run(asyncio.wait_for(pool.acquire(fake, TENSOR, NBYTES), 5.0))
    assert fake.waits == [0.3] and segments(pool.prefix) == []  # no request deadline: the pool timeout itself

    async def with_deadline() -> None:
        token = deadline.current.set(time.monotonic() + 0.1)
        try:
            await pool.acquire(fake, TENSOR, NBYTES)
        finally:
            deadline.current.reset(token)

    with pytest.raises(UpstreamTimeout):
        asyncio.run(asyncio.wait_for(with_deadline(), 5.0))
    assert fake.waits[1] is not None and fake.waits[1] <= 0.1 and segments(pool.prefix) == []
