"""/qa end to end against a real tritonserver, compared with a bare ONNX Runtime run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from fastapi.testclient import TestClient

from gateway import Settings
from gateway.processing.qa import encode_qa
from gateway.tasks.qa import load_tokenizer
from tests.helpers import SHORT, direct_answers

LONG_CONTEXT = " ".join(
    f"Paragraph {i}: the committee met in room {i * 7} and approved budget item {i * 13} after a long debate."
    for i in range(40)
)


@pytest.mark.parametrize("context", [SHORT["context"], LONG_CONTEXT], ids=["one-window", "many-windows"])
def test_served_answers_equal_bare_engine(client: TestClient, settings: Settings, engines: dict, context: str) -> None:
    body = {"question": SHORT["question"], "context": context, "top_k": 5}
    response = client.post("/qa", json=body)
    assert response.status_code == 200, response.text
    data = response.json()
    expected = direct_answers(settings, engines["bert_qa"], body["question"], context, 5)
    assert expected, "the bare engine found no span"
    assert data["answers"] == expected
    assert data["answer"] == expected[0]["text"]
    for answer in data["answers"]:
        assert context[answer["start"] : answer["end"]] == answer["text"]


def test_long_context_is_split_into_windows(client: TestClient) -> None:
    data = client.post("/qa", json={"question": "Which room?", "context": LONG_CONTEXT}).json()
    assert data["windows"] > 1


def test_untrained_weights_are_reported(client: TestClient) -> None:
    response = client.post("/qa", json=SHORT)
    assert response.headers["X-Model-Weights"] == "untrained"
    assert response.json()["model"]["weights"] == "untrained"


def test_triton_logits_are_bit_exact(triton, settings: Settings, engines: dict) -> None:
    tokenizer = load_tokenizer(settings)
    features = encode_qa(tokenizer, SHORT["question"], LONG_CONTEXT, settings.qa_max_question_tokens)
    feeds = {n: getattr(features, n) for n in ("input_ids", "attention_mask", "token_type_ids")}
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    inputs = []
    for name, array in feeds.items():
        tensor = grpcclient.InferInput(name, list(array.shape), "INT64")
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    served = client.infer("bert_qa", inputs)
    direct = engines["bert_qa"].run(feeds)
    for name in ("start_logits", "end_logits"):
        np.testing.assert_array_equal(served.as_numpy(name), direct[name])


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"question": "", "context": "text"}, "validation_error"),
        ({"question": "   ", "context": "text"}, "invalid_text"),
        ({"question": "why?", "context": " \n "}, "invalid_text"),
        ({"question": "why? " * 100, "context": "text"}, "invalid_text"),
        # 100 question tokens leave a context that must be cut no more than the stride: a tokenizer panic, 500
        ({"question": "word " * 100, "context": "the context goes on " * 40}, "invalid_text"),
        ({"context": "text"}, "validation_error"),
        ({"question": "why?", "context": "text", "top_k": 0}, "validation_error"),
    ],
)
def test_bad_text_is_422(client: TestClient, body: dict, code: str) -> None:
    response = client.post("/qa", json=body)
    assert response.status_code == 422
    assert response.json()["error"]["code"] == code


def test_malformed_json_is_422(client: TestClient) -> None:
    response = client.post("/qa", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "validation_error"


def test_too_long_context_is_rejected(client: TestClient, settings: Settings) -> None:
    body = {"question": "why?", "context": "a" * (settings.qa_max_context_chars + 1)}
    response = client.post("/qa", json=body)
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_text"


def test_a_qa_body_over_its_limit_is_413_and_the_longest_context_fits(client: TestClient, settings: Settings) -> None:
    """``max_qa_body_bytes`` (the JSON is parsed on the event loop) refuses a larger body before parsing; a
    context of ``qa_max_context_chars`` escaped emoji (12 bytes each) still fits under it."""
    big = b'{"question": "q", "context": "' + b"a" * settings.max_qa_body_bytes + b'"}'
    response = client.post("/qa", content=big, headers={"content-type": "application/json"})
    assert response.status_code == 413 and response.json()["error"]["code"] == "payload_too_large"
    longest = json.dumps({"question": "q?", "context": "\U0001f600" * settings.qa_max_context_chars}).encode()
    assert len(longest) > 12 * settings.qa_max_context_chars
    response = client.post("/qa", content=longest, headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text  # one word to the tokenizer: one window
