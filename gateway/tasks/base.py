"""The layered task pipeline shared by QA, detection and classification."""

from __future__ import annotations

import abc
import contextlib
from collections.abc import AsyncIterator
from typing import Generic, TypeVar

import numpy as np
from anyio import to_thread

from gateway.catalog import ModelInfo
from gateway.metrics import Metrics
from gateway.shared_memory import OutputRegions
from gateway.triton import TritonClient

RequestT = TypeVar("RequestT")
FeaturesT = TypeVar("FeaturesT")
ResultT = TypeVar("ResultT")


class Task(abc.ABC, Generic[RequestT, FeaturesT, ResultT]):
    """``preprocess`` and ``postprocess`` are CPU work and run in a worker thread;
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

    @abc.abstractmethod
    def preprocess(self, request: RequestT) -> FeaturesT: ...

    @abc.abstractmethod
    async def infer(self, features: FeaturesT) -> dict[str, np.ndarray]: ...

    @abc.abstractmethod
    def postprocess(self, request: RequestT, features: FeaturesT, outputs: dict[str, np.ndarray]) -> ResultT: ...

    @contextlib.asynccontextmanager
    async def admitted(self, request: RequestT) -> AsyncIterator[None]:
        """Held around ``preprocess``: where a task reserves what preprocessing needs (nothing, by default)."""
        yield

    async def __call__(self, request: RequestT) -> ResultT:
        async with self.admitted(request):
            with self.metrics.preprocess.labels(self.task).time():
                features = await to_thread.run_sync(self.preprocess, request)
        with self.metrics.inference.labels(self.task, self.model.name).time():
            outputs = await self.infer(features)
        with self.metrics.postprocess.labels(self.task).time():
            return await to_thread.run_sync(self.postprocess, request, features, outputs)

    async def _infer_rows(
        self, inputs: dict[str, np.ndarray], outputs: list[str], regions: OutputRegions | None = None
    ) -> dict[str, np.ndarray]:
        self.metrics.batch_rows.labels(self.model.name).observe(len(next(iter(inputs.values()))))
        return await self.client.infer(self.model.name, inputs, outputs, regions)

    async def close(self) -> None:
        """Release what the task holds beyond the shared client (nothing, by default)."""
