"""The tritonserver launcher."""

from __future__ import annotations

import pathlib

import pytest

from tests.helpers import triton_config
from triton_local import TritonServer, TritonServerError


def test_broken_model_fails_startup_fast(tmp_path: pathlib.Path) -> None:
    model = tmp_path / "repo" / "broken"
    (model / "1").mkdir(parents=True)
    (model / "config.pbtxt").write_text('backend: "python"\nmax_batch_size: 1\n')
    (model / "1" / "model.py").write_text("raise ImportError('boom')\n")
    server = TritonServer(triton_config(tmp_path / "repo", tmp_path / "log.txt"))
    with pytest.raises(TritonServerError, match="exited"):
        server.start()
    assert "boom" in (tmp_path / "log.txt").read_text()


def test_running_server_is_ready_and_stops(triton: TritonServer) -> None:
    assert triton.is_ready()


def test_model_without_engine_names_the_build_command(tmp_path: pathlib.Path) -> None:
    import shutil

    from tests.helpers import ROOT

    repo = tmp_path / "repo"
    shutil.copytree(
        ROOT / "triton_repo" / "resnet50_vd",
        repo / "resnet50_vd",
        ignore=shutil.ignore_patterns("*.onnx", "manifest.json"),
    )
    with pytest.raises(TritonServerError):
        TritonServer(triton_config(repo, tmp_path / "log.txt")).start()
    assert "python -m magicmind_build" in (tmp_path / "log.txt").read_text()
