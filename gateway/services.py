"""The long-lived objects of one app: the Triton client and the task pipelines."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
from collections.abc import Callable
from typing import Any

from gateway.catalog import ModelInfo, precision_variants, read_model_info
from gateway.errors import UnknownModel
from gateway.health import ModelHealth, Prober
from gateway.image_budget import ImageBudget
from gateway.metrics import Metrics
from gateway.model_io import read_model_io
from gateway.settings import Settings
from gateway.shared_memory import RegionSweeper
from gateway.tasks.base import Task
from gateway.tasks.classify import ClassifyTask
from gateway.tasks.detect import DetectTask
from gateway.tasks.qa import QATask, new_tokenizer
from gateway.triton import TritonClient

LOGGER = logging.getLogger(__name__)


def default_detector(models: list[ModelInfo]) -> str:
    """The ``/detect`` default: real weights first (a supplied checkpoint, then pretrained), else the first."""
    for weights in ("checkpoint", "pretrained"):
        for model in models:
            if model.weights == weights:
                return model.name
    return models[0].name


@dataclasses.dataclass
class Services:
    """Args:
    client: the one Triton client.
    qa: the QA pipeline.
    detect: the default detection pipeline (also in ``detectors``).
    classify: classification pipelines by model name; the first is the default.
    health: whether each served model can serve (probes and real requests).
    answerers: QA pipelines by model name (``qa`` and its built precision variants); empty: ``qa`` only.
    prober: the background probe inferences feeding ``health``; started by the app's lifespan.
    sweeper: the background sweep of dead gateway processes' shared-memory regions (shared memory on).
    executor: the bounded thread pool (``task_threads``) every task's preprocess and postprocess run in.
    """

    client: TritonClient
    qa: QATask
    detect: DetectTask
    classify: dict[str, ClassifyTask]
    detectors: dict[str, DetectTask] = dataclasses.field(default_factory=dict)
    health: ModelHealth = dataclasses.field(default_factory=lambda: ModelHealth([]))
    prober: Prober | None = None
    sweeper: RegionSweeper | None = None
    answerers: dict[str, QATask] = dataclasses.field(default_factory=dict)
    executor: concurrent.futures.ThreadPoolExecutor | None = None

    @classmethod
    def create(cls, settings: Settings, metrics: Metrics, client: TritonClient | None = None) -> Services:
        """The services of one app; ``client`` replaces the Triton client built from the settings
        (the seam of the fast test tier, which passes one over a labelled fake gRPC client)."""
        client = client or TritonClient.from_settings(settings)
        repo = settings.model_repository
        budget = ImageBudget(settings.image_decode_budget_bytes, settings.image_decode_wait_s)  # one for all images

        def info(name: str, task: str) -> ModelInfo:
            return read_model_info(repo, name, task)

        def with_variants(names: list[str]) -> list[str]:
            """Each name followed by its built precision variants (``resnet50_vd_int8``, ...)."""
            out = [v for name in names for v in (name, *precision_variants(repo, name, settings.precision_variants))]
            return list(dict.fromkeys(out))

        names = with_variants([*settings.detect_models, *([settings.detect_model] if settings.detect_model else [])])
        detectors = {name: DetectTask(info(name, "detect"), client, metrics, settings, budget) for name in names}
        answerers = {  # each its own tokenizer: bind() windows it to its model's sequence length
            name: QATask(info(name, "qa"), client, metrics, settings, new_tokenizer(settings))
            for name in with_variants([settings.qa_model])
        }
        services = cls(
            client=client,
            qa=answerers[settings.qa_model],
            answerers=answerers,
            detect=detectors[settings.detect_model or default_detector([t.model for t in detectors.values()])],
            detectors=detectors,
            classify={
                name: ClassifyTask(info(name, "classify"), client, metrics, settings, budget)
                for name in with_variants(settings.classify_models)
            },
        )
        services.health = client.health = ModelHealth([m.name for m in services.models])
        client.on_call = _call_observer(metrics)
        services.executor = concurrent.futures.ThreadPoolExecutor(settings.task_threads, thread_name_prefix="task")
        for task in services.tasks:
            task.executor = services.executor
        services.prober = Prober(
            services.health,
            client.probe,
            metrics,
            settings.health_probe_interval_s,
            settings.health_probe_timeout_s,
            settings.health_probe_retry_interval_s,
        )
        if client.pool is not None:
            services.sweeper = RegionSweeper(
                client.sweep_regions, settings.triton_shared_memory_sweep_s, metrics.shared_memory_swept.inc
            )
        return services

    async def bind(self, settings: Settings) -> None:
        """Give each task its model's tensor sizes, from the model repository or else from Triton.

        Raises :class:`~gateway.model_io.ShapeMismatch` when a size setting disagrees with a model,
        and :class:`~gateway.errors.TritonUnavailable` when a configuration can be read from neither
        within ``model_config_wait_s``: the gateway does not start.
        """
        names = list(dict.fromkeys(task.model.name for task in self.tasks))
        found = {name: read_model_io(settings.model_repository, name) for name in names}
        io = {name: model_io for name, model_io in found.items() if model_io is not None}
        if missing := [name for name in names if name not in io]:
            LOGGER.info("no configuration of %s under %s: reading it from Triton", missing, settings.model_repository)
            io.update(await self.client.model_io(missing, settings.model_config_wait_s))
        for task in self.tasks:
            task.bind(io[task.model.name])

    @property
    def tasks(self) -> list[Task[Any, Any, Any]]:
        detectors = self.detectors or {self.detect.model.name: self.detect}
        answerers = self.answerers or {self.qa.model.name: self.qa}
        return [*answerers.values(), *detectors.values(), *self.classify.values()]

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

    def answerer(self, name: str | None) -> QATask:
        if name is None:
            return self.qa
        answerers = self.answerers or {self.qa.model.name: self.qa}
        try:
            return answerers[name]
        except KeyError:
            raise UnknownModel(f"unknown QA model {name!r}; choose one of {sorted(answerers)}") from None

    def detector(self, name: str | None) -> DetectTask:
        if name is None:
            return self.detect
        try:
            return self.detectors[name]
        except KeyError:
            raise UnknownModel(f"unknown detection model {name!r}; choose one of {sorted(self.detectors)}") from None

    async def close(self) -> None:
        if self.prober is not None:
            await self.prober.stop()
        if self.sweeper is not None:
            await self.sweeper.stop()
        for task in self.tasks:
            await task.close()
        await self.client.close()
        if self.executor is not None:
            self.executor.shutdown(wait=False)


def _call_observer(metrics: Metrics) -> Callable[[str, int, int], None]:
    """Records each Triton call's merged request count, its labelled child resolved once per model."""
    children: dict[str, Any] = {}

    def observe(model: str, requests: int, rows: int) -> None:
        child = children.get(model)
        if child is None:
            child = children[model] = metrics.call_requests.labels(model)
        child.observe(requests)

    return observe
