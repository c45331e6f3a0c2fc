"""The engine runtime: one interface, an ONNX Runtime implementation and a MagicMind one.

Used by the Triton models and by the bare-engine measurements; needs NumPy and the runtime only.

Engine artifacts live in a directory next to a ``manifest.json`` written by the builder
(see :mod:`magicmind_build.manifest`).
"""

from __future__ import annotations

import abc
import dataclasses
import logging
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

LOGGER = logging.getLogger(__name__)


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


def load_engine(path: pathlib.Path, **kwargs: object) -> Engine:
    """Load an engine file by its suffix: ``.mm`` -> MagicMind, ``.onnx`` -> ONNX Runtime."""
    path = pathlib.Path(path)
    if not path.exists():
        raise EngineError(f"engine file {path} does not exist; build it with `python -m magicmind_build`")
    if path.suffix == ".mm":
        return MagicMindEngine(path, **kwargs)  # type: ignore[arg-type]
    if path.suffix == ".onnx":
        return OnnxRuntimeEngine(path, **kwargs)  # type: ignore[arg-type]
    raise EngineError(f"unknown engine format {path.suffix!r} for {path}")
