"""Base of the Triton Python-backend models in ``triton_repo/``.

Everything is loaded in ``initialize``. ``execute`` validates each request, concatenates all
valid requests into ONE engine call, splits the outputs back, and answers one response per
request; a bad request gets its own ``TritonError`` and never affects the others. A request
its client has cancelled (gRPC cancellation or deadline) is answered with a ``CANCELLED``
error and never reaches the engine.

Importable only inside Triton's Python backend (it needs ``triton_python_backend_utils``).
"""

from __future__ import annotations

import json
import logging
import pathlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils  # type: ignore[import-not-found]

from magicmind_build.batching import InvalidInput, concat_requests, split_outputs
from magicmind_build.engine import EngineError, load_engine
from magicmind_build.manifest import MANIFEST_NAME, Manifest

LOGGER = logging.getLogger(__name__)


def _parameter(config: Mapping[str, Any], key: str, default: str = "") -> str:
    value = config.get("parameters", {}).get(key, {}).get("string_value", "")
    return value or default


class EngineModel:
    """A Triton model whose ``execute`` batches every request into one engine call."""

    def initialize(self, args: dict[str, str]) -> None:
        self.model_config = json.loads(args["model_config"])
        version_dir = pathlib.Path(args["model_repository"]) / args["model_version"]
        if not (version_dir / MANIFEST_NAME).exists():
            raise EngineError(
                f"no engine built in {version_dir}; run `python -m magicmind_build --repo {version_dir.parent.parent}`"
            )
        self.manifest = Manifest.read(version_dir)
        engine_file = _parameter(self.model_config, "engine", self.manifest.engine_file)
        kwargs: dict[str, Any] = {}
        if engine_file.endswith(".onnx"):
            providers = _parameter(self.model_config, "providers")
            kwargs["providers"] = [p for p in providers.split(",") if p] or None
            kwargs["intra_op_threads"] = int(_parameter(self.model_config, "intra_op_threads", "0"))
            kwargs["spin"] = _parameter(self.model_config, "allow_spinning", "false").lower() == "true"
            # With instance_group KIND_GPU each instance runs on its own device.
            kwargs["device_id"] = int(args.get("model_instance_device_id") or 0)
        self.engine = load_engine(version_dir / engine_file, **kwargs)
        self.input_names = [i["name"] for i in self.model_config["input"]]
        self.output_names = [o["name"] for o in self.model_config["output"]]
        pb_utils.Logger.log_info(
            f"{args['model_name']}: {self.engine.description}, {self.manifest.weights} weights, "
            f"config {self.manifest.config}"
        )

    def validate(self, feeds: Mapping[str, np.ndarray]) -> None:
        """Raise :class:`InvalidInput` for a request the engine must not see. Override per model."""

    def _read(self, request: Any) -> dict[str, np.ndarray]:
        feeds = {name: pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name in self.input_names}
        self.validate(feeds)
        return feeds

    def execute(self, requests: list[Any]) -> list[Any]:
        responses: list[Any] = [None] * len(requests)
        valid: list[int] = []
        feeds: list[dict[str, np.ndarray]] = []
        for i, request in enumerate(requests):
            if request.is_cancelled():
                pb_utils.Logger.log_verbose(f"request {request.request_id()!r} cancelled; not run")
                responses[i] = pb_utils.InferenceResponse(
                    error=pb_utils.TritonError("request cancelled by its client", pb_utils.TritonError.CANCELLED)
                )
                continue
            try:
                feeds.append(self._read(request))
                valid.append(i)
            except InvalidInput as exc:
                responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc)))
        if valid:
            batch, sizes = concat_requests(feeds, self.input_names)
            try:
                outputs = self.engine.run(batch)
            except EngineError as exc:
                LOGGER.exception("engine call failed")
                error = pb_utils.TritonError(f"engine failed: {exc}")
                for i in valid:
                    responses[i] = pb_utils.InferenceResponse(error=error)
                return responses
            for i, parts in zip(valid, split_outputs(outputs, self.output_names, sizes)):
                responses[i] = pb_utils.InferenceResponse(
                    output_tensors=[pb_utils.Tensor(name, parts[name]) for name in self.output_names]
                )
        return responses

    def finalize(self) -> None:
        self.engine = None  # type: ignore[assignment]
