"""The engine runtime: one interface, an ONNX Runtime implementation and a MagicMind one.

Used by the Triton models and by the bare-engine measurements; needs NumPy and the runtime only.

Engine artifacts live in a directory next to a ``manifest.json`` written by the builder
(see :mod:`engine_runtime.manifest`). A manifest with ``engine_format: null`` describes a
benchmark-only :class:`NullEngine`, refused unless ``MM_ALLOW_NULL_ENGINE=1``.
"""

from __future__ import annotations

import abc
import dataclasses
import logging
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from engine_runtime.manifest import Manifest

LOGGER = logging.getLogger(__name__)

NULL_ENGINE_ENV = "MM_ALLOW_NULL_ENGINE"


class EngineError(RuntimeError):
    """An engine could not be loaded or run."""


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """One engine input or output.

    Args:
        name: tensor name.
        dtype: NumPy dtype name (``"int64"``, ``"uint8"``, ``"float32"``).
        shape: shape with ``-1`` for the variable batch dimension.
    """

    name: str
    dtype: str
    shape: tuple[int, ...]


class Engine(abc.ABC):
    """A loaded inference engine with a variable batch dimension."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @abc.abstractmethod
    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch; ``feeds`` maps input names to arrays, the result maps output names."""

    @property
    def description(self) -> str:
        return type(self).__name__


_GPU_PROVIDERS = frozenset({"CUDAExecutionProvider", "TensorrtExecutionProvider"})
_ORT_TYPES = {"tensor(float)": "float32", "tensor(int64)": "int64", "tensor(uint8)": "uint8", "tensor(int32)": "int32"}


def default_onnx_providers() -> list[str]:
    """TensorRT, then CUDA, then CPU: whichever this onnxruntime build offers."""
    import onnxruntime as ort

    available = set(ort.get_available_providers())
    preferred = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    return [p for p in preferred if p in available]


TENSORRT_OPTION_PREFIX = "trt_"
TENSORRT_OPT_BATCH = "tensorrt_opt_batch"
_PROFILE_OPTIONS = ("trt_profile_min_shapes", "trt_profile_opt_shapes", "trt_profile_max_shapes")


def tensorrt_options(model_config: Mapping[str, Any]) -> dict[str, str]:
    """ONNX Runtime TensorRT-provider options from a Triton model config (the JSON Triton hands ``initialize``).

    Every ``parameters`` entry whose key starts with ``trt_`` is passed verbatim (ONNX Runtime's option names:
    ``trt_engine_cache_enable``, ``trt_engine_cache_path``, ``trt_fp16_enable``, ...). Unless the config sets
    ``trt_profile_*_shapes`` itself, one optimization profile covering the whole batch range is derived from the
    inputs and ``max_batch_size``: batch 1 (min), ``tensorrt_opt_batch`` (opt; default ``max_batch_size``) and
    ``max_batch_size`` (max), e.g. ``input_ids:1x128,attention_mask:1x128``. Without it TensorRT builds its engine
    for the first shapes it sees and rebuilds it for every larger batch. No profile is derived for a model
    without batching or with a variable non-batch dimension. Raises ``ValueError`` for a bad opt batch.
    """
    parameters = model_config.get("parameters") or {}
    values = {key: str((value or {}).get("string_value", "")) for key, value in parameters.items()}
    options = {key: value for key, value in values.items() if key.startswith(TENSORRT_OPTION_PREFIX) and value}
    max_batch = int(model_config.get("max_batch_size") or 0)
    if max_batch <= 0 or any(key in options for key in _PROFILE_OPTIONS):
        return options
    inputs = [(str(i["name"]), [int(d) for d in i.get("dims", [])]) for i in model_config.get("input", [])]
    if not inputs or any(d < 0 for _, dims in inputs for d in dims):
        return options
    opt_batch = int(values.get(TENSORRT_OPT_BATCH) or max_batch)
    if not 1 <= opt_batch <= max_batch:
        raise ValueError(f"{TENSORRT_OPT_BATCH}={opt_batch} is outside the batch range 1..{max_batch}")
    for key, batch in zip(_PROFILE_OPTIONS, (1, opt_batch, max_batch)):
        options[key] = ",".join(f"{name}:{'x'.join(str(d) for d in (batch, *dims))}" for name, dims in inputs)
    return options


class OnnxRuntimeEngine(Engine):
    """An ONNX model run by ONNX Runtime.

    Args:
        path: the ``.onnx`` file.
        providers: execution providers in order of preference; :func:`default_onnx_providers` when None.
        intra_op_threads: threads per operator; ONNX Runtime's default when 0.
        device_id: GPU ordinal for the CUDA/TensorRT providers (Triton's ``model_instance_device_id``).
        spin: let idle intra-op threads spin (lower latency when the engine has the CPU to itself).
        tensorrt_options: further TensorRT-provider options (see :func:`tensorrt_options`); used only when
            the TensorRT provider is.
    """

    def __init__(
        self,
        path: pathlib.Path,
        providers: Sequence[str] | None = None,
        intra_op_threads: int = 0,
        device_id: int = 0,
        spin: bool = False,
        tensorrt_options: Mapping[str, str] | None = None,
    ) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if not spin:
            # Idle worker threads sleep instead of spinning: several engines (and the gateway)
            # share the CPU, and a spinning pool steals it from whoever has work.
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        names = list(providers or default_onnx_providers())
        provider_options: list[dict[str, str]] = [
            {"device_id": str(device_id)} if p in _GPU_PROVIDERS else {} for p in names
        ]
        if "TensorrtExecutionProvider" in names:
            provider_options[names.index("TensorrtExecutionProvider")].update(tensorrt_options or {})
        try:
            self.session = ort.InferenceSession(
                str(path), sess_options=options, providers=names, provider_options=provider_options
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise EngineError(f"cannot load {path}: {exc}") from exc
        self.path = pathlib.Path(path)
        self.inputs = tuple(self._spec(a) for a in self.session.get_inputs())
        self.outputs = tuple(self._spec(a) for a in self.session.get_outputs())
        self._output_names = [o.name for o in self.outputs]

    @staticmethod
    def _spec(arg: Any) -> TensorSpec:
        shape = tuple(d if isinstance(d, int) else -1 for d in arg.shape)
        return TensorSpec(str(arg.name), _ORT_TYPES.get(str(arg.type), str(arg.type)), shape)

    @property
    def description(self) -> str:
        return f"onnxruntime {'/'.join(self.session.get_providers())}"

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            results = self.session.run(self._output_names, dict(feeds))
        except Exception as exc:  # onnxruntime's errors (Fail, InvalidArgument, ...) derive from Exception only
            raise EngineError(f"{self.path.name}: {exc}") from exc
        return dict(zip(self._output_names, results))


class MagicMindEngine(Engine):
    """A serialized Cambricon MagicMind model run on an MLU.

    Untested here: MagicMind and an MLU cannot exist on the machines this project is built on.

    Args:
        path: the serialized ``.mm`` model.
        device_id: MLU ordinal.
    """

    def __init__(self, path: pathlib.Path, device_id: int = 0) -> None:
        try:
            import magicmind.python.runtime as mm  # type: ignore[import-not-found]
        except ImportError as exc:
            raise EngineError("MagicMind runtime is not installed (no MLU here)") from exc
        self.path = pathlib.Path(path)
        self.device = mm.Device()
        self.device.id = device_id
        if not self.device.active().ok():
            raise EngineError(f"cannot activate MLU {device_id}")
        self.model = mm.Model()
        self.model.deserialize_from_file(str(path))
        self.engine = self.model.create_i_engine()
        self.context = self.engine.create_i_context()
        self.queue = self.device.create_queue()
        # Data types come from the manifest; the serialized model is only asked for names.
        self.inputs = tuple(TensorSpec(n, "", ()) for n in self.model.get_input_names())
        self.outputs = tuple(TensorSpec(n, "", ()) for n in self.model.get_output_names())

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        inputs = self.context.create_inputs()
        for tensor, spec in zip(inputs, self.inputs):
            tensor.from_numpy(np.ascontiguousarray(feeds[spec.name]))
        outputs: list[Any] = []
        status = self.context.enqueue(inputs, outputs, self.queue)
        if not status.ok() or not self.queue.sync().ok():
            raise EngineError(f"MagicMind enqueue failed: {status}")
        return {spec.name: out.asnumpy() for spec, out in zip(self.outputs, outputs)}


class NullEngine(Engine):
    """BENCHMARK ONLY: answers every batch with zeros of the real output names, shapes and dtypes,
    at (almost) no cost, so that a benchmark measures what serving costs around an engine as fast
    as an accelerator's. Never a model result: its manifest says ``engine_format: null``,
    ``precision: "none"`` and ``weights: "none"``, and the gateway reports exactly that.

    Refused unless the process runs with ``MM_ALLOW_NULL_ENGINE=1``.

    Args:
        inputs: the real engine's inputs (batch dimension -1).
        outputs: the real engine's outputs (batch dimension -1).
    """

    def __init__(self, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]) -> None:
        if os.environ.get(NULL_ENGINE_ENV) != "1":
            raise EngineError(
                f"refusing a null engine (benchmark only, outputs are zeros); set {NULL_ENGINE_ENV}=1 to allow it"
            )
        self.inputs = tuple(inputs)
        self.outputs = tuple(outputs)
        self._zeros: dict[str, np.ndarray] = {}

    @classmethod
    def from_manifest(cls, manifest: Manifest) -> NullEngine:
        def specs(tensors: Mapping[str, Mapping[str, Any]]) -> list[TensorSpec]:
            return [TensorSpec(name, str(t["dtype"]), tuple(int(d) for d in t["shape"])) for name, t in tensors.items()]

        return cls(specs(manifest.inputs), specs(manifest.outputs))

    @property
    def description(self) -> str:
        return "NULL ENGINE (zero outputs, benchmark only)"

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = len(next(iter(feeds.values())))
        result = {}
        for spec in self.outputs:
            zeros = self._zeros.get(spec.name)
            if zeros is None or len(zeros) < rows:  # grown once to the largest batch seen, then sliced
                zeros = self._zeros[spec.name] = np.zeros((rows, *spec.shape[1:]), dtype=spec.dtype)
                zeros.flags.writeable = False
            result[spec.name] = zeros[:rows]
        return result


def load_engine(path: pathlib.Path, manifest: Manifest | None = None, **kwargs: object) -> Engine:
    """Load an engine: a :class:`NullEngine` when ``manifest`` says ``engine_format: null``, else the
    file by its suffix: ``.mm`` -> MagicMind, ``.onnx`` -> ONNX Runtime (``kwargs`` go to that engine)."""
    if manifest is not None and manifest.engine_format is None:
        LOGGER.warning("%s: NULL ENGINE (benchmark only): outputs are zeros", manifest.model)
        return NullEngine.from_manifest(manifest)
    path = pathlib.Path(path)
    if not path.exists():
        raise EngineError(f"engine file {path} does not exist; build it with `python -m magicmind_build`")
    if path.suffix == ".mm":
        return MagicMindEngine(path, **kwargs)  # type: ignore[arg-type]
    if path.suffix == ".onnx":
        return OnnxRuntimeEngine(path, **kwargs)  # type: ignore[arg-type]
    raise EngineError(f"unknown engine format {path.suffix!r} for {path}")
