"""``benchmarks/soak.py``: its answer checks catch bad answers, and a short run against the stack passes."""

from __future__ import annotations

import pathlib
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable, Mapping
from types import ModuleType

import httpx
import pytest

from tests.helpers import ROOT, GatewayProcess, gateway_env, load_benchmark
from triton_local import TritonServer

SOAK = ROOT / "benchmarks" / "soak.py"


@pytest.fixture(scope="module")
def soak() -> ModuleType:
    return load_benchmark("soak")


def _response(status: int, body: object, request_id: str | None = "r1") -> httpx.Response:
    headers = {"x-request-id": request_id} if request_id else {}
    return httpx.Response(status, json=body, headers=headers)


def test_answer_checks(soak: ModuleType) -> None:
    kinds = {k.name: k for k in soak.request_kinds()}
    error = {"error": {"code": "invalid_image", "message": "not an image"}}
    check = soak.check_answer
    assert check(kinds["garbage"], "r1", _response(400, error)) == ("invalid_image", None, "")
    assert check(kinds["qa"], "r1", _response(503, {"error": {"code": "overloaded", "message": "m"}}))[1] is None
    # The wrong request id, no request id, a body not in the error shape, a 200 not in the schema.
    assert check(kinds["garbage"], "r1", _response(400, error, "r2"))[1] == "malformed"
    assert check(kinds["garbage"], "r1", _response(400, error, None))[1] == "malformed"
    assert check(kinds["garbage"], "r1", _response(400, {"detail": "bad"}))[1] == "malformed"
    assert check(kinds["garbage"], "r1", _response(400, {"error": {"code": "x"}}))[1] == "malformed"
    assert check(kinds["qa"], "r1", _response(200, {"answer": "a"}))[1] == "malformed"
    assert check(kinds["qa"], "r1", httpx.Response(200, text="ok", headers={"x-request-id": "r1"}))[1] == "malformed"
    # Well formed but not a status this request may get: a 500, or a 200 for garbage bytes.
    assert check(kinds["qa"], "r1", _response(500, {"error": {"code": "internal_error", "message": "m"}}))[1] == (
        "unexpected_status"
    )
    classified = {"predictions": [], "model": {"name": "m", "task": "classify", "weights": "untrained"}}
    assert check(kinds["wrong_type"], "r1", _response(200, classified))[1] == "unexpected_status"


def test_hostile_png_claims_huge_size(soak: ModuleType) -> None:
    data = next(k for k in soak.request_kinds() if k.name == "png_bomb").file[0]
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    assert struct.unpack(">II", data[16:24]) == (100_000, 100_000)
    assert struct.unpack(">I", data[29:33])[0] == zlib.crc32(data[12:29])  # a valid chunk, not just garbage


def test_short_soak_against_the_stack(
    triton: TritonServer,
    model_repo: pathlib.Path,
    start_gateway: Callable[[Mapping[str, str]], GatewayProcess],
) -> None:
    gateway = start_gateway(gateway_env(triton.grpc_url, model_repo))
    argv = [sys.executable, str(SOAK), "--url", gateway.url, "--gateway-pid", str(gateway.pid)]
    argv += ["--minutes", "0.25", "--concurrency", "2", "--request-timeout", "30"]
    result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for kind in ("qa", "detect", "classify", "garbage", "png_bomb", "wrong_type"):
        assert any(line.split()[:1] == [kind] for line in out.splitlines()), (kind, out)
    assert "p99 ms" in out and "errors by code:" in out, out
    assert "MiB (VmHWM)" in out, out
    summary = next(line for line in out.splitlines() if line.startswith("requests "))
    sent = int(summary.split()[1].rstrip(","))
    assert sent > 10 and f"well-formed answers {sent}," in summary, summary
