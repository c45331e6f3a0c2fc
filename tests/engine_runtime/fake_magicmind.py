"""FAKE Cambricon MagicMind SDK, for tests only: a stand-in for ``magicmind.python.runtime``.

THIS IS A FAKE. It has no MLU, compiles nothing and never quantises: a "built" model is a JSON file
naming the source ONNX graph, and "running" it on the fake MLU runs that graph with ONNX Runtime on
the CPU at fp32, whatever the precision mode. What it is for: checking that ``MagicMindEngine`` and
``magicmind_build.magicmind`` call the SDK the way the SDK must be called. It implements exactly the
API subset they use, with the names and call shapes of the real Python API as the reference
(github.com/xiaoqi25478/triton_python_backend_with_magicmind) and Cambricon's samples use it:

- ``Status`` (``ok()``, ``Status.OK()``, ``Status(Code.X, msg)``), ``Code``, ``DataType``, ``Dims``
  (``GetDims``, ``GetDimValue``), ``ModelKind.kOnnx``, ``QuantizationAlgorithm``;
- build: ``parser.Parser(ModelKind.kOnnx).parse(network, path)``, ``Network`` (``get_input_count``),
  ``BuilderConfig.parse_from_string``, ``CalibDataInterface``, ``Calibrator(list)``
  (``set_quantization_algorithm``, ``calibrate(network, config)``), ``Builder.build_model(name, network,
  config)``, ``Model.serialize_to_file``;
- run: ``Model`` (``deserialize_from_file``, ``get_input_names``/``get_output_names``,
  ``get_input_data_types``/``get_output_data_types``, ``get_input_dimensions``/``get_output_dimensions``,
  ``create_i_engine``), ``Device`` (``id``, ``active``, ``create_queue``), ``IEngine.create_i_context``,
  ``IContext.create_inputs``/``enqueue(inputs, outputs, queue)``, ``IRTTensor.from_numpy``/``asnumpy``/
  ``shape``, ``Queue.sync``.

Rules it enforces (each one the reference or the samples follow; the real SDK fails without them):
1. ``Device.active()`` fails for an id at or beyond the device count (``DEVICE_COUNT``).
2. ``Model.create_i_engine()`` returns None unless a device is active in the calling thread (the
   engine's memory lives on the current device; every sample activates before creating it).
3. ``Device.create_queue()`` needs that device active in the calling thread.
4. ``BuilderConfig.parse_from_string``: a JSON object of known keys; ``precision_mode`` one of the six
   modes; ``dim_range`` ``min``/``max`` of equal rank with min <= max; ``convert_input_layout`` between
   NCHW and NHWC, never to the layout it already has. Successive calls merge.
5. ``Builder.build_model``: ``dim_range`` must cover every network input with its rank and fixed
   dimensions; a ``qint*`` precision needs a ``Calibrator.calibrate`` on that network and config first
   (else None).
6. ``Calibrator.calibrate``: a device active; one ``CalibDataInterface`` per network input; each sample
   of the shape ``get_shape()`` and type ``get_data_type()`` declare, within ``dim_range``.
7. ``IRTTensor.from_numpy``: the array's dtype must be the input's data type (no conversion), its rank
   and non-batch dimensions the model's (an NCHW array for an NHWC input is refused).
8. ``IContext.enqueue``: the inputs created by this context, in the model's order, all filled, one
   batch size within the model's ``dim_range``; the queue's device active. It appends the outputs.
9. An output read (``asnumpy``) before ``Queue.sync()`` raises: results exist only after the sync.

Every call is appended to ``CALLS`` as ``(name, detail...)`` so tests can check the protocol;
``CALIBRATION_SAMPLES[input index]`` keeps a copy of every sample a ``Calibrator.calibrate`` read.
``FAIL`` names calls to fail on purpose (``"enqueue"``, ``"sync"``, ``"build_model"``).
"""

from __future__ import annotations

import enum
import json
import pathlib
import sys
import threading
import types
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

FAKE_FORMAT = "FAKE MagicMind model (tests/engine_runtime/fake_magicmind.py): not a real .mm"
DEVICE_COUNT = 1
CALLS: list[tuple[Any, ...]] = []
CALIBRATION_SAMPLES: dict[int, list[np.ndarray]] = {}
FAIL: set[str] = set()
_current = threading.local()

PRECISION_MODES = (
    "force_float32",
    "force_float16",
    "qint8_mixed_float16",
    "qint8_mixed_float32",
    "qint16_mixed_float16",
    "qint16_mixed_float32",
)
CONFIG_KEYS = {
    "archs",
    "graph_shape_mutable",
    "dim_range",
    "precision_config",
    "convert_input_layout",
    "opt_config",
    "computation_preference",
    "insert_bn_before_firstnode",
    "cross_compile_toolchain_path",
}


def reset() -> None:
    """Forget calls, failures and the current device; one device."""
    global DEVICE_COUNT
    CALLS.clear()
    CALIBRATION_SAMPLES.clear()
    FAIL.clear()
    DEVICE_COUNT = 1
    _current.device = None


class Code(enum.Enum):
    OK = 0
    INVALID_ARGUMENT = 1
    OUT_OF_RANGE = 2
    UNAVAILABLE = 3
    INTERNAL = 4


class Status:
    def __init__(self, code: Code = Code.OK, message: str = "") -> None:
        self.code = code
        self.message = message

    @staticmethod
    def OK() -> Status:
        return Status()

    def ok(self) -> bool:
        return self.code is Code.OK

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"


def _error(message: str, code: Code = Code.INVALID_ARGUMENT) -> Status:
    return Status(code, f"FAKE magicmind: {message}")


class DataType(enum.Enum):
    FLOAT32 = "float32"
    FLOAT16 = "float16"
    INT64 = "int64"
    INT32 = "int32"
    INT8 = "int8"
    UINT8 = "uint8"
    BOOL = "bool"


class ModelKind(enum.Enum):
    kOnnx = "onnx"


class QuantizationAlgorithm(enum.Enum):
    LINEAR_ALGORITHM = 0
    EQNM_ALGORITHM = 1


class Dims:
    def __init__(self, dims: Sequence[int]) -> None:
        self._dims = [int(d) for d in dims]

    def GetDims(self) -> list[int]:
        return list(self._dims)

    def GetDimValue(self, index: int) -> int:
        return self._dims[index]


_ONNX_TYPES = {1: DataType.FLOAT32, 10: DataType.FLOAT16, 7: DataType.INT64, 6: DataType.INT32, 2: DataType.UINT8}


def _tensor_info(value: Any) -> dict[str, Any]:
    shape = [d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim]
    return {"name": value.name, "dtype": _ONNX_TYPES[value.type.tensor_type.elem_type].value, "shape": shape}


class Network:
    def __init__(self) -> None:
        self.onnx_path = ""
        self.inputs: list[dict[str, Any]] = []
        self.outputs: list[dict[str, Any]] = []

    def get_input_count(self) -> int:
        return len(self.inputs)


class Parser:
    def __init__(self, kind: ModelKind) -> None:
        self.kind = kind

    def parse(self, network: Network, path: str) -> Status:
        import onnx

        CALLS.append(("Parser.parse", self.kind, path))
        if self.kind is not ModelKind.kOnnx:
            return _error(f"the fake parses ONNX only, not {self.kind}")
        try:
            graph = onnx.load(path, load_external_data=False).graph
        except Exception as exc:  # onnx raises its own types for unreadable files
            return _error(f"cannot parse {path}: {exc}")
        initializers = {i.name for i in graph.initializer}
        network.onnx_path = str(path)
        network.inputs = [_tensor_info(v) for v in graph.input if v.name not in initializers]
        network.outputs = [_tensor_info(v) for v in graph.output]
        return Status()


parser = types.ModuleType("magicmind.python.runtime.parser", "FAKE magicmind parser module")
parser.Parser = Parser  # type: ignore[attr-defined]


def _merge(into: dict[str, Any], new: dict[str, Any]) -> None:
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


class BuilderConfig:
    def __init__(self) -> None:
        self.config: dict[str, Any] = {}
        self.calibrated_for: Network | None = None

    def parse_from_string(self, text: str) -> Status:
        CALLS.append(("BuilderConfig.parse_from_string", text))
        try:
            new = json.loads(text)
        except ValueError as exc:
            return _error(f"not JSON: {exc}")
        if not isinstance(new, dict) or set(new) - CONFIG_KEYS:
            return _error(f"unknown keys {sorted(set(new) - CONFIG_KEYS) if isinstance(new, dict) else new}")
        mode = new.get("precision_config", {}).get("precision_mode")
        if mode is not None and mode not in PRECISION_MODES:
            return _error(f"precision_mode {mode!r}")
        if not isinstance(new.get("graph_shape_mutable", True), bool):
            return _error("graph_shape_mutable must be a boolean")
        for index, bounds in new.get("dim_range", {}).items():
            low, high = bounds.get("min", []), bounds.get("max", [])
            if not index.isdigit() or len(low) != len(high) or any(lo > hi for lo, hi in zip(low, high)):
                return _error(f"dim_range {index}: {bounds}")
        for index, layout in new.get("convert_input_layout", {}).items():
            if {layout.get("src"), layout.get("dst")} != {"NCHW", "NHWC"}:
                return _error(f"convert_input_layout {index}: {layout} (NCHW <-> NHWC, never to itself)")
        _merge(self.config, new)
        return Status()


class CalibDataInterface:
    """Base of the user's calibration data: ``get_shape``, ``get_data_type``, ``get_sample``, ``next``, ``reset``."""

    def __init__(self) -> None:
        CALLS.append(("CalibDataInterface.__init__", type(self).__name__))


def _within(shape: Sequence[int], bounds: dict[str, list[int]] | None) -> bool:
    if bounds is None:
        return True
    low, high = bounds["min"], bounds["max"]
    return len(shape) == len(low) and all(lo <= d <= hi for d, lo, hi in zip(shape, low, high))


class Calibrator:
    def __init__(self, data: list[CalibDataInterface]) -> None:
        CALLS.append(("Calibrator.__init__", len(data)))
        self.data = data
        self.algorithm: QuantizationAlgorithm | None = None

    def set_quantization_algorithm(self, algorithm: QuantizationAlgorithm) -> Status:
        CALLS.append(("Calibrator.set_quantization_algorithm", algorithm))
        self.algorithm = algorithm
        return Status()

    def calibrate(self, network: Network, config: BuilderConfig) -> Status:
        CALLS.append(("Calibrator.calibrate", getattr(_current, "device", None)))
        if getattr(_current, "device", None) is None:
            return _error("calibrate needs an active device", Code.UNAVAILABLE)
        if len(self.data) != network.get_input_count():
            return _error(f"{len(self.data)} calibration data for {network.get_input_count()} inputs")
        ranges = config.config.get("dim_range", {})
        for index, (data, spec) in enumerate(zip(self.data, network.inputs)):
            if not data.reset().ok():
                return _error(f"input {index}: reset failed")
            samples = 0
            while (status := data.next()).ok():
                sample = np.asarray(data.get_sample())
                declared = data.get_shape().GetDims()
                if list(sample.shape) != declared or sample.dtype.name != data.get_data_type().value:
                    return _error(f"input {index}: sample {sample.shape} {sample.dtype} vs declared {declared}")
                if sample.dtype.name != spec["dtype"] or not _within(sample.shape, ranges.get(str(index))):
                    return _error(f"input {index}: sample {sample.shape} {sample.dtype} does not fit {spec}")
                samples += 1
                CALIBRATION_SAMPLES.setdefault(index, []).append(sample.copy())
            if status.code is not Code.OUT_OF_RANGE or samples == 0:
                return _error(f"input {index}: {samples} samples, ended with {status}")
            CALLS.append(("Calibrator.samples", index, samples))
        config.calibrated_for = network
        return Status()


class Builder:
    def build_model(self, name: str, network: Network, config: BuilderConfig) -> Model | None:
        CALLS.append(("Builder.build_model", name))
        cfg = config.config
        if "build_model" in FAIL:
            return None
        quantised = str(cfg.get("precision_config", {}).get("precision_mode", "")).startswith("qint")
        if quantised and config.calibrated_for is not network:
            return None
        mutable = bool(cfg.get("graph_shape_mutable", False))
        ranges = cfg.get("dim_range", {})
        type64to32 = bool(cfg.get("opt_config", {}).get("type64to32_conversion", False))
        layouts = cfg.get("convert_input_layout", {})
        inputs = []
        for index, spec in enumerate(network.inputs):
            bounds = ranges.get(str(index))
            shape = list(spec["shape"])
            if mutable and (bounds is None or len(bounds["min"]) != len(shape)):
                return None
            if bounds is not None and any(
                d not in (-1, lo) or lo != hi for d, lo, hi in list(zip(shape, bounds["min"], bounds["max"]))[1:]
            ):
                return None
            dtype = "int32" if type64to32 and spec["dtype"] == "int64" else spec["dtype"]
            if str(index) in layouts:  # NCHW graph input, NHWC model input
                shape = [shape[0], shape[2], shape[3], shape[1]]
                bounds = {k: [v[0], v[2], v[3], v[1]] for k, v in bounds.items()} if bounds else None
            inputs.append({"name": spec["name"], "dtype": dtype, "shape": shape, "range": bounds})
        return Model(
            {
                "format": FAKE_FORMAT,
                "name": name,
                "onnx": network.onnx_path,
                "config": cfg,
                "inputs": inputs,
                "outputs": network.outputs,
                "onnx_inputs": network.inputs,
            }
        )


class Model:
    def __init__(self, description: dict[str, Any] | None = None) -> None:
        self.description = description

    def serialize_to_file(self, path: str) -> Status:
        CALLS.append(("Model.serialize_to_file", path))
        pathlib.Path(path).write_text(json.dumps(self.description))
        return Status()

    def deserialize_from_file(self, path: str) -> Status:
        CALLS.append(("Model.deserialize_from_file", path))
        try:
            description = json.loads(pathlib.Path(path).read_text())
        except (OSError, ValueError) as exc:
            return _error(f"cannot deserialize {path}: {exc}")
        if not isinstance(description, dict) or description.get("format") != FAKE_FORMAT:
            return _error(f"{path} is not a (fake) MagicMind model")
        self.description = description
        return Status()

    def _d(self) -> dict[str, Any]:
        assert self.description is not None, "FAKE magicmind: model used before deserialize/build"
        return self.description

    def get_input_names(self) -> list[str]:
        return [t["name"] for t in self._d()["inputs"]]

    def get_output_names(self) -> list[str]:
        return [t["name"] for t in self._d()["outputs"]]

    def get_input_data_types(self) -> list[DataType]:
        return [DataType(t["dtype"]) for t in self._d()["inputs"]]

    def get_output_data_types(self) -> list[DataType]:
        return [DataType(t["dtype"]) for t in self._d()["outputs"]]

    def get_input_dimensions(self) -> list[Dims]:
        return [Dims(t["shape"]) for t in self._d()["inputs"]]

    def get_output_dimensions(self) -> list[Dims]:
        return [Dims(t["shape"]) for t in self._d()["outputs"]]

    def create_i_engine(self) -> IEngine | None:
        device = getattr(_current, "device", None)
        CALLS.append(("Model.create_i_engine", device))
        if device is None:
            return None
        return IEngine(self._d(), device)


class Device:
    def __init__(self) -> None:
        self.id = 0

    def active(self) -> Status:
        CALLS.append(("Device.active", self.id))
        if not 0 <= self.id < DEVICE_COUNT:
            return _error(f"no MLU {self.id} ({DEVICE_COUNT} present)", Code.UNAVAILABLE)
        _current.device = self.id
        return Status()

    def create_queue(self) -> Queue | None:
        CALLS.append(("Device.create_queue", self.id))
        if getattr(_current, "device", None) != self.id:
            return None
        return Queue(self.id)


class Queue:
    def __init__(self, device: int) -> None:
        self.device = device
        self.pending: list[IRTTensor] = []

    def sync(self) -> Status:
        CALLS.append(("Queue.sync",))
        if "sync" in FAIL:
            return _error("queue sync failed", Code.INTERNAL)
        for tensor in self.pending:
            tensor.ready = True
        self.pending = []
        return Status()


class IRTTensor:
    def __init__(self, index: int, spec: dict[str, Any], output: bool = False) -> None:
        self.index = index
        self.spec = spec
        self.data: np.ndarray | None = None
        self.ready = not output

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape) if self.data is not None else tuple(self.spec["shape"])

    def from_numpy(self, array: np.ndarray) -> Status:
        CALLS.append(("IRTTensor.from_numpy", self.index, array.dtype.name, tuple(array.shape)))
        shape = self.spec["shape"]
        if array.dtype.name != self.spec["dtype"]:
            return _error(f"input {self.index}: dtype {array.dtype} for a {self.spec['dtype']} input")
        if array.ndim != len(shape) or any(d != s for d, s in list(zip(array.shape, shape))[1:] if s != -1):
            return _error(f"input {self.index}: shape {list(array.shape)} for {shape} (layout?)")
        self.data = np.array(array, copy=True)
        return Status()

    def asnumpy(self) -> np.ndarray:
        CALLS.append(("IRTTensor.asnumpy", self.index))
        if not self.ready or self.data is None:
            raise RuntimeError("FAKE magicmind: output read before queue.sync()")
        return self.data.copy()


class IEngine:
    def __init__(self, description: dict[str, Any], device: int) -> None:
        import onnxruntime as ort

        self.description = description
        self.device = device
        self.session = ort.InferenceSession(description["onnx"], providers=["CPUExecutionProvider"])

    def create_i_context(self) -> IContext:
        CALLS.append(("IEngine.create_i_context",))
        return IContext(self)


class IContext:
    def __init__(self, engine: IEngine) -> None:
        self.engine = engine
        self.created: list[IRTTensor] | None = None

    def create_inputs(self) -> list[IRTTensor]:
        CALLS.append(("IContext.create_inputs",))
        self.created = [IRTTensor(i, spec) for i, spec in enumerate(self.engine.description["inputs"])]
        return list(self.created)

    def enqueue(self, inputs: list[IRTTensor], outputs: list[IRTTensor], queue: Queue) -> Status:
        CALLS.append(("IContext.enqueue", len(inputs)))
        if "enqueue" in FAIL:
            return _error("enqueue failed", Code.INTERNAL)
        if getattr(_current, "device", None) != queue.device:
            return _error("the queue's device is not active", Code.UNAVAILABLE)
        if self.created is None or [t.index for t in inputs] != list(range(len(self.created))):
            return _error("inputs must be this context's create_inputs(), in the model's order")
        if any(t.data is None for t in inputs):
            return _error("an input was not filled")
        batches = {t.shape[0] for t in inputs}
        if len(batches) != 1:
            return _error(f"inputs disagree on the batch: {sorted(batches)}")
        for tensor in inputs:
            if not _within(tensor.shape, tensor.spec["range"]):
                return _error(f"input {tensor.index}: {list(tensor.shape)} outside dim_range {tensor.spec['range']}")
        feeds = {}
        for tensor, onnx_spec in zip(inputs, self.engine.description["onnx_inputs"]):
            array = tensor.data
            assert array is not None
            if str(tensor.index) in self.engine.description["config"].get("convert_input_layout", {}):
                array = array.transpose(0, 3, 1, 2)
            feeds[onnx_spec["name"]] = array.astype(onnx_spec["dtype"])
        results = self.engine.session.run(None, feeds)
        for index, (result, spec) in enumerate(zip(results, self.engine.description["outputs"])):
            tensor = IRTTensor(index, spec, output=True)
            tensor.data = np.asarray(result)
            outputs.append(tensor)
            queue.pending.append(tensor)
        return Status()


def install(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """Put this FAKE under ``magicmind.python.runtime`` (and ``.parser``) in ``sys.modules``; reset it."""
    reset()
    module = sys.modules[__name__]
    monkeypatch.setitem(sys.modules, "magicmind.python.runtime", module)
    monkeypatch.setitem(sys.modules, "magicmind.python.runtime.parser", parser)
    return module


def sdk(kind: str, monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """``"fake"``: install this fake; ``"real"``: the real SDK, or skip the test when it is not importable."""
    if kind == "fake":
        return install(monkeypatch)
    import importlib

    try:
        return importlib.import_module("magicmind.python.runtime")
    except ImportError:
        pytest.skip("the Cambricon MagicMind SDK (magicmind.python.runtime) is not importable here")
