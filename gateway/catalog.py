"""What the gateway knows of each served model: its engine manifest, read once at start-up."""

from __future__ import annotations

import json
import logging
import pathlib

from pydantic import BaseModel

from engine_runtime.manifest import MANIFEST_NAME  # stdlib-only module: no engine or torch import

LOGGER = logging.getLogger(__name__)


class ModelInfo(BaseModel):
    """Provenance of a served model.

    ``weights`` is ``untrained`` (deterministic random init: outputs are not meaningful),
    ``checkpoint``, ``pretrained``, ``none`` (a benchmark-only null engine, ``engine_format`` None:
    answers are zeros), or ``unknown`` when the gateway cannot read the manifest.
    A precision variant (e.g. ``resnet50_vd_int8``) names its FP32 ``base_model``; ``calibration`` is its
    INT8 calibration (method, the set's sha256, count), ``accuracy`` its measured agreement with FP32.
    """

    name: str
    task: str
    weights: str
    architecture: str | None = None
    weights_source: str | None = None
    precision: str | None = None
    engine_format: str | None = None
    config: dict[str, object] | None = None
    base_model: str | None = None
    calibration: dict[str, object] | None = None
    accuracy: dict[str, object] | None = None


def read_model_info(repository: pathlib.Path | None, name: str, task: str) -> ModelInfo:
    """Read ``<repository>/<name>/<newest version>/manifest.json``; ``weights="unknown"`` if absent."""
    if repository is not None:
        versions = sorted(
            (p for p in (repository / name).glob("*") if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name)
        )
        for version in reversed(versions):
            path = version / MANIFEST_NAME
            if path.exists():
                data = json.loads(path.read_text())
                if "engine_format" in data and data["engine_format"] is None:
                    LOGGER.warning("%s: NULL ENGINE (benchmark only): Triton answers zeros, not model results", name)
                return ModelInfo(
                    name=name,
                    task=task,
                    weights=data["weights"],
                    architecture=data.get("architecture"),
                    weights_source=data.get("weights_source"),
                    precision=data.get("precision"),
                    engine_format=data.get("engine_format"),
                    config=data.get("config"),
                    base_model=data.get("base_model"),
                    calibration=data.get("calibration"),
                    accuracy=data.get("accuracy"),
                )
    LOGGER.warning("no manifest for %s under %s; weights provenance unknown", name, repository)
    return ModelInfo(name=name, task=task, weights="unknown")


def precision_variants(repository: pathlib.Path | None, name: str, precisions: list[str]) -> list[str]:
    """The built precision variants of ``name`` (``<name>_<precision>`` directories holding a manifest)."""
    if repository is None:
        return []
    return [
        f"{name}_{precision}"
        for precision in precisions
        if any((repository / f"{name}_{precision}").glob("*/" + MANIFEST_NAME))
    ]
