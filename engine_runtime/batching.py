"""Pure helpers for batching requests into one engine call (no Triton, no I/O)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


class InvalidInput(ValueError):
    """A request's tensors are unfit for the engine; reported to that request only."""


def concat_requests(
    feeds: Sequence[Mapping[str, np.ndarray]], names: Sequence[str]
) -> tuple[dict[str, np.ndarray], list[int]]:
    """Concatenate per-request inputs along the batch axis; returns the batch and each request's size."""
    sizes = [int(f[names[0]].shape[0]) for f in feeds]
    if len(feeds) == 1:
        return {n: np.ascontiguousarray(feeds[0][n]) for n in names}, sizes
    return {n: np.concatenate([f[n] for f in feeds], axis=0) for n in names}, sizes


def split_outputs(
    outputs: Mapping[str, np.ndarray], names: Sequence[str], sizes: Sequence[int]
) -> list[dict[str, np.ndarray]]:
    """Split batched outputs back into one dict per request, in request order.

    One request (every ``execute`` at low load) gets the outputs whole, unsliced. The bounds are plain
    integers: ``np.cumsum`` on a short list cost ~12 us per call, most of this function's time."""
    if len(sizes) == 1:
        return [{n: outputs[n] for n in names}]
    bounds = [0]
    for size in sizes:
        bounds.append(bounds[-1] + size)
    return [{n: outputs[n][bounds[i] : bounds[i + 1]] for n in names} for i in range(len(sizes))]


def check_range(name: str, values: np.ndarray, low: int, high: int) -> None:
    """Raise :class:`InvalidInput` unless every value lies in ``[low, high)``."""
    if values.size and (values.min() < low or values.max() >= high):
        raise InvalidInput(f"{name} must lie in [{low}, {high}); got values in [{values.min()}, {values.max()}]")
