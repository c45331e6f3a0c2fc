"""Concurrent requests through the gateway get the same answers as the same requests one at a time.

Under concurrency Triton's dynamic batcher merges requests into shared engine calls, and the
gateway's pre/post-processing runs in parallel threads; neither may change any answer.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fastapi.testclient import TestClient

from gateway import Settings
from tests.helpers import direct_run, threshold_for


def _requests(chelsea_jpeg: bytes, astronaut_png: bytes, conf: float) -> list[tuple[str, dict[str, Any]]]:
    qa = [
        (
            "/qa",
            {
                "json": {
                    "question": f"What is item {i}?",
                    "context": f"Item {i} is a red box number {i * 3}. " * (i + 1),
                }
            },
        )
        for i in range(8)
    ]
    classify = [
        ("/classify", {"params": {"model": m, "top_k": 5}, "files": {"file": ("c.jpg", chelsea_jpeg, "image/jpeg")}})
        for m in ("resnet50_vd", "efficientnet_lite0") * 3
    ]
    detect = [
        ("/detect", {"params": {"conf_threshold": conf}, "files": {"file": ("a.png", astronaut_png, "image/png")}})
    ] * 3
    return qa + classify + detect


def test_concurrent_answers_equal_sequential_answers(
    client: TestClient, settings: Settings, engines: dict, chelsea_jpeg: bytes, astronaut_png: bytes
) -> None:
    prediction, _ = direct_run(settings, engines["yolov5n"], astronaut_png)
    requests = _requests(chelsea_jpeg, astronaut_png, threshold_for(prediction, 100))
    sequential = [client.post(path, **kwargs) for path, kwargs in requests]
    assert all(r.status_code == 200 for r in sequential), [r.text for r in sequential if r.status_code != 200]

    with ThreadPoolExecutor(max_workers=len(requests)) as pool:
        concurrent = list(pool.map(lambda item: client.post(item[0], **item[1]), requests * 2))

    for i, response in enumerate(concurrent):
        assert response.status_code == 200, response.text
        assert response.json() == sequential[i % len(requests)].json()
