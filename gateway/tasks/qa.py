"""Extractive question answering with BERT."""

from __future__ import annotations

import dataclasses

import numpy as np
from tokenizers.implementations import BaseTokenizer, BertWordPieceTokenizer

from gateway.catalog import ModelInfo
from gateway.errors import InvalidText, TooManyWindows
from gateway.metrics import Metrics
from gateway.model_io import ModelIO, ShapeMismatch, read_model_io, resolve
from gateway.processing.qa import (
    QAFeatures,
    Span,
    configure_tokenizer,
    decode_spans,
    encode_qa,
    window_chunks,
)
from gateway.settings import Settings
from gateway.shared_memory import Region
from gateway.tasks.base import Task
from gateway.triton import TritonClient

INPUTS = ("input_ids", "attention_mask", "token_type_ids")
OUTPUTS = ["start_logits", "end_logits"]
# Up to this many context characters (about two windows) tokenising takes about 0.2 ms, no more than the
# hop to a worker thread and back costs, so it runs on the event loop; longer contexts go to a worker
# thread. Span decoding (vectorised, well under 0.1 ms a window) likewise up to this many windows.
INLINE_CONTEXT_CHARS = 1_000
INLINE_WINDOWS = 2


def new_tokenizer(settings: Settings) -> BaseTokenizer:
    """An uncased BERT WordPiece fast tokenizer (``settings.qa_vocab``), not yet windowed."""
    return BertWordPieceTokenizer(str(settings.qa_vocab), lowercase=True)


def load_tokenizer(settings: Settings, seq_len: int | None = None) -> BaseTokenizer:
    """An uncased BERT WordPiece fast tokenizer (``settings.qa_vocab``) cutting ``seq_len``-token windows.

    ``seq_len`` None: the QA model's, read from the model repository (as the gateway does at start-up).
    """
    if seq_len is None:
        io = read_model_io(settings.model_repository, settings.qa_model)
        if io is None:
            raise ShapeMismatch(f"no configuration of {settings.qa_model} under {settings.model_repository}")
        seq_len = resolve("qa_max_seq_len", settings.qa_max_seq_len, io.seq_len(), io.name)
    return configure_tokenizer(new_tokenizer(settings), seq_len, settings.qa_doc_stride)


@dataclasses.dataclass(frozen=True)
class QAQuery:
    """Args:
    question: the question.
    context: the passage holding the answer.
    top_k: how many answer spans to return.
    """

    question: str
    context: str
    top_k: int


@dataclasses.dataclass(frozen=True)
class QAResult:
    """Args:
    spans: best answer spans, best first (empty when no valid span exists).
    windows: how many context windows were run.
    """

    spans: list[Span]
    windows: int


class QATask(Task[QAQuery, QAFeatures, QAResult]):
    def __init__(
        self, model: ModelInfo, client: TritonClient, metrics: Metrics, settings: Settings, tokenizer: BaseTokenizer
    ) -> None:
        super().__init__("qa", model, client, metrics)
        self.settings = settings
        self.tokenizer = tokenizer
        self.seq_len = 0  # from the model's configuration: bind()
        self.max_batch_size = 0

    def bind(self, io: ModelIO) -> None:
        super().bind(io)
        self.seq_len = resolve("qa_max_seq_len", self.settings.qa_max_seq_len, io.seq_len(), io.name)
        self.max_batch_size = io.max_batch_size
        configure_tokenizer(self.tokenizer, self.seq_len, self.settings.qa_doc_stride)

    def inline_preprocess(self, request: QAQuery) -> bool:
        return len(request.context) <= INLINE_CONTEXT_CHARS

    def inline_postprocess(self, request: QAQuery, features: QAFeatures) -> bool:
        return features.windows <= INLINE_WINDOWS

    def preprocess(self, request: QAQuery, region: Region | None = None) -> QAFeatures:
        if len(request.context) > self.settings.qa_max_context_chars:
            raise InvalidText(
                f"context has {len(request.context)} characters; the limit is {self.settings.qa_max_context_chars}"
            )
        features = encode_qa(self.tokenizer, request.question, request.context, self.settings.qa_max_question_tokens)
        if features.windows > self.settings.qa_max_windows:
            raise TooManyWindows(
                f"context needs {features.windows} windows of {self.seq_len} tokens; "
                f"the limit is {self.settings.qa_max_windows}"
            )
        return features

    async def infer(self, features: QAFeatures) -> dict[str, np.ndarray]:
        inputs = {name: getattr(features, name) for name in INPUTS}
        # One call at a time: between them, other requests' rows enter Triton's batching queue,
        # so a long context cannot hold the engine; cancelling this coroutine (deadline, client
        # gone) cancels the call in flight, and the remaining ones are never sent.
        results = []
        for rows in window_chunks(features.windows, self.settings.qa_chunk_rows, self.max_batch_size):
            results.append(await self._infer_rows({name: array[rows] for name, array in inputs.items()}, OUTPUTS))
        return {name: np.concatenate([r[name] for r in results]) for name in OUTPUTS}

    def postprocess(self, request: QAQuery, features: QAFeatures, outputs: dict[str, np.ndarray]) -> QAResult:
        s = self.settings
        spans = decode_spans(
            outputs["start_logits"],
            outputs["end_logits"],
            features,
            request.context,
            s.qa_n_best,
            s.qa_max_answer_tokens,
            request.top_k,
        )
        return QAResult(spans, features.windows)
