"""The tasks' hop to a worker thread (unit tier): the bounded pool, the caller's context, and a
cancelled caller that still waits for its thread (what it holds is released after the work)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import threading

import pytest

from gateway.tasks.base import in_thread

pytestmark = pytest.mark.unit

VAR: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")


def test_runs_in_the_pool_with_the_callers_context() -> None:
    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="task")

    async def scenario() -> tuple[str, str]:
        VAR.set("request-7")
        return await in_thread(pool, lambda: (threading.current_thread().name, VAR.get()))

    try:
        name, value = asyncio.run(scenario())
    finally:
        pool.shutdown()
    assert name.startswith("task") and value == "request-7"


def test_errors_reach_the_caller() -> None:
    def fail() -> None:
        raise ValueError("bad image")

    with pytest.raises(ValueError, match="bad image"):
        asyncio.run(in_thread(None, fail))


def test_a_cancelled_caller_waits_for_its_thread() -> None:
    started, release = threading.Event(), threading.Event()
    finished: list[bool] = []

    def work() -> None:
        started.set()
        release.wait(5)
        finished.append(True)

    async def scenario() -> bool:
        task = asyncio.create_task(in_thread(None, work))
        while not started.is_set():
            await asyncio.sleep(0.001)
        task.cancel()
        await asyncio.sleep(0.05)
        waiting = not task.done()  # still waiting for the thread, despite the cancellation
        task.cancel()  # a second cancellation does not abandon the thread either
        await asyncio.sleep(0.01)
        waiting = waiting and not task.done()
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        return waiting

    assert asyncio.run(scenario()) and finished == [True]


def _image(fmt: str) -> bytes:
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (64, 48), (10, 200, 30)).save(out, fmt)
    return out.getvalue()


@pytest.mark.parametrize(("fmt", "pil_reads_it"), [("PNG", True), ("WEBP", True), ("JPEG", False)])
def test_only_a_jpeg_header_is_read_on_the_event_loop(
    fmt: str, pil_reads_it: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PIL's header parsing (Python over a file's chunks: ~0.25 s for a hostile 5 MB PNG) runs in the task's
    worker pool; the fast path's JPEG header stays on the loop, and PIL never parses it."""
    from gateway.catalog import ModelInfo
    from gateway.metrics import Metrics
    from gateway.processing import images
    from gateway.settings import Settings
    from gateway.tasks.classify import ClassifyQuery, ClassifyTask

    threads: list[str] = []
    real_open = images._open

    def recording_open(*args: object) -> object:
        threads.append(threading.current_thread().name)
        return real_open(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(images, "_open", recording_open)
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    model = ModelInfo(name="resnet50_vd", task="classify", weights="untrained")
    task = ClassifyTask(model, None, Metrics(), settings)  # type: ignore[arg-type]  # admission needs no client
    task.executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="decode")

    async def admit() -> str:
        async with task.admitted(ClassifyQuery(_image(fmt))):
            return threading.current_thread().name

    try:
        loop_thread = asyncio.run(admit())
    finally:
        task.executor.shutdown()
    if pil_reads_it:
        assert threads and all(name.startswith("decode") for name in threads) and loop_thread not in threads
    else:
        assert threads == []


@pytest.mark.parametrize("fast_jpeg", [True, False])
def test_a_jpeg_over_the_scan_pixel_limit_is_refused_at_admission(
    fast_jpeg: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``max_jpeg_scan_pixels`` is the gateway's setting: checked at admission, before the decoding budget is
    reserved and before preprocessing decodes anything, whichever path reads the header. The scans are counted in
    the task's worker pool, and only where that limit could refuse what ``max_jpeg_scans`` lets through."""
    import io

    from PIL import Image

    from gateway.catalog import ModelInfo
    from gateway.errors import PayloadTooLarge
    from gateway.metrics import Metrics
    from gateway.processing import images
    from gateway.settings import Settings
    from gateway.tasks import base
    from gateway.tasks.classify import ClassifyQuery, ClassifyTask

    out = io.BytesIO()
    Image.linear_gradient("L").resize((64, 48)).convert("RGB").save(out, "JPEG", progressive=True)
    progressive = out.getvalue()
    scans, pixels = images.jpeg_scans(progressive), 64 * 48
    counted: list[str] = []

    def recording_check(*args: object) -> None:
        counted.append(threading.current_thread().name)
        images.check_jpeg_scans(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(base, "check_jpeg_scans", recording_check)

    def admit(max_scans: int, max_scan_pixels: int) -> None:
        settings = Settings(  # type: ignore[call-arg]
            _env_file=None, fast_jpeg=fast_jpeg, max_jpeg_scans=max_scans, max_jpeg_scan_pixels=max_scan_pixels
        )
        model = ModelInfo(name="resnet50_vd", task="classify", weights="untrained")
        task = ClassifyTask(model, None, Metrics(), settings)  # type: ignore[arg-type]  # admission needs no client
        task.executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="decode")

        async def scenario() -> None:
            async with task.admitted(ClassifyQuery(progressive)):
                assert task.budget.reserved_bytes > 0  # admitted: its decoding cost is reserved

        try:
            asyncio.run(scenario())
        finally:
            task.executor.shutdown()

    admit(100, pixels * scans)  # at the limit
    assert counted and all(name.startswith("decode") for name in counted)
    with pytest.raises(PayloadTooLarge, match=f"{scans} scans of {pixels} pixels"):
        admit(100, pixels * scans - 1)
    counted.clear()
    admit(100, pixels * 100)  # max_jpeg_scans refuses first whatever this one would: not counted here
    assert counted == []
    with pytest.raises(PayloadTooLarge, match=f"{scans} scans of {pixels} pixels"):
        admit(0, pixels * scans - 1)  # no scan limit: counted whatever the size
