"""Class names: COCO (80, YOLOv5 order) and ImageNet-1k (1000, index order)."""

from __future__ import annotations

import functools
from importlib import resources


@functools.cache
def load_labels(name: str) -> tuple[str, ...]:
    """Labels from ``gateway/labels/<name>.txt``, one per line, in class-id order."""
    text = resources.files(__package__).joinpath(f"{name}.txt").read_text(encoding="utf-8")
    return tuple(line for line in text.splitlines() if line)


def coco() -> tuple[str, ...]:
    return load_labels("coco")


def imagenet() -> tuple[str, ...]:
    return load_labels("imagenet")
