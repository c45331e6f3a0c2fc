"""The Triton models serve the same numbers when their Python-backend stub runs NumPy 2.

pyproject allows ``numpy>=1.26,<2.3``; the .venv has NumPy 1, and images built with NumPy 2.2.6
answered /qa with 500: the stub of tritonserver 2.51 (pybind11 < 2.12) read request tensors wrong and
sent empty outputs under NumPy 2 (``engine_runtime.triton_model.USE_DLPACK``). Here a real tritonserver
runs its stubs in an environment that is the .venv plus the NumPy 2 wheel ``scripts/setup.sh`` downloads
into ``.whl/numpy2``; every output must equal the bare engine's (NumPy 1, in this process), bit for bit.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Iterator

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from engine_runtime.engine import OnnxRuntimeEngine
from tests.helpers import ROOT, triton_config
from triton_local import TritonServer, stubs

WHEELS = ROOT / ".whl" / "numpy2"
MODELS = ("bert_qa", "resnet50_vd")  # int64 and uint8 inputs, fp32 outputs


@pytest.fixture(scope="module")
def numpy2_env(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """A virtual environment with NumPy 2 first and the .venv's packages after it."""
    wheels = sorted(WHEELS.glob("numpy-2.*.whl"))
    assert wheels, f"no NumPy 2 wheel in {WHEELS}: run ./scripts/setup.sh"
    env = tmp_path_factory.mktemp("numpy2") / "venv"
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", str(env)], check=True)  # type: ignore[attr-defined]
    site = env / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps"]
    subprocess.run([*pip, "--target", str(site), str(wheels[-1])], check=True)
    # Processed after its own site-packages: the .venv's packages (and their .pth files) come second.
    (site / "zz_base_venv.pth").write_text(f"import site; site.addsitedir({sysconfig.get_paths()['purelib']!r})\n")
    version = subprocess.run(
        [str(env / "bin" / "python"), "-c", "import numpy, engine_runtime; print(numpy.__version__)"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    assert version.startswith("2."), version
    return env


@pytest.fixture(scope="module")
def numpy2_triton(
    numpy2_env: pathlib.Path, model_repo: pathlib.Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TritonServer]:
    repo = tmp_path_factory.mktemp("numpy2_repo")
    for model in MODELS:
        shutil.copytree(model_repo / model, repo / model, ignore=shutil.ignore_patterns("__pycache__"))
    config = triton_config(repo, repo.parent / "tritonserver.log")
    # The stub finds its Python (and so its site-packages) through `python3` on PATH (triton_local).
    config.env = {"PATH": os.pathsep.join([str(numpy2_env / "bin"), os.environ.get("PATH", "")])}
    with TritonServer(config) as server:
        yield server


def test_stubs_run_numpy2(numpy2_triton: TritonServer, numpy2_env: pathlib.Path) -> None:
    """The environment is in effect: every stub has the NumPy 2 build mapped, not the .venv's."""
    assert numpy2_triton.pid is not None
    live = stubs.stubs(numpy2_triton.pid)
    assert {s.model for s in live} == set(MODELS)
    for stub in live:
        maps = pathlib.Path(f"/proc/{stub.pid}/maps").read_text()
        assert f"{numpy2_env}/lib" in maps and "numpy" in maps, stub.instance


def _infer(
    client: grpcclient.InferenceServerClient, model: str, feeds: dict[str, np.ndarray], output: str
) -> np.ndarray:
    inputs = []
    for name, array in feeds.items():
        tensor = grpcclient.InferInput(name, list(array.shape), "INT64" if array.dtype == np.int64 else "UINT8")
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return client.infer(model, inputs, outputs=[grpcclient.InferRequestedOutput(output)]).as_numpy(output)


def test_numpy2_stub_serves_the_bare_engine_outputs(
    numpy2_triton: TritonServer, engines: dict[str, OnnxRuntimeEngine]
) -> None:
    client = grpcclient.InferenceServerClient(numpy2_triton.grpc_url)
    rng = np.random.default_rng(3)
    ids = rng.integers(0, 1000, (2, 128), dtype=np.int64)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    direct = engines["bert_qa"].run(feeds)
    for output in ("start_logits", "end_logits"):
        np.testing.assert_array_equal(_infer(client, "bert_qa", feeds, output), direct[output])
    images = rng.integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
    served = _infer(client, "resnet50_vd", {"images": images}, "logits")
    np.testing.assert_array_equal(served, engines["resnet50_vd"].run({"images": images})["logits"])
    # A bad request is still refused by the model's validation, which reads the input correctly.
    bad = dict(feeds, input_ids=np.full((1, 128), 10**6, dtype=np.int64))
    with pytest.raises(Exception, match="input_ids must lie in"):
        _infer(client, "bert_qa", {k: v[:1] for k, v in bad.items()}, "start_logits")
