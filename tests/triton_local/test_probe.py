"""The probe CLI (``python -m triton_local probe``): its exit code is the health check."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers import free_port
from triton_local import TritonServer
from triton_local.__main__ import main
from triton_local.probe import probe_body, probe_model


def test_probe_passes_for_every_loaded_model(triton: TritonServer, caplog: pytest.LogCaptureFixture) -> None:
    assert main(["probe", "--http-url", triton.http_url]) == 0
    for model in ("bert_qa", "yolov5n", "resnet50_vd", "efficientnet_lite0"):
        assert f"{model}: ok" in caplog.text


def test_probe_fails_for_an_unknown_model(triton: TritonServer, caplog: pytest.LogCaptureFixture) -> None:
    assert main(["probe", "--http-url", triton.http_url, "--model", "bert_qa", "--model", "no_such_model"]) == 1
    assert "bert_qa: ok" in caplog.text and "no_such_model: FAILED" in caplog.text


def test_probe_fails_when_triton_is_unreachable() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = subprocess.run(
        [sys.executable, "-m", "triton_local", "probe", "--http-url", url, "--timeout", "2"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "unreachable" in result.stderr


def test_probe_result_names_the_failure(triton: TritonServer) -> None:
    result = probe_model(triton.http_url, "no_such_model", timeout_s=5)
    assert not result.ok and not result.stub_dead
    assert result.error == "HTTP 404: Request for unknown model: 'no_such_model' is not found"


def test_probe_body_is_one_row_of_zeros_per_input() -> None:
    config = {
        "max_batch_size": 8,
        "input": [{"name": "ids", "data_type": "TYPE_INT64", "dims": ["128"]}],
        "output": [{"name": "logits", "data_type": "TYPE_FP32", "dims": ["128"]}],
    }
    body, header_len = probe_body(config)
    assert b'"shape": [1, 128]' in body[:header_len] and b'"binary_data": true' in body[:header_len]
    assert body[header_len:] == bytes(128 * 8)
