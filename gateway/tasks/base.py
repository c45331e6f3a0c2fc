"""The layered task pipeline shared by QA, detection and classification."""

from __future__ import annotations

import abc
import asyncio
import concurrent.futures
import contextlib
import contextvars
import functools
from collections.abc import AsyncIterator, Callable
from typing import Any, Generic, Protocol, TypeVar

import numpy as np

from gateway.catalog import ModelInfo
from gateway.image_budget import ImageBudget
from gateway.metrics import Metrics
from gateway.model_io import ModelIO
from gateway.processing.images import check_jpeg_scans, fast_header, read_header, scan_count_matters
from gateway.settings import Settings
from gateway.shared_memory import Region
from gateway.triton import TritonClient

RequestT = TypeVar("RequestT")
FeaturesT = TypeVar("FeaturesT")
ResultT = TypeVar("ResultT")
T = TypeVar("T")


async def in_thread(executor: concurrent.futures.Executor | None, function: Callable[..., T], *args: Any) -> T:
    """``function(*args)`` in a thread of ``executor`` (the loop's default one when None), in a copy
    of the caller's context. Cheaper than anyio's ``to_thread.run_sync`` (measured in docs/benchmarks.md,
    Gateway CPU per request); like it, a cancelled caller still waits for the thread to finish, so
    that what the caller holds (the image decoding budget) is released only after the work is done.
    """
    future = asyncio.get_running_loop().run_in_executor(executor, contextvars.copy_context().run, function, *args)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        while not future.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait({future})
        if not future.cancelled():
            future.exception()  # retrieved: the caller was cancelled, its error is of no interest
        raise


class Task(abc.ABC, Generic[RequestT, FeaturesT, ResultT]):
    """``preprocess`` and ``postprocess`` are CPU work and run in a worker thread, unless the task
    says a request's step is small enough to run on the event loop (``inline_preprocess``,
    ``inline_postprocess``: a thread hop costs more CPU than tens of microseconds of work);
    ``infer`` awaits Triton. Each stage is timed into its own histogram.

    Args:
        task: task name used as metric label (``qa``, ``detect``, ``classify``).
        model: the Triton model and its provenance.
        client: the shared Triton client.
        metrics: the app's metrics.
    """

    def __init__(self, task: str, model: ModelInfo, client: TritonClient, metrics: Metrics) -> None:
        self.task = task
        self.model = model
        self.client = client
        self.metrics = metrics
        self.io: ModelIO | None = None
        # Where preprocess and postprocess run: the app's bounded pool (``Services``); None: the loop's default.
        self.executor: concurrent.futures.Executor | None = None

    @functools.cached_property
    def _series(self) -> tuple[Any, Any, Any, Any]:
        """This task's labelled metric children (preprocess, inference, postprocess, batch rows),
        resolved once: ``labels()`` validates its arguments and takes a lock on every call."""
        m, task, model = self.metrics, self.task, self.model.name
        return (
            m.preprocess.labels(task),
            m.inference.labels(task, model),
            m.postprocess.labels(task),
            m.batch_rows.labels(model),
        )

    def bind(self, io: ModelIO) -> None:
        """Take the model's tensor sizes (before serving); :class:`ShapeMismatch` when a setting disagrees."""
        self.io = io

    @abc.abstractmethod
    def preprocess(self, request: RequestT, region: Region | None) -> FeaturesT:
        """The model's inputs for ``request``; ``region``: where to draw the input tensor (a shared-memory
        region held until the answer is in, from :meth:`placement`), or None: it travels over gRPC."""

    @abc.abstractmethod
    async def infer(self, features: FeaturesT) -> dict[str, np.ndarray]: ...

    @abc.abstractmethod
    def postprocess(self, request: RequestT, features: FeaturesT, outputs: dict[str, np.ndarray]) -> ResultT: ...

    def inline_preprocess(self, request: RequestT) -> bool:
        """Whether ``preprocess`` of this request is cheap enough for the event loop (no, by default)."""
        return False

    def inline_postprocess(self, request: RequestT, features: FeaturesT) -> bool:
        """Whether ``postprocess`` of this request is cheap enough for the event loop (no, by default)."""
        return False

    @contextlib.asynccontextmanager
    async def admitted(self, request: RequestT) -> AsyncIterator[None]:
        """Held around ``preprocess``: where a task reserves what preprocessing needs (nothing, by default)."""
        yield

    @contextlib.asynccontextmanager
    async def placement(self) -> AsyncIterator[Region | None]:
        """Held around the whole request: the shared-memory region its input is drawn into, or None (the
        default: the input travels over gRPC)."""
        yield None

    async def __call__(self, request: RequestT) -> ResultT:
        preprocess_s, inference_s, postprocess_s, _ = self._series
        async with self.placement() as region:
            async with self.admitted(request):
                with preprocess_s.time():
                    if self.inline_preprocess(request):
                        features = self.preprocess(request, region)
                    else:
                        features = await in_thread(self.executor, self.preprocess, request, region)
            with inference_s.time():
                outputs = await self.infer(features)
            with postprocess_s.time():
                if self.inline_postprocess(request, features):
                    return self.postprocess(request, features, outputs)
                return await in_thread(self.executor, self.postprocess, request, features, outputs)

    async def _infer_rows(
        self, inputs: dict[str, np.ndarray], outputs: list[str], placed: dict[str, Region] | None = None
    ) -> dict[str, np.ndarray]:
        self._series[3].observe(len(next(iter(inputs.values()))))
        max_batch_size = self.io.max_batch_size if self.io is not None else 0
        return await self.client.infer(self.model.name, inputs, outputs, placed, max_batch_size)

    async def close(self) -> None:
        """Release what the task holds beyond the shared client (nothing, by default)."""


class ImageQuery(Protocol):
    @property
    def image(self) -> bytes: ...


ImageQueryT = TypeVar("ImageQueryT", bound=ImageQuery)


class ImageTask(Task[ImageQueryT, FeaturesT, ResultT]):
    """A task whose request carries an encoded image: refused by its header alone, then decoded
    while its decoding cost is held in the budget shared by every image task.

    Args:
        model, client, metrics: as :class:`Task` (the task name is the subclass's ``TASK``).
        settings: the gateway settings (image limits).
        budget: the shared decoding budget; a private one from the settings when None.
    """

    TASK: str

    def __init__(
        self,
        model: ModelInfo,
        client: TritonClient,
        metrics: Metrics,
        settings: Settings,
        budget: ImageBudget | None = None,
    ) -> None:
        super().__init__(self.TASK, model, client, metrics)
        self.settings = settings
        self.budget = budget or ImageBudget(settings.image_decode_budget_bytes, settings.image_decode_wait_s)

    # The image tensor, [B, H, W, 3] uint8: what a shared-memory region holds (:meth:`placement`).
    INPUT = "images"

    def input_bytes(self) -> int:
        """Bytes of one request's image tensor (known once bound to the model); 0: never placed."""
        return 0

    @contextlib.asynccontextmanager
    async def placement(self) -> AsyncIterator[Region | None]:
        """With shared memory on (``GATEWAY_TRITON_SHARED_MEMORY``), a region of the Triton client's pool
        for this request's image tensor, which preprocessing draws straight into; held until the answer
        is in (a cancelled request waits for its preprocessing thread first: :func:`in_thread`). None when
        shared memory is off or every region is busy: the tensor then goes over gRPC."""
        nbytes = self.input_bytes()
        region = await self.client.region(f"{self.model.name}/{self.INPUT}", nbytes) if nbytes else None
        try:
            yield region
        finally:
            if region is not None:
                self.client.release(region)

    @contextlib.asynccontextmanager
    async def admitted(self, request: ImageQueryT) -> AsyncIterator[None]:
        """Refuse by the header alone, then hold the image's decoding cost in the shared budget.

        A JPEG's header is read on the event loop (libjpeg-turbo, microseconds); any other header is
        PIL's to read, Python walking the file's chunks (a PNG of compressed text chunks held the loop
        for ~0.25 s per 5 MB, found by fuzzing), so it is read in a worker thread like the decode.
        A JPEG's scans are counted against ``max_jpeg_scan_pixels`` there too (about 1 ms a megabyte), only
        where that limit could refuse what ``max_jpeg_scans`` lets through (a large progressive JPEG).
        """
        s = self.settings
        header = fast_header(request.image, s.max_image_pixels, s.max_image_aspect_ratio) if s.fast_jpeg else None
        if header is None:
            header = await in_thread(
                self.executor,
                read_header,
                request.image,
                s.max_image_pixels,
                s.max_image_aspect_ratio,
                False,
                s.max_image_segments,
            )
        pixels = header.width * header.height
        if scan_count_matters(request.image, pixels, s.max_jpeg_scans, s.max_jpeg_scan_pixels):
            await in_thread(self.executor, check_jpeg_scans, request.image, 0, pixels, s.max_jpeg_scan_pixels)
        async with self.budget.reserve(header.decode_bytes):
            yield
