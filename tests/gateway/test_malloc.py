"""glibc malloc thresholds (``gateway/_malloc.py``)."""

from __future__ import annotations

import ctypes.util
import platform

import pytest

from gateway._malloc import tune_malloc


def test_nothing_to_set_is_not_a_call() -> None:
    assert tune_malloc(None, None) is False
    assert tune_malloc(0, 0) is False


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_glibc_takes_the_thresholds() -> None:
    assert ctypes.util.find_library("c")
    assert tune_malloc(16 * 2**20, 64 * 2**20) is True
    assert tune_malloc(None, 64 * 2**20) is True  # one of the two
