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
