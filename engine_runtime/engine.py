"""The engine runtime: one interface, an ONNX Runtime implementation and a MagicMind one.

Used by the Triton models and by the bare-engine measurements; needs NumPy and the runtime only.

Engine artifacts live in a directory next to a ``manifest.json`` written by the builder
(see :mod:`engine_runtime.manifest`). A manifest with ``engine_format: null`` describes a
benchmark-only :class:`NullEngine`, refused unless ``MM_ALLOW_NULL_ENGINE=1``.
"""

from __future__ import annotations

import abc
import dataclasses
import importlib
import json
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


def session_summary(options: Any) -> str:
    """The ONNX Runtime session options that decide an engine's CPU cost, as one comparable string:
    intra-op and inter-op threads (0: ONNX Runtime's default, one per core the process may run on),
    the CPUs this process may run on, execution mode, graph optimisation and spinning. The Triton model
    logs it and ``benchmarks/ceiling.py`` checks that its bare engine's is the same."""
    try:
        spinning = options.get_session_config_entry("session.intra_op.allow_spinning")
    except RuntimeError:  # not set: ONNX Runtime's default, spinning on
        spinning = "1"
    return (
        f"intra_op {options.intra_op_num_threads}, inter_op {options.inter_op_num_threads}, "
        f"cpus {len(os.sched_getaffinity(0))}, {str(options.execution_mode).rsplit('.', 1)[-1]}, "
        f"{str(options.graph_optimization_level).rsplit('.', 1)[-1]}, spinning {'off' if spinning == '0' else 'on'}"
    )


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
        self.session_summary = session_summary(self.session.get_session_options())

    @staticmethod
    def _spec(arg: Any) -> TensorSpec:
        shape = tuple(d if isinstance(d, int) else -1 for d in arg.shape)
        return TensorSpec(str(arg.name), _ORT_TYPES.get(str(arg.type), str(arg.type)), shape)

    @property
    def description(self) -> str:
        return f"onnxruntime {'/'.join(self.session.get_providers())} ({self.session_summary})"

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            results = self.session.run(self._output_names, dict(feeds))
        except Exception as exc:  # onnxruntime's errors (Fail, InvalidArgument, ...) derive from Exception only
            raise EngineError(f"{self.path.name}: {exc}") from exc
        return dict(zip(self._output_names, results))


MAGICMIND_MODULE = "magicmind.python.runtime"

# MagicMind DataType names -> NumPy dtype names (the enum's member names, e.g. ``DataType.INT32``).
_MM_TYPES = {
    "FLOAT32": "float32",
    "FLOAT16": "float16",
    "INT64": "int64",
    "INT32": "int32",
    "INT16": "int16",
    "INT8": "int8",
    "UINT8": "uint8",
    "BOOL": "bool",
}


def load_magicmind() -> Any:
    """Import ``magicmind.python.runtime`` (the Cambricon MagicMind Python SDK).

    The one seam to the SDK: imported by module name, so tests put a labelled fake under that
    name in ``sys.modules`` (``tests/engine_runtime/fake_magicmind.py``) and run the same code.
    """
    try:
        return importlib.import_module(MAGICMIND_MODULE)
    except ImportError as exc:
        raise EngineError(
            f"the MagicMind SDK ({MAGICMIND_MODULE}) is not importable: run on an MLU host in Cambricon's "
            "MagicMind image (see docs/deploy.md, 'Deploying on Cambricon MLUs')"
        ) from exc


def magicmind_dtype(data_type: Any) -> str:
    """The NumPy dtype name of a MagicMind ``DataType`` enum value."""
    name = getattr(data_type, "name", None) or str(data_type).rsplit(".", 1)[-1]
    try:
        return _MM_TYPES[str(name).upper()]
    except KeyError:
        raise EngineError(f"MagicMind data type {data_type} has no NumPy equivalent here") from None


def _check(status: Any, what: str) -> None:
    """MagicMind calls answer a ``Status``; anything but ``ok()`` is an :class:`EngineError`."""
    if status is not None and not status.ok():
        raise EngineError(f"MagicMind {what} failed: {status}")


class MagicMindEngine(Engine):
    """A serialized Cambricon MagicMind model (``.mm``) run on an MLU.

    Call order, as in the reference Triton model (xiaoqi25478/triton_python_backend_with_magicmind,
    ``yolov5n/triton_codes/mm_models/yolov5n/1/model.py``) and Cambricon's samples (magicmind_cloud,
    dx111/mm_convert ``tools/mm_infer.py``): ``Model.deserialize_from_file``; ``Device`` with ``id``
    then ``active()`` (the device must be current before the engine is created); ``create_i_engine``,
    ``create_i_context``, ``Device.create_queue``. Per batch: ``Device.active()`` again (the current device
    is per thread, and Triton need not call ``execute`` on the thread that loaded the model),
    ``context.create_inputs()``,
    ``from_numpy`` on each input in the model's input order, ``context.enqueue(inputs, outputs, queue)``
    (fills ``outputs``), ``queue.sync()``, then ``asnumpy()`` on each output.

    Names, dtypes and shapes come from the model (``get_input_names``, ``get_input_data_types``,
    ``get_input_dimensions`` and the output counterparts). Before a batch reaches the SDK it is
    checked here, so a caller gets an :class:`EngineError` naming the problem rather than an MLU
    error: every input present, one batch size within the build's ``dim_range`` (read from the
    BuilderConfig JSON the manifest names), each array's non-batch dimensions equal to the model's
    (an NCHW image sent to an NHWC model is refused, not reinterpreted), and its dtype the model's:
    integers are narrowed (int64 token ids to an int32 model, as ``type64to32_conversion`` builds)
    only when every value fits, anything else is refused.

    Tested against a labelled fake of this API subset (``tests/engine_runtime/fake_magicmind.py``),
    and against the real SDK by the same tests where it is importable.

    Args:
        path: the serialized ``.mm`` model.
        device_id: MLU ordinal (Triton's ``model_instance_device_id``).
        manifest: the engine's manifest; its ``magicmind_config`` names the BuilderConfig JSON whose
            ``dim_range`` bounds the batch (unbounded when absent).
    """

    def __init__(self, path: pathlib.Path, device_id: int = 0, manifest: Manifest | None = None) -> None:
        mm = load_magicmind()
        self.path = pathlib.Path(path)
        self.device_id = device_id
        self.model = mm.Model()
        _check(self.model.deserialize_from_file(str(path)), f"deserialize_from_file({self.path.name})")
        self.device = mm.Device()
        self.device.id = device_id
        _check(self.device.active(), f"activating MLU {device_id}")
        self.engine = self.model.create_i_engine()
        if self.engine is None:
            raise EngineError(f"MagicMind create_i_engine failed for {self.path.name} on MLU {device_id}")
        self.context = self.engine.create_i_context()
        if self.context is None:
            raise EngineError(f"MagicMind create_i_context failed for {self.path.name}")
        self.queue = self.device.create_queue()
        if self.queue is None:
            raise EngineError(f"MagicMind create_queue failed on MLU {device_id}")
        self.inputs = self._specs(
            self.model.get_input_names(), self.model.get_input_data_types(), self.model.get_input_dimensions()
        )
        self.outputs = self._specs(
            self.model.get_output_names(), self.model.get_output_data_types(), self.model.get_output_dimensions()
        )
        self.batch_range = self._batch_range(manifest)

    @staticmethod
    def _specs(names: Sequence[str], types: Sequence[Any], dims: Sequence[Any]) -> tuple[TensorSpec, ...]:
        specs = []
        for name, data_type, dim in zip(names, types, dims):
            shape = tuple(int(d) for d in (dim.GetDims() if hasattr(dim, "GetDims") else dim))
            specs.append(TensorSpec(str(name), magicmind_dtype(data_type), (-1, *shape[1:]) if shape else ()))
        return tuple(specs)

    def _batch_range(self, manifest: Manifest | None) -> tuple[int, int] | None:
        config_file = getattr(manifest, "magicmind_config", "") if manifest is not None else ""
        if not config_file:
            return None
        try:
            config = json.loads((self.path.parent / config_file).read_text())
            ranges = config["dim_range"].values()
            return max(int(r["min"][0]) for r in ranges), min(int(r["max"][0]) for r in ranges)
        except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
            raise EngineError(f"cannot read dim_range from {config_file}: {exc}") from exc

    @property
    def description(self) -> str:
        return f"magicmind MLU {self.device_id}"

    def _prepare(self, array: np.ndarray, spec: TensorSpec) -> np.ndarray:
        array = np.asarray(array)
        fits = array.ndim == len(spec.shape) and all(s in (-1, d) for d, s in zip(array.shape[1:], spec.shape[1:]))
        if not fits:
            raise EngineError(
                f"input {spec.name!r}: shape {list(array.shape)} does not fit the model's {list(spec.shape)} "
                "(batch first; image inputs are NHWC)"
            )
        wanted = np.dtype(spec.dtype)
        if array.dtype != wanted:
            if not (array.dtype.kind in "iu" and wanted.kind in "iu"):
                raise EngineError(f"input {spec.name!r}: dtype {array.dtype} where the model takes {wanted}")
            info = np.iinfo(wanted)
            if array.size and (array.min() < info.min or array.max() > info.max):
                raise EngineError(f"input {spec.name!r}: values outside {wanted} for the model's {wanted} input")
            array = array.astype(wanted)
        return np.ascontiguousarray(array)

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [spec.name for spec in self.inputs if spec.name not in feeds]
        if missing:
            raise EngineError(f"missing inputs {missing}; the model takes {[s.name for s in self.inputs]}")
        arrays = [self._prepare(feeds[spec.name], spec) for spec in self.inputs]
        batches = {len(a) for a in arrays}
        if len(batches) != 1:
            raise EngineError(f"inputs disagree on the batch size: {sorted(batches)}")
        batch = batches.pop()
        if self.batch_range is not None and not self.batch_range[0] <= batch <= self.batch_range[1]:
            raise EngineError(f"batch {batch} is outside the model's dim_range {list(self.batch_range)}")
        # The current device is per thread: Triton may call execute() from another thread than initialize().
        _check(self.device.active(), f"activating MLU {self.device_id}")
        inputs = self.context.create_inputs()
        if not isinstance(inputs, list | tuple):  # a Status on failure
            raise EngineError(f"MagicMind create_inputs failed: {inputs}")
        for tensor, array, spec in zip(inputs, arrays, self.inputs):
            _check(tensor.from_numpy(array), f"from_numpy({spec.name})")
        outputs: list[Any] = []
        _check(self.context.enqueue(inputs, outputs, self.queue), "enqueue")
        _check(self.queue.sync(), "queue sync")
        if len(outputs) != len(self.outputs):
            raise EngineError(f"MagicMind returned {len(outputs)} outputs, the model declares {len(self.outputs)}")
        return {spec.name: np.asarray(out.asnumpy()) for spec, out in zip(self.outputs, outputs)}


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
        return MagicMindEngine(path, manifest=manifest, **kwargs)  # type: ignore[arg-type]
    if path.suffix == ".onnx":
        return OnnxRuntimeEngine(path, **kwargs)  # type: ignore[arg-type]
    raise EngineError(f"unknown engine format {path.suffix!r} for {path}")
