"""One /qa request cannot monopolise BERT, and its Triton work stops at its deadline or when its client leaves.

Real tritonserver (tiny engines), a real uvicorn gateway, real HTTP clients. Work done by Triton
is read from Triton's own metrics (``nv_inference_count``: rows the model ran for ``bert_qa``), so
the assertions are about rows run, not about wall-clock thresholds.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator

import httpx
import pytest

from gateway import Settings, create_app
from gateway.tasks.qa import load_tokenizer
from tests.helpers import serve
from triton_local import TritonServer

LOGGER = logging.getLogger(__name__)
QUESTION = "Which room did the committee meet in?"
SMALL = {"question": "Who wrote the report?", "context": "The report was written by Ada Lovelace in 1843."}
# Windows per Triton call in these tests: small, so a long context makes many sequential calls.
CHUNK_ROWS = 1
MAX_WINDOWS = 450


def long_context(paragraphs: int) -> str:
    return " ".join(
        f"Paragraph {i}: the committee met in room {i * 7} and approved budget item {i * 13} after a long debate."
        for i in range(paragraphs)
    )


def windows_of(settings: Settings, context: str) -> int:
    return len(load_tokenizer(settings).encode(QUESTION, context).overflowing) + 1


def rows_run(triton: TritonServer) -> int:
    """Rows ``bert_qa`` has run so far, from Triton's metrics."""
    text = urllib.request.urlopen(triton.metrics_url, timeout=10).read().decode()
    match = re.search(r'^nv_inference_count\{model="bert_qa",version="1"\} (\d+)', text, re.MULTILINE)
    assert match, "nv_inference_count for bert_qa missing from Triton's metrics"
    return int(match.group(1))


def settled_rows(triton: TritonServer, quiet_s: float = 0.5, limit_s: float = 10.0) -> int:
    """Triton's row count once it has stopped moving for ``quiet_s`` (nothing more is running)."""
    deadline = time.monotonic() + limit_s
    last = rows_run(triton)
    while time.monotonic() < deadline:
        time.sleep(quiet_s)
        now = rows_run(triton)
        if now == last:
            return now
        last = now
    raise AssertionError(f"bert_qa still running rows after {limit_s}s")


def wait_for(condition: Callable[[], bool], limit_s: float = 20.0) -> None:
    deadline = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


def cancelled(url: str, reason: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    match = re.search(
        rf'^gateway_cancelled_requests_total\{{reason="{reason}",route="/qa"\}} ([0-9.e+]+)', text, re.MULTILINE
    )
    return float(match.group(1)) if match else 0.0


@pytest.fixture(scope="module")
def qa_settings(settings: Settings) -> Settings:
    update = {"qa_chunk_rows": CHUNK_ROWS, "qa_max_windows": MAX_WINDOWS, "qa_max_context_chars": 250_000}
    return settings.model_copy(update=update)


@pytest.fixture(scope="module")
def url(qa_settings: Settings) -> Iterator[str]:
    with serve(create_app(qa_settings)) as url:
        yield url


@pytest.fixture(scope="module")
def long_body(qa_settings: Settings) -> dict[str, str]:
    """A context of over a hundred windows: a long request that still completes in a couple of seconds."""
    context = long_context(560)
    assert windows_of(qa_settings, context) > 100
    return {"question": QUESTION, "context": context}


@pytest.fixture(scope="module")
def longer_body(qa_settings: Settings) -> dict[str, str]:
    """A context of about 400 windows, under the limit: a request to be cut short."""
    context = long_context(1600)
    assert 300 < windows_of(qa_settings, context) <= MAX_WINDOWS
    return {"question": QUESTION, "context": context}


def test_context_over_the_window_limit_is_413(url: str, qa_settings: Settings, triton: TritonServer) -> None:
    context = long_context(2000)
    windows = windows_of(qa_settings, context)
    assert windows > MAX_WINDOWS
    before = rows_run(triton)
    response = httpx.post(f"{url}/qa", json={"question": QUESTION, "context": context}, timeout=60)
    assert response.status_code == 413
    error = response.json()["error"]
    assert error["code"] == "too_many_windows"
    assert f"needs {windows} windows" in error["message"] and f"limit is {MAX_WINDOWS}" in error["message"]
    assert settled_rows(triton) == before, "a refused context must not reach Triton"


def test_small_request_is_not_stuck_behind_a_long_one(
    url: str, qa_settings: Settings, long_body: dict[str, str], triton: TritonServer
) -> None:
    long_windows = windows_of(qa_settings, long_body["context"])
    before = settled_rows(triton)
    results: dict[str, httpx.Response] = {}
    long_thread = threading.Thread(
        target=lambda: results.update(long=httpx.post(f"{url}/qa", json=long_body, timeout=120))
    )
    long_thread.start()
    # Send the small request once the long one is running in Triton, with most of its rows to go.
    wait_for(lambda: rows_run(triton) > before)
    small = httpx.post(f"{url}/qa", json=SMALL, timeout=120)
    rows_when_small_done = rows_run(triton) - before
    long_thread.join(timeout=120)
    assert small.status_code == 200, small.text
    assert results["long"].status_code == 200, results["long"].text
    assert results["long"].json()["windows"] == long_windows
    # The small request's row ran while the long request still had rows to run: it was not queued
    # behind all of them (which is what submitting every window at once did).
    LOGGER.info("small request done after %d rows of the long one's %d", rows_when_small_done - 1, long_windows)
    assert rows_when_small_done < long_windows, (rows_when_small_done, long_windows)
    assert settled_rows(triton) - before == long_windows + 1


def test_deadline_ends_with_504_and_stops_triton_work(
    url: str, qa_settings: Settings, longer_body: dict[str, str], triton: TritonServer
) -> None:
    windows = windows_of(qa_settings, longer_body["context"])
    # The deadline is a fraction of the time this machine takes to answer the whole request, so the
    # cut lands in the middle of its Triton calls however fast the machine is (a fixed 1 s let a
    # fast CI runner finish all 415 windows and still miss the deadline in the post-processing).
    started = time.monotonic()
    whole = httpx.post(f"{url}/qa", json=longer_body, timeout=120)
    whole_s = time.monotonic() - started
    assert whole.status_code == 200, whole.text
    assert whole.json()["windows"] == windows
    before = settled_rows(triton)
    count_before = cancelled(url, "deadline")
    timeout = f"{whole_s / 3:.3f}"
    response = httpx.post(f"{url}/qa", json=longer_body, headers={"X-Request-Timeout": timeout}, timeout=60)
    assert response.status_code == 504, response.text
    assert response.json()["error"]["code"] == "upstream_timeout"
    # The rows not run by the deadline were never run: nothing went on after the 504.
    done = settled_rows(triton) - before
    LOGGER.info("deadline %ss (whole request %.2fs): %d of %d windows run", timeout, whole_s, done, windows)
    assert done < windows, (done, windows)
    assert cancelled(url, "deadline") == count_before + 1


def test_client_disconnect_stops_triton_work(
    url: str, qa_settings: Settings, longer_body: dict[str, str], triton: TritonServer
) -> None:
    windows = windows_of(qa_settings, longer_body["context"])
    before = settled_rows(triton)
    count_before = cancelled(url, "client_disconnect")
    body = json.dumps(longer_body).encode()
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        head = f"POST /qa HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        head += f"Content-Length: {len(body)}\r\n\r\n"
        sock.sendall(head.encode() + body)
        # The request is in Triton; leave without reading the answer.
        wait_for(lambda: rows_run(triton) > before)
    wait_for(lambda: cancelled(url, "client_disconnect") == count_before + 1)
    done = settled_rows(triton) - before
    LOGGER.info("disconnect: %d of %d windows run", done, windows)
    assert 0 < done < windows, (done, windows)


@pytest.mark.parametrize("value", ["soon", "0", "-1", "nan", "inf"])
def test_invalid_request_timeout_is_400(url: str, value: str) -> None:
    response = httpx.post(f"{url}/qa", json=SMALL, headers={"X-Request-Timeout": value}, timeout=60)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_request_timeout"


def test_request_within_its_deadline_is_answered(url: str) -> None:
    response = httpx.post(f"{url}/qa", json=SMALL, headers={"X-Request-Timeout": "20"}, timeout=60)
    assert response.status_code == 200, response.text
