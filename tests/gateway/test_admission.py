"""Admission control: past ``max_inflight`` requests, answer 503 with Retry-After at once."""

from __future__ import annotations

import asyncio

import httpx
from starlette.types import Receive, Scope, Send

from gateway.admission import AdmissionControl


def test_requests_over_the_bound_are_shed_and_health_is_not() -> None:
    release = asyncio.Event()
    started = 0

    async def slow_app(scope: Scope, receive: Receive, send: Send) -> None:
        nonlocal started
        started += 1
        if scope["path"] != "/healthz":
            await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def scenario() -> None:
        app = AdmissionControl(slow_app, max_inflight=2)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            held = [asyncio.create_task(client.post("/qa")) for _ in range(2)]
            while started < 2:
                await asyncio.sleep(0.01)
            shed = await client.post("/detect")
            assert shed.status_code == 503
            assert shed.headers["retry-after"] == "1"
            assert shed.json()["error"]["code"] == "overloaded"
            assert (await client.get("/healthz")).status_code == 200  # never shed
            release.set()
            assert [r.status_code for r in await asyncio.gather(*held)] == [200, 200]
            assert app.inflight == 0
            assert (await client.post("/qa")).status_code == 200

    asyncio.run(scenario())
