"""A probe inference per model over Triton's HTTP API: zeros of each input's shape, batch 1.

Model-ready says only that a model is loaded; a Python-backend model whose stub process died
stays "ready" while every inference fails with ``Stub process '<m>_0_0' is not healthy``.
Only an inference tells the two apart. The probe uses the standard library only (the binary
tensor extension of the KServe v2 HTTP protocol), so it is cheap to run as a health check.
"""

from __future__ import annotations

import dataclasses
import json
import time
import urllib.error
import urllib.request
from typing import Any

# Triton data types (model config ``TYPE_*`` without the prefix) to their byte size.
_ITEM_BYTES = {
    "BOOL": 1,
    "UINT8": 1,
    "INT8": 1,
    "UINT16": 2,
    "INT16": 2,
    "FP16": 2,
    "BF16": 2,
    "UINT32": 4,
    "INT32": 4,
    "FP32": 4,
    "UINT64": 8,
    "INT64": 8,
    "FP64": 8,
}

# The message Triton's Python backend answers with once a model's stub process is gone.
STUB_UNHEALTHY = "is not healthy"


@dataclasses.dataclass(frozen=True)
class ProbeResult:
    """Outcome of one probe inference.

    Args:
        model: the Triton model name.
        ok: the model answered the inference.
        seconds: wall time of the probe (config fetch included on the first one).
        error: why it failed; empty when ok.
        stub_dead: the failure is the Python backend's dead-stub error.
    """

    model: str
    ok: bool
    seconds: float
    error: str = ""
    stub_dead: bool = False


def _request(url: str, timeout_s: float, body: bytes | None = None, headers: dict[str, str] | None = None) -> bytes:
    method = "POST" if body is not None else "GET"
    request = urllib.request.Request(url, data=body, headers=headers or {}, method=method)
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        return response.read()  # type: ignore[no-any-return]


def _error_text(exc: Exception) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        try:
            detail = json.loads(exc.read()).get("error", "")
        except (ValueError, OSError):
            detail = ""
        return f"HTTP {exc.code}: {detail}" if detail else f"HTTP {exc.code}"
    if isinstance(exc, urllib.error.URLError):
        return f"unreachable: {exc.reason}"
    return f"{type(exc).__name__}: {exc}"


def model_names(http_url: str, timeout_s: float = 5.0) -> list[str]:
    """Names of the models Triton has loaded (``READY`` in the repository index)."""
    index = json.loads(_request(f"{http_url}/v2/repository/index", timeout_s, body=b"{}"))
    return sorted(m["name"] for m in index if m.get("state") == "READY")


def probe_body(config: dict[str, Any]) -> tuple[bytes, int]:
    """The probe request for a model config: (body, JSON header length).

    One row of zeros per input (variable dimensions as 1); only the first output, as binary.
    """
    batched = int(config.get("max_batch_size", 0)) > 0
    inputs, blobs = [], []
    for spec in config["input"]:
        dtype = spec["data_type"].removeprefix("TYPE_")
        if dtype not in _ITEM_BYTES:
            raise ValueError(f"cannot probe input {spec['name']!r} of type {dtype}")
        dims = [max(int(d), 1) for d in spec["dims"]]
        shape = [1, *dims] if batched else dims
        count = 1
        for d in shape:
            count *= d
        nbytes = count * _ITEM_BYTES[dtype]
        parameters = {"binary_data_size": nbytes}
        inputs.append({"name": spec["name"], "shape": shape, "datatype": dtype, "parameters": parameters})
        blobs.append(bytes(nbytes))
    outputs = [{"name": config["output"][0]["name"], "parameters": {"binary_data": True}}]
    header = json.dumps({"id": "probe", "inputs": inputs, "outputs": outputs}).encode()
    return header + b"".join(blobs), len(header)


def probe_model(http_url: str, model: str, timeout_s: float = 10.0) -> ProbeResult:
    """One probe inference on ``model``; never raises for a server-side failure."""
    start = time.perf_counter()
    try:
        config = json.loads(_request(f"{http_url}/v2/models/{model}/config", timeout_s))
        body, header_len = probe_body(config)
        _request(
            f"{http_url}/v2/models/{model}/infer",
            timeout_s,
            body=body,
            headers={"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(header_len)},
        )
    except (urllib.error.URLError, OSError, ValueError, KeyError) as exc:
        error = _error_text(exc)
        return ProbeResult(model, False, time.perf_counter() - start, error, STUB_UNHEALTHY in error)
    return ProbeResult(model, True, time.perf_counter() - start)


def probe_all(http_url: str, models: list[str] | None = None, timeout_s: float = 10.0) -> list[ProbeResult]:
    """Probe ``models`` (all loaded models when None or empty), one after the other."""
    if not models:
        try:
            models = model_names(http_url, timeout_s)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            return [ProbeResult("<server>", False, 0.0, _error_text(exc))]
        if not models:
            return [ProbeResult("<server>", False, 0.0, "no model is loaded")]
    return [probe_model(http_url, m, timeout_s) for m in models]


def reload_model(http_url: str, model: str, timeout_s: float = 120.0) -> None:
    """Unload ``model``, then load it again at once (Triton started with explicit model control).

    A plain ``load`` of an unchanged, loaded model is a no-op in Triton 2.51 (and a load with
    the same config reuses the instances), so a dead stub stays dead; after an unload, the
    load starts fresh instances with new stub processes. The old model object (holding the
    dead stub) never finishes unloading (measured: still ``UNLOADING`` after 10 s), so the
    load does not wait for it; that lingering object is why ``TritonServer.stop`` then waits less.
    Raises ``urllib.error.URLError`` / ``OSError`` when Triton refuses or cannot be reached.
    """
    for action in ("unload", "load"):
        _request(f"{http_url}/v2/repository/models/{model}/{action}", timeout_s, body=b"{}")


def reload_dead(http_url: str, results: list[ProbeResult], timeout_s: float = 10.0) -> list[ProbeResult]:
    """Reload every model whose probe failed with the dead-stub error, then probe it again.

    Returns ``results`` with those models' entries replaced by the new probe (or by the reload's
    failure). This is what makes a health check heal where nothing else supervises Triton.
    """
    healed = []
    for result in results:
        if not result.stub_dead:
            healed.append(result)
            continue
        try:
            reload_model(http_url, result.model, max(timeout_s, 60.0))
        except (urllib.error.URLError, OSError) as exc:
            healed.append(ProbeResult(result.model, False, result.seconds, f"reload failed: {_error_text(exc)}", True))
            continue
        healed.append(probe_model(http_url, result.model, timeout_s))
    return healed
