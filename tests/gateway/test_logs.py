"""Structured logs: one JSON object per line, the request id on every line written while a request is served."""

from __future__ import annotations

import io
import json
import logging
import pathlib
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import httpx
import pydantic
import pytest

from gateway import request_id
from gateway.logs import make_handler
from gateway.settings import Settings
from gateway.tasks.qa import QATask
from tests.helpers import GatewayProcess, free_port, run_gateway

QUESTION = {"question": "Who wrote it?", "context": "The letter was written by Ada in London."}


def _record(logger: logging.Logger, message: str, **kwargs: object) -> str:
    stream = io.StringIO()
    handler = make_handler("json", stream)
    logger.addHandler(handler)
    try:
        logger.warning(message, **kwargs)  # type: ignore[arg-type]
    finally:
        logger.removeHandler(handler)
    return stream.getvalue()


def test_json_line_carries_the_bound_request_id_extra_fields_and_traceback() -> None:
    logger = logging.getLogger("tests.logs.unit")
    logger.propagate = False
    outside = json.loads(_record(logger, "no request"))
    assert outside["request_id"] == "" and outside["message"] == "no request" and outside["level"] == "WARNING"
    assert outside["logger"] == "tests.logs.unit" and outside["ts"].endswith("Z") and outside["pid"] > 0

    token = request_id.current.set("req-7")
    try:
        try:
            raise ValueError("broken")
        except ValueError:
            line = _record(logger, "with %s", exc_info=True, extra={"model": "bert_qa"})
    finally:
        request_id.current.reset(token)
    assert line.count("\n") == 1  # the traceback is inside the one JSON line
    inside = json.loads(line)
    assert inside["request_id"] == "req-7"
    assert inside["model"] == "bert_qa"
    assert "ValueError: broken" in inside["exc"]


def test_text_format_shows_the_request_id() -> None:
    stream = io.StringIO()
    logger = logging.getLogger("tests.logs.text")
    logger.propagate = False
    handler = make_handler("text", stream)
    logger.addHandler(handler)
    token = request_id.current.set("req-text")
    try:
        logger.warning("hello")
    finally:
        request_id.current.reset(token)
        logger.removeHandler(handler)
    assert "[req-text]: hello" in stream.getvalue()


def test_log_format_is_json_or_text() -> None:
    assert Settings(_env_file=None).log_format == "json"  # type: ignore[call-arg]
    with pytest.raises(pydantic.ValidationError):
        Settings(log_format="xml", _env_file=None)  # type: ignore[arg-type, call-arg]


def test_unhandled_error_traceback_is_one_json_line_with_the_request_id(
    gateway_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_preprocess(self: QATask, request: object, region: object = None) -> object:
        raise RuntimeError("injected by the test")

    stream = io.StringIO()
    handler = make_handler("json", stream)
    root = logging.getLogger()
    root.addHandler(handler)
    # Test-only seam: the QA task's preprocess raises something no handler knows.
    monkeypatch.setattr(QATask, "preprocess", broken_preprocess)
    try:
        response = httpx.post(f"{gateway_url}/qa", json=QUESTION, headers={"X-Request-ID": "boom-7"}, timeout=60)
    finally:
        root.removeHandler(handler)
    assert response.status_code == 500
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    (error,) = [line for line in lines if line["logger"] == "gateway.server_errors"]
    assert error["request_id"] == "boom-7" and error["level"] == "ERROR"
    assert "RuntimeError: injected by the test" in error["exc"]


@pytest.fixture(scope="module")
def gateway_without_triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """``python -m gateway`` (default settings: JSON logs, info level) in front of a port where no Triton
    listens: every inference is a 503 whose cause the gateway logs as a warning inside the request."""
    env = {
        "GATEWAY_TRITON_URL": f"127.0.0.1:{free_port()}",
        "GATEWAY_TRITON_RETRIES": "0",
        "GATEWAY_HEALTH_PROBE_INTERVAL_S": "0",
        "GATEWAY_LOG_FORMAT": "json",
        "GATEWAY_LOG_LEVEL": "info",
    }
    with run_gateway(env, tmp_path_factory.mktemp("logs") / "gateway.log") as gateway:
        yield gateway


def _post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
    request = urllib.request.Request(url, body, headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return int(response.status), response.headers["x-request-id"]
    except urllib.error.HTTPError as error:
        return int(error.code), error.headers["x-request-id"]


def _lines_during(log_file: pathlib.Path, send: object) -> tuple[tuple[int, str], list[str]]:
    """The answer of ``send()`` and the log lines written between its start and its answer."""
    assert callable(send)
    start = log_file.stat().st_size
    answer = send()
    # stderr is line-buffered and the access line is written before the response starts.
    time.sleep(0.2)
    with open(log_file, "rb") as f:
        f.seek(start)
        return answer, f.read().decode().splitlines()


@pytest.mark.parametrize(
    ("path", "body", "headers", "status", "loggers"),
    [
        ("/qa", json.dumps(QUESTION).encode(), {"x-request-id": "log-qa-1"}, 503, {"gateway.app", "uvicorn.access"}),
        ("/detect", b"--b\r\n\r\n--b--\r\n", {"content-type": "multipart/form-data; boundary=b"}, 400, None),
        ("/no-such-route", b"{}", {"x-request-id": "log-404"}, 404, {"uvicorn.access"}),
    ],
)
def test_every_line_written_during_a_request_is_json_with_its_request_id(
    gateway_without_triton: GatewayProcess,
    path: str,
    body: bytes,
    headers: dict[str, str],
    status: int,
    loggers: set[str] | None,
) -> None:
    log_file = gateway_without_triton.log_file
    headers = {"content-type": "application/json", **headers}
    (got, rid), lines = _lines_during(log_file, lambda: _post(f"{gateway_without_triton.url}{path}", body, headers))
    assert got == status
    assert rid == headers.get("x-request-id", rid) and rid  # the client's id, or the one the gateway made
    assert lines, "nothing logged during the request"
    parsed = [json.loads(line) for line in lines]
    assert {line["request_id"] for line in parsed} == {rid}, parsed
    access = [line for line in parsed if line["logger"] == "uvicorn.access"]
    assert len(access) == 1 and access[0]["status"] == status and access[0]["path"] == path
    if loggers is not None:
        assert {line["logger"] for line in parsed} == loggers, parsed
    if path == "/qa":  # the cause of the 503 is logged inside the request, with its id
        (warning,) = [line for line in parsed if line["logger"] == "gateway.app"]
        assert warning["level"] == "WARNING" and "triton_unavailable" in warning["message"]


def test_whole_gateway_log_is_json(gateway_without_triton: GatewayProcess) -> None:
    assert httpx.get(f"{gateway_without_triton.url}/healthz", timeout=10).status_code == 200
    lines = [json.loads(line) for line in gateway_without_triton.log_file.read_text().splitlines()]
    assert any(line["logger"] == "uvicorn.error" and "startup complete" in line["message"] for line in lines)
    assert all(line["request_id"] == "" for line in lines if line["logger"] == "uvicorn.error")
