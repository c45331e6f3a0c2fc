"""A request that arrives while Triton restarts is held (retrying UNAVAILABLE) and answered, not lost."""

from __future__ import annotations

import threading

from fastapi.testclient import TestClient

from gateway import create_app
from tests.helpers import RestartingTriton


def test_request_during_triton_restart_is_answered(restarting_triton: RestartingTriton) -> None:
    server = restarting_triton.server
    settings = restarting_triton.settings(triton_retries=10, triton_retry_backoff_s=0.1)
    body = {"question": "Who wrote it?", "context": "The letter was written by Ada in London."}
    with TestClient(create_app(settings)) as client:
        with server():
            before = client.post("/qa", json=body)
        assert before.status_code == 200

        # Triton is down now; the request goes out anyway and must wait for the restart.
        result: dict[str, object] = {}
        worker = threading.Thread(target=lambda: result.update(response=client.post("/qa", json=body)))
        worker.start()
        with server():
            worker.join(timeout=120)
        assert not worker.is_alive()
        after = result["response"]
        assert after.status_code == 200, after.text  # type: ignore[attr-defined]
        assert after.json() == before.json()  # type: ignore[attr-defined]
