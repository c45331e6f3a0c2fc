"""SQuAD-style QA: question + context -> overlapping token windows; logits -> answer spans."""

from __future__ import annotations

import dataclasses

import numpy as np
from tokenizers.implementations import BaseTokenizer

from gateway.errors import InvalidText, is_rust_panic


@dataclasses.dataclass(frozen=True)
class QAFeatures:
    """All windows of one question/context pair, ready for one batched engine call.

    Args:
        input_ids, attention_mask, token_type_ids: int64 [W, S].
        context_mask: bool [W, S], True where the token belongs to the context.
        offsets: int64 [W, S, 2], character span of each token inside the context.
    """

    input_ids: np.ndarray
    attention_mask: np.ndarray
    token_type_ids: np.ndarray
    context_mask: np.ndarray
    offsets: np.ndarray

    @property
    def windows(self) -> int:
        return int(self.input_ids.shape[0])


@dataclasses.dataclass(frozen=True)
class Span:
    """One answer candidate.

    Args:
        text: the answer, a substring of the context.
        start, end: character offsets of the answer in the context (end exclusive).
        score: start logit + end logit.
        probability: softmax of ``score`` over the n-best candidates of all windows.
    """

    text: str
    start: int
    end: int
    score: float
    probability: float


def configure_tokenizer(tokenizer: BaseTokenizer, max_seq_len: int, doc_stride: int) -> BaseTokenizer:
    """Truncate only the context into ``max_seq_len`` windows overlapping by ``doc_stride`` tokens.

    The tokenizer does not pad: :func:`encode_qa` pads each window to ``max_seq_len`` in NumPy with the
    values the tokenizer's own padding would give (``[PAD]`` id 0, type 0, attention 0, offsets (0, 0), no
    sequence). Converting its padded Python lists (``max_seq_len`` items per field, offsets as tuples) cost
    more than the tokenization itself: padding here halves ``encode_qa``'s CPU for a one-window question
    (docs/benchmarks.md, "What sets the gateway's CPU").
    """
    tokenizer.enable_truncation(max_length=max_seq_len, stride=doc_stride, strategy="only_second")
    tokenizer.no_padding()
    return tokenizer


def encode_qa(tokenizer: BaseTokenizer, question: str, context: str, max_question_tokens: int) -> QAFeatures:
    """Tokenise with a tokenizer prepared by :func:`configure_tokenizer`; one row per context window,
    padded to the tokenizer's window length."""
    if tokenizer.truncation is None:
        raise ValueError("encode_qa needs a tokenizer prepared by configure_tokenizer")
    seq_len = int(tokenizer.truncation["max_length"])
    question, context_stripped = question.strip(), context.strip()
    if not question:
        raise InvalidText("question is empty")
    if not context_stripped:
        raise InvalidText("context is empty")
    try:
        encoding = tokenizer.encode(question, context)
    except BaseException as exc:
        # The Rust tokenizer raises a bare Exception when the question fills the window, and panics when it
        # leaves the context no more tokens than the window stride (and the context must be cut): pyo3's
        # PanicException, a BaseException that nothing else catches (a plain-text 500 without request id).
        if not isinstance(exc, Exception) and not is_rust_panic(exc):
            raise
        raise InvalidText(f"question is too long for a {seq_len}-token window") from exc
    n_question = encoding.sequence_ids.count(0)
    if n_question > max_question_tokens:
        raise InvalidText(f"question has {n_question} tokens; the limit is {max_question_tokens}")
    windows = [encoding, *encoding.overflowing]
    shape = (len(windows), seq_len)
    input_ids, attention_mask, token_type_ids = (np.zeros(shape, np.int64) for _ in range(3))
    context_mask = np.zeros(shape, bool)
    offsets = np.zeros((*shape, 2), np.int64)
    for row, window in enumerate(windows):
        n = len(window.ids)
        input_ids[row, :n] = window.ids
        attention_mask[row, :n] = window.attention_mask
        token_type_ids[row, :n] = window.type_ids
        context_mask[row, :n] = [sid == 1 for sid in window.sequence_ids]
        offsets[row, :n] = window.offsets
    if not context_mask.any():
        raise InvalidText("context has no tokens")
    return QAFeatures(input_ids, attention_mask, token_type_ids, context_mask, offsets)


def decode_spans(
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    features: QAFeatures,
    context: str,
    n_best: int,
    max_answer_tokens: int,
    top_k: int = 1,
) -> list[Span]:
    """Best ``top_k`` spans over all windows, as in the SQuAD reference post-processing.

    Per window, the ``n_best`` start and end tokens (context tokens only) are paired as one
    n_best x n_best array; candidates keep the order of the reference loops (window, start rank,
    end rank), so ties resolve exactly as they did.
    """
    all_scores, all_starts, all_ends = [], [], []
    for w in range(features.windows):
        # n-best among context tokens only: question, special and padding tokens are never answers.
        context_idx = np.flatnonzero(features.context_mask[w])
        start, end = start_logits[w], end_logits[w]
        starts = context_idx[np.argsort(-start[context_idx], kind="stable")[:n_best]]
        ends = context_idx[np.argsort(-end[context_idx], kind="stable")[:n_best]]
        length = ends[None, :] - starts[:, None] + 1
        valid = (length >= 1) & (length <= max_answer_tokens)
        pair_s, pair_e = np.nonzero(valid)  # row-major: start rank, then end rank
        s, e = starts[pair_s], ends[pair_e]
        all_scores.append(start[s].astype(np.float64) + end[e].astype(np.float64))
        all_starts.append(features.offsets[w, s, 0])
        all_ends.append(features.offsets[w, e, 1])
    scores = np.concatenate(all_scores) if all_scores else np.zeros(0)
    if not scores.size:
        return []
    # Best score first; ties go to the earlier span (stable on window order).
    order = np.argsort(-scores, kind="stable")
    scores = scores[order]
    char_starts, char_ends = np.concatenate(all_starts)[order], np.concatenate(all_ends)[order]
    probs = np.exp(scores - scores.max())
    probs /= probs.sum()
    spans: list[Span] = []
    seen: set[tuple[int, int]] = set()
    for i in range(len(scores)):
        s_char, e_char = int(char_starts[i]), int(char_ends[i])
        if (s_char, e_char) in seen:  # the same text found again in an overlapping window
            continue
        seen.add((s_char, e_char))
        spans.append(
            Span(
                text=context[s_char:e_char],
                start=s_char,
                end=e_char,
                score=float(scores[i]),
                probability=float(probs[i]),
            )
        )
        if len(spans) == top_k:
            break
    return spans


def window_chunks(windows: int, chunk_rows: int, max_batch_size: int) -> list[slice]:
    """Consecutive row ranges covering ``windows`` rows, one per Triton call.

    Each holds at most ``chunk_rows`` rows, and never more than the model's ``max_batch_size``;
    a bound of 0 means no bound from that side (both 0: one call with every row).
    """
    if windows < 0 or chunk_rows < 0 or max_batch_size < 0:
        raise ValueError("windows, chunk_rows and max_batch_size must not be negative")
    bounds = [b for b in (chunk_rows, max_batch_size) if b > 0]
    size = min(bounds) if bounds else max(windows, 1)
    return [slice(i, min(i + size, windows)) for i in range(0, windows, size)]
