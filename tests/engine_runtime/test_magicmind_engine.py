"""``MagicMindEngine``: the MagicMind runtime call protocol, checked against the labelled FAKE SDK
(``fake_magicmind.py``) and, by the same tests, against the real SDK where it is importable.

Engines are built from the tiny ONNX engines by ``magicmind_build.magicmind`` (fp32). Against the fake,
"running on the MLU" runs the same ONNX graph with ONNX Runtime, so the results must equal
``OnnxRuntimeEngine``'s exactly: what is checked is the plumbing (input order, dtypes, layout, batch
bounds, output order, error paths), never MagicMind's numerics.
"""

from __future__ import annotations

import pathlib
import shutil
import threading
import types

import numpy as np
import pytest

from engine_runtime.engine import EngineError, MagicMindEngine, OnnxRuntimeEngine, load_engine
from engine_runtime.manifest import Manifest
from magicmind_build.magicmind import build_magicmind_engine
from tests.engine_runtime import fake_magicmind

MODELS = ("bert_qa", "resnet50_vd")


def _build_repo(model_repo: pathlib.Path, tmp_path: pathlib.Path) -> pathlib.Path:
    """Copies of the tiny bert_qa and resnet50_vd engines with ``model.mm`` built by the installed SDK."""
    for name in MODELS:
        out_dir = tmp_path / name
        shutil.copytree(model_repo / name / "1", out_dir)
        build_magicmind_engine(Manifest.read(out_dir), out_dir)
    fake_magicmind.CALLS.clear()
    return tmp_path


@pytest.fixture
def mm_repo(model_repo: pathlib.Path, tmp_path: pathlib.Path, mm_sdk: types.ModuleType) -> pathlib.Path:
    return _build_repo(model_repo, tmp_path)


@pytest.fixture
def fake_repo(model_repo: pathlib.Path, tmp_path: pathlib.Path, fake_mm: types.ModuleType) -> pathlib.Path:
    return _build_repo(model_repo, tmp_path)


def _feeds(engine: MagicMindEngine | OnnxRuntimeEngine, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in engine.inputs:
        shape = (batch, *spec.shape[1:])
        if spec.name == "input_ids":
            feeds[spec.name] = rng.integers(0, 1000, shape).astype(np.int64)
        elif spec.name == "attention_mask":
            feeds[spec.name] = np.ones(shape, np.int64)
        elif spec.name == "token_type_ids":
            feeds[spec.name] = (rng.random(shape) > 0.5).astype(np.int64)
        else:
            feeds[spec.name] = rng.integers(0, 256, shape).astype(np.uint8)
    return feeds


def _engine(repo: pathlib.Path, name: str, **kwargs: object) -> MagicMindEngine:
    manifest = Manifest.read(repo / name)
    assert manifest.engine_format == "magicmind" and manifest.engine_file == "model.mm"
    engine = load_engine(repo / name / manifest.engine_file, manifest, **kwargs)
    assert isinstance(engine, MagicMindEngine)
    return engine


@pytest.mark.parametrize("name", MODELS)
def test_results_equal_onnxruntime_on_the_same_graph(
    mm_repo: pathlib.Path, mm_sdk: types.ModuleType, name: str
) -> None:
    engine = _engine(mm_repo, name)
    reference = OnnxRuntimeEngine(mm_repo / name / "model.onnx")
    assert [o.name for o in engine.outputs] == [o.name for o in reference.outputs]
    for batch in (1, 3):
        feeds = _feeds(reference, batch, seed=batch)
        got, want = engine.run(feeds), reference.run(feeds)
        for key, value in want.items():
            assert got[key].shape == value.shape
            if mm_sdk is fake_magicmind:
                np.testing.assert_array_equal(got[key], value)
            else:  # the real MLU computes at fp32 with its own kernels
                np.testing.assert_allclose(got[key], value, rtol=1e-3, atol=1e-3)


def test_call_protocol(fake_repo: pathlib.Path, fake_mm: types.ModuleType) -> None:
    engine = _engine(fake_repo, "resnet50_vd")
    engine.run(_feeds(engine, 2))
    calls = [c[0] for c in fake_magicmind.CALLS]
    assert calls == [
        "Model.deserialize_from_file",
        "Device.active",
        "Model.create_i_engine",
        "IEngine.create_i_context",
        "Device.create_queue",
        "Device.active",
        "IContext.create_inputs",
        "IRTTensor.from_numpy",
        "IContext.enqueue",
        "Queue.sync",
        "IRTTensor.asnumpy",
    ]
    assert ("Model.create_i_engine", 0) in fake_magicmind.CALLS  # with MLU 0 active
    assert ("IRTTensor.from_numpy", 0, "uint8", (2, 224, 224, 3)) in fake_magicmind.CALLS  # NHWC uint8 as built


def test_runs_from_another_thread_than_the_one_that_loaded_it(
    fake_repo: pathlib.Path, fake_mm: types.ModuleType
) -> None:
    engine = _engine(fake_repo, "resnet50_vd")
    results: list[object] = []

    def run() -> None:
        try:
            results.append(engine.run(_feeds(engine, 1))["logits"].shape)
        except EngineError as exc:
            results.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert results == [(1, 1000)]
    # The (fake) SDK's rule the engine keeps: a thread with no active device cannot enqueue.
    queue = fake_mm.Device().create_queue()
    assert queue is not None  # device 0 is active in this thread
    thread_status: list[object] = []
    thread = threading.Thread(target=lambda: thread_status.append(engine.context.enqueue([], [], queue)))
    thread.start()
    thread.join()
    assert not thread_status[0].ok() and "device is not active" in str(thread_status[0])  # type: ignore[attr-defined]


def test_inputs_go_in_the_models_order_whatever_the_feed_order(
    fake_repo: pathlib.Path, fake_mm: types.ModuleType
) -> None:
    engine = _engine(fake_repo, "bert_qa")
    feeds = _feeds(engine, 2)
    reversed_feeds = dict(reversed(list(feeds.items())))
    out = engine.run(reversed_feeds)
    assert out["start_logits"].shape == (2, 128)
    filled = [c[1] for c in fake_magicmind.CALLS if c[0] == "IRTTensor.from_numpy"]
    assert filled == [0, 1, 2]
    assert [s.name for s in engine.inputs] == ["input_ids", "attention_mask", "token_type_ids"]
    np.testing.assert_array_equal(out["start_logits"], engine.run(feeds)["start_logits"])


def test_int64_ids_are_narrowed_to_the_int32_model_only_when_they_fit(
    fake_repo: pathlib.Path, fake_mm: types.ModuleType
) -> None:
    # type64to32_conversion in the BuilderConfig: the (fake) built model takes int32 token ids.
    engine = _engine(fake_repo, "bert_qa")
    assert {s.dtype for s in engine.inputs} == {"int32"}
    engine.run(_feeds(engine, 1))
    assert {c[2] for c in fake_magicmind.CALLS if c[0] == "IRTTensor.from_numpy"} == {"int32"}
    feeds = _feeds(engine, 1)
    feeds["input_ids"][0, 0] = 2**40
    with pytest.raises(EngineError, match="input 'input_ids': values outside int32"):
        engine.run(feeds)


def test_wrong_dtype_is_refused(mm_repo: pathlib.Path, mm_sdk: types.ModuleType) -> None:
    engine = _engine(mm_repo, "resnet50_vd")
    feeds = {"images": np.zeros((1, 224, 224, 3), np.float32)}
    with pytest.raises(EngineError, match="dtype float32 where the model takes uint8"):
        engine.run(feeds)


def test_nchw_image_for_an_nhwc_model_is_refused(mm_repo: pathlib.Path, mm_sdk: types.ModuleType) -> None:
    engine = _engine(mm_repo, "resnet50_vd")
    with pytest.raises(EngineError, match=r"shape \[1, 3, 224, 224\] does not fit .* image inputs are NHWC"):
        engine.run({"images": np.zeros((1, 3, 224, 224), np.uint8)})


def test_batch_outside_dim_range_is_refused_before_the_mlu(mm_repo: pathlib.Path, mm_sdk: types.ModuleType) -> None:
    engine = _engine(mm_repo, "resnet50_vd")
    assert engine.batch_range == (1, 32)  # resnet50_vd's spec: Triton max_batch_size 32
    engine.run(_feeds(engine, 32))
    with pytest.raises(EngineError, match=r"batch 33 is outside the model's dim_range \[1, 32\]"):
        engine.run(_feeds(engine, 33))
    with pytest.raises(EngineError, match="batch 0 is outside"):
        engine.run({"images": np.zeros((0, 224, 224, 3), np.uint8)})


def test_the_fake_itself_refuses_a_batch_beyond_dim_range(fake_repo: pathlib.Path, fake_mm: types.ModuleType) -> None:
    # Without the engine's own check, the (fake) SDK refuses at enqueue, as the real one must.
    engine = _engine(fake_repo, "resnet50_vd")
    engine.batch_range = None
    with pytest.raises(EngineError, match=r"enqueue failed: .*outside dim_range"):
        engine.run(_feeds(engine, 33))


def test_missing_input_and_mixed_batches_are_refused(mm_repo: pathlib.Path, mm_sdk: types.ModuleType) -> None:
    engine = _engine(mm_repo, "bert_qa")
    feeds = _feeds(engine, 2)
    with pytest.raises(EngineError, match=r"missing inputs \['token_type_ids'\]"):
        engine.run({k: v for k, v in feeds.items() if k != "token_type_ids"})
    feeds["attention_mask"] = feeds["attention_mask"][:1]
    with pytest.raises(EngineError, match=r"inputs disagree on the batch size: \[1, 2\]"):
        engine.run(feeds)


def test_device_that_cannot_be_activated(mm_repo: pathlib.Path, mm_sdk: types.ModuleType) -> None:
    with pytest.raises(EngineError, match="MagicMind activating MLU 4096 failed"):
        _engine(mm_repo, "resnet50_vd", device_id=4096)


def test_engine_is_not_created_before_the_device_is_active(fake_repo: pathlib.Path, fake_mm: types.ModuleType) -> None:
    # The rule the engine follows, shown on the fake: create_i_engine without an active device fails.
    model = fake_mm.Model()
    assert model.deserialize_from_file(str(fake_repo / "resnet50_vd" / "model.mm")).ok()
    assert model.create_i_engine() is None


def test_unreadable_model_file(tmp_path: pathlib.Path, mm_sdk: types.ModuleType) -> None:
    path = tmp_path / "model.mm"
    path.write_bytes(b"not a magicmind model")
    with pytest.raises(EngineError, match="deserialize_from_file"):
        MagicMindEngine(path)


def test_enqueue_and_sync_failures_are_engine_errors(fake_repo: pathlib.Path, fake_mm: types.ModuleType) -> None:
    engine = _engine(fake_repo, "resnet50_vd")
    for failing in ("enqueue", "sync"):
        fake_magicmind.FAIL.clear()
        fake_magicmind.FAIL.add(failing)
        with pytest.raises(EngineError, match=f"MagicMind {'queue sync' if failing == 'sync' else 'enqueue'} failed"):
            engine.run(_feeds(engine, 1))
    fake_magicmind.FAIL.clear()
    assert engine.run(_feeds(engine, 1))["logits"].shape == (1, 1000)


@pytest.mark.usefixtures("no_mm_sdk")
def test_no_sdk_is_a_clear_error(tmp_path: pathlib.Path) -> None:
    with pytest.raises(EngineError, match=r"MagicMind SDK \(magicmind.python.runtime\) is not importable"):
        MagicMindEngine(tmp_path / "model.mm")
