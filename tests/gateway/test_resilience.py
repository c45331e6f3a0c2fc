"""A request that arrives while Triton restarts is held (retrying UNAVAILABLE) and answered, not lost."""

from __future__ import annotations

import pathlib
import threading

from fastapi.testclient import TestClient

from gateway import Settings, create_app
from tests.helpers import free_port, triton_config
from triton_local import TritonServer


def test_request_during_triton_restart_is_answered(
    qa_only_repo: pathlib.Path, model_repo: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    ports = {"http_port": free_port(), "grpc_port": free_port(), "metrics_port": free_port()}

    def server() -> TritonServer:
        return TritonServer(triton_config(qa_only_repo, tmp_path / "t.log", **ports))

    settings = Settings(
        triton_url=f"127.0.0.1:{ports['grpc_port']}",
        model_repository=model_repo,  # every model's sizes; Triton serves only bert_qa (/qa is used)
        triton_retries=10,
        triton_retry_backoff_s=0.1,
        _env_file=None,  # type: ignore[call-arg]
    )
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
