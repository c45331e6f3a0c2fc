"""``manifest.json``: what an engine artifact is, how it was built, and whether its weights are trained.

Written by the builder next to the engine file; read by the Triton models (to find the engine)
and reported by the gateway (so an untrained model is never mistaken for a trained one).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any, Literal

MANIFEST_NAME = "manifest.json"
WeightsKind = Literal["untrained", "checkpoint", "pretrained", "none"]


@dataclasses.dataclass(frozen=True)
class Manifest:
    """Description of one built engine.

    Args:
        model: model name (also the Triton model name).
        task: ``qa``, ``detect`` or ``classify``.
        architecture: e.g. ``bert``, ``yolov5``.
        config: the architecture's hyper-parameters.
        weights: ``untrained`` (deterministic random init), ``checkpoint`` (user-supplied), ``pretrained``,
            or ``none`` (a null engine: no weights at all).
        weights_source: where the weights came from (a path, a package, or the random seed).
        weights_sha256: digest of the weights file, empty for random init.
        engine_file: engine file name, relative to the manifest.
        engine_format: ``onnx`` or ``magicmind``; None for a benchmark-only null engine (no engine
            file; zero outputs of the real names, shapes and dtypes; see :class:`~engine_runtime.engine.NullEngine`).
        precision: ``fp32``, ``fp16`` or ``int8``; ``none`` for a null engine.
        engine_sha256: digest of the engine file.
        inputs: ``{name: {"dtype": ..., "shape": [...]}}`` with -1 for the batch dimension.
        outputs: same for outputs.
        built_at: ISO-8601 UTC build time.
        builder: versions of the tools that built it.
        magicmind_config: file name (next to the manifest) of the Cambricon MagicMind ``BuilderConfig``
            JSON for this engine (see :mod:`magicmind_build.magicmind`); empty when none was written.
        calibration: for an ``int8`` engine quantized with calibration data, ``{"method": "minmax" |
            "entropy" | "percentile", "sha256": digest of the calibration set, "count": samples used,
            "source": where the set came from}``; ``{"method": "dynamic"}`` for dynamic INT8 (no set);
            None for fp32/fp16.
        base_model: for a precision variant (e.g. ``resnet50_vd_int8``), the FP32 model it was converted
            from (``resnet50_vd``); None for the FP32 model itself.
        accuracy: agreement with the FP32 model, written by ``python -m magicmind_build.evaluate``
            (``{"metric": value, ..., "set_sha256", "count", "weights"}``); None until evaluated.
    """

    model: str
    task: str
    architecture: str
    config: dict[str, Any]
    weights: WeightsKind
    weights_source: str
    weights_sha256: str
    engine_file: str
    engine_format: str | None
    precision: str
    engine_sha256: str
    inputs: dict[str, dict[str, Any]]
    outputs: dict[str, dict[str, Any]]
    built_at: str
    builder: dict[str, str]
    magicmind_config: str = ""
    calibration: dict[str, Any] | None = None
    base_model: str | None = None
    accuracy: dict[str, Any] | None = None

    @property
    def trained(self) -> bool:
        return self.weights in ("checkpoint", "pretrained")

    @property
    def null(self) -> bool:
        """A benchmark-only null engine: outputs are zeros, never a model result."""
        return self.engine_format is None

    def write(self, directory: pathlib.Path) -> pathlib.Path:
        path = pathlib.Path(directory) / MANIFEST_NAME
        path.write_text(json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def read(cls, directory: pathlib.Path) -> Manifest:
        data = json.loads((pathlib.Path(directory) / MANIFEST_NAME).read_text())
        return cls(**data)
