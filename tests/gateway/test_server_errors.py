"""An unhandled exception is a JSON 500 with the request id, and the keep-alive connection survives."""

from __future__ import annotations

import logging

import httpx
import pytest

from gateway.tasks.qa import QATask

QUESTION = {"question": "Who wrote it?", "context": "The letter was written by Ada in London."}


def _local_port(response: httpx.Response) -> int:
    """The client-side port of the connection that carried ``response``."""
    return int(response.extensions["network_stream"].get_extra_info("client_addr")[1])


def test_unhandled_error_is_json_500_with_request_id_on_a_kept_connection(
    gateway_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken_preprocess(self: QATask, request: object, region: object = None) -> object:
        raise RuntimeError("injected by the test")

    with httpx.Client(base_url=gateway_url, timeout=60) as client:
        assert client.post("/qa", json=QUESTION).status_code == 200

        # Test-only seam: the QA task's preprocess raises something no handler knows.
        monkeypatch.setattr(QATask, "preprocess", broken_preprocess)
        with caplog.at_level(logging.ERROR, logger="gateway.server_errors"):
            failed = client.post("/qa", json=QUESTION, headers={"X-Request-ID": "boom-42"})
        assert failed.status_code == 500
        assert failed.headers["content-type"] == "application/json"
        assert failed.json() == {"error": {"code": "internal_error", "message": "internal error"}}
        assert failed.headers["x-request-id"] == "boom-42"
        assert "close" not in failed.headers.get("connection", "")
        logged = [r for r in caplog.records if r.name == "gateway.server_errors"]
        assert logged and "boom-42" in logged[-1].getMessage() and logged[-1].exc_info is not None
        assert str(logged[-1].exc_info[1]) == "injected by the test"  # that error, not another one

        monkeypatch.undo()
        after = client.post("/qa", json=QUESTION)
        assert after.status_code == 200, after.text
        assert _local_port(after) == _local_port(failed)  # the same TCP connection served it
        assert after.headers["x-request-id"]
