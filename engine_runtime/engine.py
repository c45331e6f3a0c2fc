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


class OnnxRuntimeEngine(Engine):
    """An ONNX model run by ONNX Runtime.

    Args:
        path: the ``.onnx`` file.
        providers: execution providers in order of preference; :func:`default_onnx_providers` when None.
        intra_op_threads: threads per operator; ONNX Runtime's default when 0.
        device_id: GPU ordinal for the CUDA/TensorRT providers (Triton's ``model_instance_device_id``).
        spin: let idle intra-op threads spin (lower latency when the engine has the CPU to itself).
    """

    def __init__(
        self,
        path: pathlib.Path,
        providers: Sequence[str] | None = None,
        intra_op_threads: int = 0,
        device_id: int = 0,
        spin: bool = False,
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
        provider_options = [{"device_id": str(device_id)} if p in _GPU_PROVIDERS else {} for p in names]
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
