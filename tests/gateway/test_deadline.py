"""The X-Request-Timeout header (pure parsing); the end-to-end behaviour is in tests/reliability."""

from __future__ import annotations

import pytest

from gateway.deadline import parse_timeout


def test_no_header_takes_the_default() -> None:
    assert parse_timeout(None, default_s=30.0, max_s=60.0) == 30.0


def test_default_never_exceeds_the_maximum() -> None:
    assert parse_timeout(None, default_s=30.0, max_s=10.0) == 10.0


@pytest.mark.parametrize(("value", "expected"), [("0.25", 0.25), ("5", 5.0), ("1e1", 10.0), ("600", 60.0)])
def test_header_is_seconds_cut_to_the_maximum(value: str, expected: float) -> None:
    assert parse_timeout(value, default_s=30.0, max_s=60.0) == expected


@pytest.mark.parametrize("value", ["", "soon", "0", "-1", "nan", "inf", "5s"])
def test_invalid_header_is_refused(value: str) -> None:
    with pytest.raises(ValueError, match="x-request-timeout"):
        parse_timeout(value, default_s=30.0, max_s=60.0)
