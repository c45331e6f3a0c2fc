"""The long-lived objects of one app: the Triton client and the task pipelines."""

from __future__ import annotations

import dataclasses
from typing import Any

from gateway.catalog import ModelInfo, read_model_info
from gateway.errors import UnknownModel
from gateway.health import ModelHealth, Prober
from gateway.image_budget import ImageBudget
from gateway.metrics import Metrics
from gateway.settings import Settings
from gateway.tasks.base import Task
from gateway.tasks.classify import ClassifyTask
from gateway.tasks.detect import DetectTask
from gateway.tasks.qa import QATask, load_tokenizer
from gateway.triton import TritonClient


@dataclasses.dataclass
class Services:
    """Args:
    client: the one Triton client.
    qa: the QA pipeline.
    detect: the detection pipeline.
    classify: classification pipelines by model name; the first is the default.
    health: whether each served model can serve (probes and real requests).
    prober: the background probe inferences feeding ``health``; started by the app's lifespan.
    """

    client: TritonClient
    qa: QATask
    detect: DetectTask
    classify: dict[str, ClassifyTask]
    health: ModelHealth = dataclasses.field(default_factory=lambda: ModelHealth([]))
    prober: Prober | None = None

    @classmethod
    def create(cls, settings: Settings, metrics: Metrics) -> Services:
        client = TritonClient.from_settings(settings)
        repo = settings.model_repository
        budget = ImageBudget(settings.image_decode_budget_bytes, settings.image_decode_wait_s)  # one for all images

        def info(name: str, task: str) -> ModelInfo:
            return read_model_info(repo, name, task)

        services = cls(
            client=client,
            qa=QATask(info(settings.qa_model, "qa"), client, metrics, settings, load_tokenizer(settings)),
            detect=DetectTask(info(settings.detect_model, "detect"), client, metrics, settings, budget),
            classify={
                name: ClassifyTask(info(name, "classify"), client, metrics, settings, budget)
                for name in settings.classify_models
            },
        )
        services.health = client.health = ModelHealth([m.name for m in services.models])
        services.prober = Prober(
            services.health,
            client.probe,
            metrics,
            settings.health_probe_interval_s,
            settings.health_probe_timeout_s,
        )
        return services

    @property
    def tasks(self) -> list[Task[Any, Any, Any]]:
        return [self.qa, self.detect, *self.classify.values()]

    @property
    def models(self) -> list[ModelInfo]:
        return [task.model for task in self.tasks]

    def classifier(self, name: str | None) -> ClassifyTask:
        if name is None:
            return next(iter(self.classify.values()))
        try:
            return self.classify[name]
        except KeyError:
            raise UnknownModel(
                f"unknown classification model {name!r}; choose one of {sorted(self.classify)}"
            ) from None

    async def close(self) -> None:
        if self.prober is not None:
            await self.prober.stop()
        for task in self.tasks:
            await task.close()
        await self.client.close()
