"""Cambricon MagicMind: the ``BuilderConfig`` written next to every ONNX artifact, and ``.mm`` builds.

Every build writes ``magicmind_build_config.json`` next to ``model.onnx`` (named in the manifest's
``magicmind_config``): the MagicMind ``BuilderConfig`` JSON the reference uses for the same models
(archs, ``precision_config.precision_mode``, ``graph_shape_mutable``, ``dim_range``, input layout,
quantisation settings), so that an MLU host builds the ``.mm`` engine from exactly these two files.

``python -m magicmind_build --backend magicmind`` then builds ``model.mm`` with the MagicMind SDK
(:func:`build_magicmind_engine`): ONNX ``Parser`` into a ``Network``, ``BuilderConfig.parse_from_string``
of that JSON, for int8 a ``Calibrator`` over ``CalibDataInterface`` objects (one per input), then
``Builder.build_model`` and ``Model.serialize_to_file``.

API names, call order and config keys follow (read, not copied):
- the reference, github.com/xiaoqi25478/triton_python_backend_with_magicmind: ``bert/magicmind_codes/
  magicmind_build.py`` (precision modes per fp32/fp16/int8, ``type64to32_conversion`` for int64 token
  ids, ``graph_shape_mutable`` + ``dim_range`` with a variable batch), ``resnet50/magicmind_codes/
  magicmind_build.py`` and ``yolov5n/magicmind_codes/gen_model/gen_model.py`` (``Parser(ModelKind.kOnnx)``,
  ``convert_input_layout``, ``activation_quant_algo``/``weight_quant_granularity``, the ``CalibData``
  subclass of ``CalibDataInterface`` answering ``Status(Code.OUT_OF_RANGE, ...)`` at the end,
  ``Calibrator([...]).set_quantization_algorithm(LINEAR_ALGORITHM)``, device activated before ``calibrate``);
- Cambricon/magicmind_cloud's Python build helpers (``dim_range`` per input index with ``min``/``max``
  full shapes; "do not convert an input to the layout it already has"; ``EQNM_ALGORITHM``).

No MagicMind SDK exists on the machines this project is built on: :func:`build_magicmind` is tested
against a labelled fake of this API subset (``tests/engine_runtime/fake_magicmind.py``) and against
the real SDK by the same tests where it is importable.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib
import json
import logging
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from engine_runtime.engine import EngineError, load_magicmind
from engine_runtime.manifest import Manifest
from magicmind_build.specs import ModelSpec

LOGGER = logging.getLogger(__name__)

CONFIG_FILE = "magicmind_build_config.json"
MM_ENGINE_FILE = "model.mm"
# The reference's MLU370 (X4/X8 cards): architecture mtp_372.
DEFAULT_ARCHS: tuple[str, ...] = ("mtp_372",)
# Our precision names -> MagicMind precision_config.precision_mode, as the reference maps them.
PRECISION_MODES = {"fp32": "force_float32", "fp16": "force_float16", "int8": "qint8_mixed_float16"}
QUANT_ALGORITHMS = {"linear": "LINEAR_ALGORITHM", "eqnm": "EQNM_ALGORITHM"}
# ``--calibration-method`` -> the Calibrator's algorithm. MagicMind has two (the reference's ``linear`` and
# ``eqnm``): ``minmax`` (ONNX Runtime's name for a linear range from the observed min/max) is ``linear``;
# ``eqnm`` (equalised quantisation noise minimisation) has no ONNX Runtime counterpart; ONNX Runtime's
# ``entropy`` and ``percentile`` have no MagicMind counterpart.
CALIBRATION_METHODS = {"minmax": "linear", "eqnm": "eqnm"}


class MagicMindBuildError(RuntimeError):
    """A MagicMind build could not be configured or run (SDK missing, a call failed, bad calibration data)."""


@dataclasses.dataclass(frozen=True)
class CalibrationSettings:
    """How an int8 (``qint8_mixed_float16``) build is calibrated; the reference's defaults.

    Args:
        algorithm: ``linear`` or ``eqnm``: the ``Calibrator``'s ``QuantizationAlgorithm``
            (``LINEAR_ALGORITHM`` / ``EQNM_ALGORITHM``; EQNM only with symmetric quantisation).
        activation_quant_algo: ``symmetric`` or ``asymmetric`` (``precision_config``).
        weight_quant_granularity: ``per_tensor`` or ``per_axis`` (``precision_config``).
    """

    algorithm: str = "linear"
    activation_quant_algo: str = "symmetric"
    weight_quant_granularity: str = "per_tensor"

    def __post_init__(self) -> None:
        if self.algorithm not in QUANT_ALGORITHMS:
            raise ValueError(f"calibration algorithm {self.algorithm!r} is not one of {sorted(QUANT_ALGORITHMS)}")
        if self.activation_quant_algo not in ("symmetric", "asymmetric"):
            raise ValueError(f"activation_quant_algo {self.activation_quant_algo!r}: symmetric or asymmetric")
        if self.weight_quant_granularity not in ("per_tensor", "per_axis"):
            raise ValueError(f"weight_quant_granularity {self.weight_quant_granularity!r}: per_tensor or per_axis")
        if self.algorithm == "eqnm" and self.activation_quant_algo != "symmetric":
            raise ValueError("the eqnm algorithm applies to symmetric quantisation only")


def calibration_settings(method: str) -> CalibrationSettings:
    """The MagicMind calibration for ``--calibration-method`` ``method`` (``minmax`` or ``eqnm``).

    Raises:
        MagicMindBuildError: a method MagicMind has no algorithm for (``entropy``, ``percentile``).
    """
    if method not in CALIBRATION_METHODS:
        raise MagicMindBuildError(
            f"calibration method {method!r} has no MagicMind counterpart: MagicMind calibrates with "
            f"{', '.join(f'{k} ({QUANT_ALGORITHMS[v]})' for k, v in CALIBRATION_METHODS.items())}"
        )
    return CalibrationSettings(algorithm=CALIBRATION_METHODS[method])


def _spec_inputs(spec: ModelSpec, size: str) -> dict[str, dict[str, Any]]:
    example = spec.example_inputs(spec.configs[size])
    return {
        name: {"dtype": str(t.dtype).replace("torch.", ""), "shape": [-1, *t.shape[1:]]}
        for name, t in zip(spec.input_names, example)
    }


def _layout(shape: Sequence[int]) -> str | None:
    """``NHWC`` or ``NCHW`` for a 4-D image tensor with 1, 3 or 4 channels, else None."""
    if len(shape) != 4:
        return None
    if shape[3] in (1, 3, 4) and shape[1] not in (1, 3, 4):
        return "NHWC"
    if shape[1] in (1, 3, 4) and shape[3] not in (1, 3, 4):
        return "NCHW"
    return None


def builder_config(
    spec: ModelSpec,
    precision: str = "fp32",
    calibration: CalibrationSettings | None = None,
    *,
    inputs: Mapping[str, Mapping[str, Any]] | None = None,
    size: str = "full",
    archs: Sequence[str] = DEFAULT_ARCHS,
) -> dict[str, Any]:
    """The MagicMind ``BuilderConfig`` (as JSON-ready dict) for ``spec``'s ONNX graph.

    - ``archs``: the target MLU architectures.
    - ``precision_config.precision_mode``: fp32 -> ``force_float32``, fp16 -> ``force_float16``,
      int8 -> ``qint8_mixed_float16`` plus ``activation_quant_algo`` and ``weight_quant_granularity``
      from ``calibration`` (the ``Calibrator``'s algorithm is not a config key; see :func:`build_magicmind`).
    - ``graph_shape_mutable: true`` and ``dim_range`` per input index (the network's input order,
      which is ``spec.input_names``): batch from ``spec.batch_range``, other dimensions fixed.
    - ``convert_input_layout``: only for a channels-first (NCHW) image input, converted to NHWC as
      MagicMind prefers. The graphs built here take uint8 NHWC images already (the gateway's
      layout; the transpose and normalisation are inside the graph), so theirs is empty and the key
      is left out: MagicMind must not be asked to convert an input to the layout it already has.
    - ``opt_config.type64to32_conversion: true`` when an input is int64 (BERT's token ids), as the
      reference builds BERT.

    Args:
        spec: the model.
        precision: ``fp32``, ``fp16`` or ``int8``.
        calibration: quantisation settings for int8 (defaults when None); ignored otherwise.
        inputs: ``{name: {"dtype", "shape"}}`` with -1 for the batch, as in the manifest (any key
            order); from ``spec.example_inputs`` of ``size`` when None.
        size: the spec's size, used only when ``inputs`` is None.
        archs: MLU architectures to build for.
    """
    if precision not in PRECISION_MODES:
        raise ValueError(f"precision {precision!r} is not one of {sorted(PRECISION_MODES)}")
    inputs = inputs if inputs is not None else _spec_inputs(spec, size)
    if sorted(inputs) != sorted(spec.input_names):
        raise ValueError(f"inputs {sorted(inputs)} are not {spec.name}'s inputs {list(spec.input_names)}")
    inputs = {name: inputs[name] for name in spec.input_names}  # the network's order (manifests sort their keys)
    low, high = spec.batch_range
    if not 1 <= low <= high:
        raise ValueError(f"{spec.name}: bad batch_range {spec.batch_range}")
    precision_config: dict[str, Any] = {"precision_mode": PRECISION_MODES[precision]}
    if precision == "int8":
        calibration = calibration or CalibrationSettings()
        precision_config["activation_quant_algo"] = calibration.activation_quant_algo
        precision_config["weight_quant_granularity"] = calibration.weight_quant_granularity
    dim_range = {}
    layouts = {}
    for index, tensor in enumerate(inputs.values()):
        rest = [int(d) for d in tensor["shape"][1:]]
        dim_range[str(index)] = {"min": [low, *rest], "max": [high, *rest]}
        if _layout(tensor["shape"]) == "NCHW":
            layouts[str(index)] = {"src": "NCHW", "dst": "NHWC"}
    config: dict[str, Any] = {
        "archs": list(archs),
        "graph_shape_mutable": True,
        "dim_range": dim_range,
        "precision_config": precision_config,
    }
    if layouts:
        config["convert_input_layout"] = layouts
    if any(str(t["dtype"]) == "int64" for t in inputs.values()):
        config["opt_config"] = {"type64to32_conversion": True}
    return config


def write_builder_config(config: Mapping[str, Any], out_dir: pathlib.Path) -> pathlib.Path:
    """Write ``config`` as ``magicmind_build_config.json`` in ``out_dir``; returns its path."""
    path = pathlib.Path(out_dir) / CONFIG_FILE
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return path


def with_builder_config(
    manifest: Manifest, spec: ModelSpec, out_dir: pathlib.Path, calibration: CalibrationSettings | None = None
) -> Manifest:
    """Write the BuilderConfig for ``manifest``'s engine (its inputs and precision) next to it and
    return the manifest naming it. A precision MagicMind has no mode for writes no config."""
    if manifest.precision not in PRECISION_MODES:
        return manifest
    config = builder_config(spec, manifest.precision, calibration, inputs=manifest.inputs)
    path = write_builder_config(config, out_dir)
    return dataclasses.replace(manifest, magicmind_config=path.name)


def magicmind_sdk() -> Any:
    """The MagicMind SDK (:func:`engine_runtime.engine.load_magicmind`), its absence a :class:`MagicMindBuildError`.

    The builder's one way to the SDK (the engine build, the precision variants, the CLI's check up front):
    the error names what to do, and every caller of the builder handles one error class.
    """
    try:
        return load_magicmind()
    except EngineError as exc:
        raise MagicMindBuildError(str(exc)) from exc


def _check(status: Any, what: str) -> None:
    if status is not None and not status.ok():
        raise MagicMindBuildError(f"MagicMind {what} failed: {status}")


def _calib_data_class(mm: Any) -> type:
    """A ``CalibDataInterface`` subclass over in-memory batches of one network input."""

    class CalibData(mm.CalibDataInterface):  # type: ignore[misc,name-defined]
        def __init__(self, batches: Sequence[np.ndarray]) -> None:
            super().__init__()
            self._batches = [np.ascontiguousarray(b) for b in batches]
            self._index = 0
            self._current = self._batches[0]

        def get_shape(self) -> Any:
            return mm.Dims(list(self._current.shape))

        def get_data_type(self) -> Any:
            return getattr(mm.DataType, self._current.dtype.name.upper())

        def get_sample(self) -> np.ndarray:
            return self._current

        def next(self) -> Any:
            if self._index >= len(self._batches):
                return mm.Status(mm.Code.OUT_OF_RANGE, "no more calibration data")
            self._current = self._batches[self._index]
            self._index += 1
            return mm.Status.OK()

        def reset(self) -> Any:
            self._index = 0
            return mm.Status.OK()

    return CalibData


def _calibration_batches(
    config: Mapping[str, Any], names: Sequence[str], data: Sequence[Mapping[str, np.ndarray]]
) -> list[list[np.ndarray]]:
    """Per input (network order) its list of batches, each checked against the config's dim_range."""
    if not data:
        raise MagicMindBuildError("an int8 build needs calibration data (at least one batch)")
    per_input: list[list[np.ndarray]] = [[] for _ in names]
    for number, batch in enumerate(data):
        missing = [n for n in names if n not in batch]
        if missing:
            raise MagicMindBuildError(f"calibration batch {number} lacks inputs {missing}")
        for index, name in enumerate(names):
            array = np.asarray(batch[name])
            bounds = config["dim_range"][str(index)]
            low, high = bounds["min"], bounds["max"]
            if array.ndim != len(low) or any(not lo <= d <= hi for d, lo, hi in zip(array.shape, low, high)):
                raise MagicMindBuildError(
                    f"calibration batch {number}, input {name!r}: shape {list(array.shape)} outside dim_range "
                    f"{low}..{high}"
                )
            per_input[index].append(array)
    return per_input


def build_magicmind(
    onnx_path: pathlib.Path,
    config: Mapping[str, Any],
    out_path: pathlib.Path,
    *,
    input_names: Sequence[str],
    calibration: CalibrationSettings | None = None,
    calibration_data: Sequence[Mapping[str, np.ndarray]] | None = None,
    device_id: int = 0,
    name: str = "model",
) -> pathlib.Path:
    """Build ``onnx_path`` with the MagicMind SDK under ``config`` and serialize it to ``out_path``.

    Args:
        onnx_path: the ONNX graph.
        config: the BuilderConfig (see :func:`builder_config`), passed whole to ``parse_from_string``.
        out_path: the ``.mm`` file to write (written to a temporary name first, then renamed).
        input_names: the network's inputs in order (the keys of ``calibration_data`` batches).
        calibration: the int8 calibration algorithm (defaults when None).
        calibration_data: for int8 (``qint8_*`` precision modes): batches ``{input name: array}``,
            each within ``dim_range``, with the dtypes the graph takes (the same preprocessing as serving).
        device_id: the MLU that calibrates (int8 only; building needs no device).
        name: the model name given to ``build_model``.
    """
    mm = magicmind_sdk()
    parser_module = importlib.import_module("magicmind.python.runtime.parser")
    network = mm.Network()
    parser = parser_module.Parser(mm.ModelKind.kOnnx)
    _check(parser.parse(network, str(onnx_path)), f"ONNX parse of {onnx_path}")
    builder_cfg = mm.BuilderConfig()
    _check(builder_cfg.parse_from_string(json.dumps(config)), "BuilderConfig.parse_from_string")
    if str(config.get("precision_config", {}).get("precision_mode", "")).startswith("qint"):
        batches = _calibration_batches(config, input_names, calibration_data or [])
        calib_class = _calib_data_class(mm)
        calibrator = mm.Calibrator([calib_class(b) for b in batches])
        algorithm = QUANT_ALGORITHMS[(calibration or CalibrationSettings()).algorithm]
        _check(calibrator.set_quantization_algorithm(getattr(mm.QuantizationAlgorithm, algorithm)), algorithm)
        device = mm.Device()
        device.id = device_id
        _check(device.active(), f"activating MLU {device_id} for calibration")
        _check(calibrator.calibrate(network, builder_cfg), "calibration")
    model = mm.Builder().build_model(name, network, builder_cfg)
    if model is None:
        raise MagicMindBuildError(f"MagicMind build_model failed for {onnx_path}")
    out_path = pathlib.Path(out_path)
    tmp_path = out_path.with_name(out_path.name + ".tmp")
    _check(model.serialize_to_file(str(tmp_path)), f"serialize_to_file({tmp_path})")
    tmp_path.replace(out_path)
    return out_path


def onnx_input_names(path: pathlib.Path) -> list[str]:
    """The graph's inputs in order (the MagicMind network's input indices); initializers excluded."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    return [i.name for i in graph.input if i.name not in initializers]


def build_magicmind_engine(
    manifest: Manifest,
    out_dir: pathlib.Path,
    *,
    calibration: CalibrationSettings | None = None,
    calibration_data: Sequence[Mapping[str, np.ndarray]] | None = None,
    device_id: int = 0,
) -> Manifest:
    """Build ``model.mm`` from the ONNX engine and BuilderConfig that ``manifest`` (in ``out_dir``)
    names, rewrite the manifest to serve it (``engine_format: magicmind``) and return it."""
    from magicmind_build.build import sha256_file

    out_dir = pathlib.Path(out_dir)
    if manifest.engine_format != "onnx" or not manifest.magicmind_config:
        raise MagicMindBuildError(f"{manifest.model}: needs an ONNX engine with a MagicMind config to build from")
    config = json.loads((out_dir / manifest.magicmind_config).read_text())
    mm = magicmind_sdk()
    onnx_path = out_dir / manifest.engine_file
    engine_path = build_magicmind(
        onnx_path,
        config,
        out_dir / MM_ENGINE_FILE,
        input_names=onnx_input_names(onnx_path),
        calibration=calibration,
        calibration_data=calibration_data,
        device_id=device_id,
        name=manifest.model,
    )
    built = dataclasses.replace(
        manifest,
        engine_file=engine_path.name,
        engine_format="magicmind",
        engine_sha256=sha256_file(engine_path),
        built_at=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        builder={
            **manifest.builder,
            "magicmind": str(getattr(mm, "__version__", "unknown")),
            "from_onnx": manifest.engine_file,
        },
    )
    built.write(out_dir)
    return built
