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


def test_latency_budget_sheds_by_measured_service_time_per_key() -> None:
    """Service time = latency / (requests ahead + 1); shed when (ahead + 1) x service > budget."""
    now = [0.0]
    releases: dict[str, asyncio.Event] = {}
    started: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        name = scope["query_string"].decode()
        started.append(name)
        await releases.setdefault(name, asyncio.Event()).wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def scenario() -> None:
        admission = AdmissionControl(app, max_inflight=0, latency_budget_s=2.0, ewma_alpha=1.0, clock=lambda: now[0])
        transport = httpx.ASGITransport(app=admission)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:

            async def wait_started(n: int) -> None:
                while len(started) < n:
                    await asyncio.sleep(0.001)

            # One request alone takes 1 s: service time 1 s for /classify?model=a.
            first = asyncio.create_task(client.post("/classify", params={"model": "a"}))
            await wait_started(1)
            now[0] += 1.0
            releases["model=a"].set()
            assert (await first).status_code == 200
            assert admission.service_time("/classify?model=a") == 1.0
            releases.clear()

            # 1 in flight: (1 + 1) x 1 s = 2 s, within the budget; with 2 ahead, 3 s: shed.
            held = [asyncio.create_task(client.post("/classify", params={"model": "a"})) for _ in range(2)]
            await wait_started(3)
            shed = await client.post("/classify", params={"model": "a"})
            assert shed.status_code == 503
            assert shed.json()["error"]["code"] == "overloaded"
            assert "latency budget" in shed.json()["error"]["message"]
            assert shed.headers["retry-after"] == "1"  # ceil(3 s - 2 s)
            assert len(started) == 3  # the shed request never reached the app

            # Another model has its own estimate (none yet): admitted.
            other = asyncio.create_task(client.post("/classify", params={"model": "b"}))
            await wait_started(4)
            releases["model=b"].set()
            assert (await other).status_code == 200

            # Both held requests finish after 4 s; the last sample had 1 ahead: 4 s / 2 = 2 s.
            now[0] += 4.0
            releases["model=a"].set()
            assert [r.status_code for r in await asyncio.gather(*held)] == [200, 200]
            assert admission.service_time("/classify?model=a") == 2.0
            assert admission.inflight == 0

            # Nothing in flight: always admitted (a probe), even though 1 x 2 s is over a 1 s budget.
            admission.latency_budget_s = 1.0
            releases.clear()
            releases["model=a"] = asyncio.Event()
            releases["model=a"].set()
            assert (await client.post("/classify", params={"model": "a"})).status_code == 200

    asyncio.run(scenario())


def test_failed_and_unknown_requests_leave_no_state() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b"no"})

    async def scenario() -> None:
        admission = AdmissionControl(app, max_inflight=4, latency_budget_s=1.0)
        transport = httpx.ASGITransport(app=admission)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            for i in range(20):
                assert (await client.post(f"/nope{i}", params={"model": str(i)})).status_code == 404
        assert admission._keys == {}

    asyncio.run(scenario())


def test_a_request_in_flight_past_the_budget_sheds_its_key_before_any_estimate() -> None:
    """The estimate lags a stall (it moves on completions); the oldest request's age does not."""
    now = [0.0]
    release = asyncio.Event()
    started = 0

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        nonlocal started
        started += 1
        if scope["path"] == "/qa":
            await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def scenario() -> None:
        admission = AdmissionControl(app, max_inflight=0, latency_budget_s=2.0, clock=lambda: now[0])
        transport = httpx.ASGITransport(app=admission)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            stuck = asyncio.create_task(client.post("/qa"))
            while started < 1:
                await asyncio.sleep(0.001)
            assert admission.service_time("/qa") is None
            now[0] = 1.5  # within the budget: admitted
            second = asyncio.create_task(client.post("/qa"))
            while started < 2:
                await asyncio.sleep(0.001)
            now[0] = 4.5  # the oldest has been in flight 4.5 s, over the 2 s budget
            shed = await client.post("/qa")
            assert shed.status_code == 503
            assert shed.headers["retry-after"] == "2"  # ceil(4.5 - 2) = 3, capped at the 2 s budget
            assert (await client.post("/detect")).status_code == 200  # other keys are not held up
            release.set()
            assert [r.status_code for r in await asyncio.gather(stuck, second)] == [200, 200]
            assert (await client.post("/qa")).status_code == 200

    asyncio.run(scenario())
