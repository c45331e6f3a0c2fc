"""``OnnxRuntimeEngine``: its description names the session options that decide its CPU cost, as ONNX
Runtime reports them (the Triton model logs it; ``benchmarks/ceiling.py`` compares the bare engine's)."""

from __future__ import annotations

import pathlib

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from engine_runtime.engine import OnnxRuntimeEngine


@pytest.fixture(scope="module")
def identity_model(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path_factory.mktemp("onnx") / "relu.onnx"
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize(("threads", "spin"), [(0, False), (1, True)])
def test_description_names_the_session_options(identity_model: pathlib.Path, threads: int, spin: bool) -> None:
    engine = OnnxRuntimeEngine(identity_model, providers=["CPUExecutionProvider"], intra_op_threads=threads, spin=spin)
    assert engine.description.startswith("onnxruntime CPUExecutionProvider (")
    assert f"intra_op {threads}, inter_op 0, " in engine.description
    assert "ORT_SEQUENTIAL, ORT_ENABLE_ALL" in engine.description
    assert engine.description.endswith(f"spinning {'on' if spin else 'off'})")
    out = engine.run({"x": np.array([[-1.0, 2.0]], dtype=np.float32)})
    np.testing.assert_array_equal(out["y"], [[0.0, 2.0]])
