"""Base of the Triton Python-backend models in ``triton_repo/``.

Everything is loaded in ``initialize``. ``execute`` validates each request, concatenates all
valid requests into ONE engine call, splits the outputs back, and answers one response per
request; a bad request gets its own ``TritonError`` and never affects the others. A request
its client has cancelled (gRPC cancellation or deadline) is answered with a ``CANCELLED``
error and never reaches the engine.

Each model exports, through Triton's metrics endpoint, the time its engine calls took:
``mm_engine_cpu_us`` (CPU time of the stub process during engine calls: ONNX Runtime's threads
included), ``mm_engine_wall_us`` and ``mm_stub_cpu_us`` (CPU time of the stub process inside
``execute``, engine included), all counters labelled ``model``. Benchmarks subtract them from the
stub's CPU time to tell the engine, this Python code and the backend's own work apart. The sums
reach tritonserver from a background thread every ``metrics_flush_ms`` (config parameter, default
500 ms), not on every ``execute``: a reader waits that long after the load to see all of it.

Importable only inside Triton's Python backend (it needs ``triton_python_backend_utils``).
"""

from __future__ import annotations

import json
import logging
import pathlib
import threading
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils  # type: ignore[import-not-found]

from engine_runtime.batching import InvalidInput, concat_requests, split_outputs
from engine_runtime.engine import EngineError, load_engine, tensorrt_options
from engine_runtime.manifest import MANIFEST_NAME, Manifest

LOGGER = logging.getLogger(__name__)

# Default period of the engine metrics' flush (config parameter ``metrics_flush_ms``).
METRICS_FLUSH_MS = 500

# Tensors cross the Python-backend stub through DLPack under NumPy 2, through NumPy under NumPy 1.
# The stub of tritonserver 2.51 (nvidia-pytriton 0.7.0) is built with a pybind11 older than 2.12, whose
# NumPy interop assumes NumPy 1's C ABI. Under NumPy 2 (measured with 2.2.6), ``Tensor.as_numpy()`` returns
# wrong values (a request's int64 [1, 2, 3, 40] read as [1, 1, 1, 1]) and ``pb_utils.Tensor(name, array)``
# sends 0 bytes (the gateway then failed to reshape the empty output: /qa answered 500). DLPack goes around
# pybind11's NumPy layer and is exact under NumPy 2; under NumPy 1.26, handing the stub a NumPy DLPack
# capsule breaks it ("PyCapsule_GetPointer called with incorrect name", then "Stub process is not
# healthy"), so NumPy 1 keeps the NumPy path. tests/triton_repo/test_numpy_abi.py serves the models with a
# NumPy 2 stub.
USE_DLPACK = np.lib.NumpyVersion(np.__version__) >= "2.0.0"


def input_array(tensor: Any) -> np.ndarray:
    """A request's input tensor as an array (read-only under DLPack: a view of the request's memory)."""
    return np.from_dlpack(tensor) if USE_DLPACK else tensor.as_numpy()


def output_tensor(name: str, array: np.ndarray) -> Any:
    """A ``pb_utils.Tensor`` holding ``array``.

    Under DLPack a C-contiguous, writeable one: the stub requires C order, and NumPy 2 refuses to export a
    read-only array to the stub's DLPack version (``BufferError``; the null engine's cached zeros are
    read-only), so such an array is copied.
    """
    if USE_DLPACK:
        if not (array.flags.c_contiguous and array.flags.writeable):
            array = np.array(array, order="C", copy=True)
        return pb_utils.Tensor.from_dlpack(name, array)
    return pb_utils.Tensor(name, array)


def _parameter(config: Mapping[str, Any], key: str, default: str = "") -> str:
    value = config.get("parameters", {}).get(key, {}).get("string_value", "")
    return value or default


class _EngineCounters:
    """Triton custom metrics (Python backend >= 23.05): engine CPU and wall microseconds per model.

    Every ``Metric.increment`` is a round trip between the stub and tritonserver (about 30-40 us of
    CPU in the two processes together on the reference host), so ``execute`` only adds to local sums
    and a background thread sends them every ``flush_interval_s`` (and once more at ``close``): the
    counters lag by at most that interval, and cost a few round trips per second instead of three
    per ``execute``.

    Holds the metric families too: Triton refuses a metric whose family was garbage-collected.

    Args:
        model: the ``model`` label.
        flush_interval_s: how often pending sums are sent to tritonserver.
    """

    def __init__(self, model: str, flush_interval_s: float) -> None:
        family = pb_utils.MetricFamily
        self.families = (
            family(name="mm_engine_cpu_us", description="CPU us of the stub during engine calls", kind=family.COUNTER),
            family(name="mm_engine_wall_us", description="Wall-clock us of engine calls", kind=family.COUNTER),
            family(name="mm_stub_cpu_us", description="CPU us of the stub inside execute", kind=family.COUNTER),
        )
        self.metrics = [f.Metric(labels={"model": model}) for f in self.families]
        self._pending = [0.0, 0.0, 0.0]
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._interval = flush_interval_s
        self._thread = threading.Thread(target=self._run, name=f"{model}-metrics", daemon=True)
        self._thread.start()

    def add(self, cpu_s: float, wall_s: float, execute_cpu_s: float) -> None:
        with self._lock:
            self._pending[0] += cpu_s
            self._pending[1] += wall_s
            self._pending[2] += execute_cpu_s

    def flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, [0.0, 0.0, 0.0]
        for metric, seconds in zip(self.metrics, pending):
            if seconds:
                metric.increment(seconds * 1e6)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.flush()
            except Exception:  # a failed send must not end the thread; the sums are lost, not the model
                LOGGER.exception("sending engine metrics failed")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        try:
            self.flush()
        except Exception:  # unloading goes on without the last sums
            LOGGER.exception("sending engine metrics failed")


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
            kwargs["tensorrt_options"] = tensorrt_options(self.model_config)
        elif engine_file.endswith(".mm"):
            kwargs["device_id"] = int(args.get("model_instance_device_id") or 0)  # the MLU of this instance
        self.engine = load_engine(version_dir / engine_file, self.manifest, **kwargs)
        has_metrics = hasattr(pb_utils, "MetricFamily")
        flush_s = float(_parameter(self.model_config, "metrics_flush_ms", str(METRICS_FLUSH_MS))) / 1000
        self._counters = _EngineCounters(args["model_name"], flush_s) if has_metrics else None
        self.input_names = [i["name"] for i in self.model_config["input"]]
        self.output_names = [o["name"] for o in self.model_config["output"]]
        pb_utils.Logger.log_info(
            f"{args['model_name']}: {self.engine.description}, {self.manifest.weights} weights, "
            f"config {self.manifest.config}"
        )

    def validate(self, feeds: Mapping[str, np.ndarray]) -> None:
        """Raise :class:`InvalidInput` for a request the engine must not see. Override per model."""

    def _read(self, request: Any) -> dict[str, np.ndarray]:
        feeds = {name: input_array(pb_utils.get_input_tensor_by_name(request, name)) for name in self.input_names}
        self.validate(feeds)
        return feeds

    def execute(self, requests: list[Any]) -> list[Any]:
        start = time.process_time()
        engine_time = [0.0, 0.0]  # CPU and wall seconds of the engine call
        try:
            return self._execute(requests, engine_time)
        finally:
            if self._counters is not None:
                self._counters.add(engine_time[0], engine_time[1], time.process_time() - start)

    def _execute(self, requests: list[Any], engine_time: list[float]) -> list[Any]:
        responses: list[Any] = [None] * len(requests)
        valid: list[int] = []
        feeds: list[dict[str, np.ndarray]] = []
        # Requests their client cancelled never get here: Triton's dynamic batcher (every model of the
        # repository has one; tests/triton_repo/test_cancellation.py) drops them when it forms the batch,
        # just before ``execute``. Asking again per request (``request.is_cancelled()``) was one stub ->
        # tritonserver round trip each (~0.07 ms of the Triton tier's CPU per request, measured).
        for i, request in enumerate(requests):
            try:
                feeds.append(self._read(request))
                valid.append(i)
            except InvalidInput as exc:
                responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc)))
        if valid:
            batch, sizes = concat_requests(feeds, self.input_names)
            cpu, wall = time.process_time(), time.perf_counter()
            try:
                outputs = self.engine.run(batch)
            except EngineError as exc:
                LOGGER.exception("engine call failed")
                error = pb_utils.TritonError(f"engine failed: {exc}")
                for i in valid:
                    responses[i] = pb_utils.InferenceResponse(error=error)
                return responses
            finally:
                engine_time[:] = time.process_time() - cpu, time.perf_counter() - wall
            for i, parts in zip(valid, split_outputs(outputs, self.output_names, sizes)):
                responses[i] = pb_utils.InferenceResponse(
                    output_tensors=[output_tensor(name, parts[name]) for name in self.output_names]
                )
        return responses

    def finalize(self) -> None:
        self.engine = None  # type: ignore[assignment]
        if self._counters is not None:
            self._counters.close()
        self._counters = None  # metrics, then their families
