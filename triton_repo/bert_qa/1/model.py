"""BERT extractive QA: int64 token ids/mask/segments [B, 128] -> start/end logits [B, 128]."""

from collections.abc import Mapping

import numpy as np

from engine_runtime.batching import check_range
from engine_runtime.triton_model import EngineModel


class TritonPythonModel(EngineModel):
    def initialize(self, args: dict[str, str]) -> None:
        super().initialize(args)
        self.vocab_size = int(self.manifest.config["vocab_size"])
        self.type_vocab_size = int(self.manifest.config["type_vocab_size"])

    def validate(self, feeds: Mapping[str, np.ndarray]) -> None:
        # Out-of-range ids would make the embedding gather read out of bounds.
        check_range("input_ids", feeds["input_ids"], 0, self.vocab_size)
        check_range("token_type_ids", feeds["token_type_ids"], 0, self.type_vocab_size)
        check_range("attention_mask", feeds["attention_mask"], 0, 2)
