"""stop_process (unit tier): real child processes, one that ignores the signal and one that obeys it."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys

import pytest

from triton_local.process import stop_process
from triton_local.server import sigint_restored

pytestmark = pytest.mark.unit


def _child(handler: str, stderr: int | None = None) -> subprocess.Popen[str]:
    """A Python child that sets ``handler`` up for SIGINT and SIGTERM, says so, then sleeps."""
    code = (
        "import signal, sys, time\n"
        f"handler = {handler}\n"
        "signal.signal(signal.SIGINT, handler)\n"
        "signal.signal(signal.SIGTERM, handler)\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=stderr, text=True)
    assert process.stdout is not None
    assert process.stdout.readline() == "ready\n"  # the handlers are in place: no race with the signal
    return process


def test_a_child_that_ignores_the_signal_is_killed_after_the_timeout(caplog: pytest.LogCaptureFixture) -> None:
    process = _child("signal.SIG_IGN")
    with caplog.at_level(logging.WARNING, logger="triton_local.process"):
        assert stop_process(process, 0.5) is None
    assert process.returncode == -signal.SIGKILL
    assert f"pid {process.pid} ignored SIGINT for 0.5s; killing it" in caplog.text


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])
def test_a_child_that_exits_on_the_signal_is_not_killed(
    stop_signal: signal.Signals, caplog: pytest.LogCaptureFixture
) -> None:
    process = _child("lambda signum, frame: sys.exit(100 + signum)")
    with caplog.at_level(logging.WARNING, logger="triton_local.process"):
        assert stop_process(process, 30, stop_signal) == 100 + stop_signal
    assert process.returncode == 100 + stop_signal  # its own exit, not SIGKILL's
    assert "killing" not in caplog.text


def test_the_default_sigint_ends_a_python_child() -> None:
    # Python's own handler, set explicitly: a child of a shell's background job inherits SIGINT ignored.
    process = _child("signal.default_int_handler", stderr=subprocess.DEVNULL)  # no KeyboardInterrupt traceback
    assert stop_process(process, 30) == -signal.SIGINT  # Python re-raises an unhandled Ctrl-C as SIGINT


def test_an_exited_child_is_not_signalled() -> None:
    process = subprocess.Popen([sys.executable, "-c", "raise SystemExit(5)"])
    # Wait for it to exit without reaping it (a zombie that poll() has not seen yet).
    os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOWAIT)
    assert stop_process(process, 30) == 5
    assert stop_process(process, 30) == 5  # reaped already: the same answer, nothing sent


def test_a_server_started_with_sigint_ignored_gets_it_back_without_a_preexec_fn() -> None:
    """As a shell's background job starts the tests: SIGINT is ignored and children inherit that. The
    command restores it through ``env`` (a ``preexec_fn`` forces a full fork that gRPC can abort)."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        code = "import signal, time; print(signal.getsignal(signal.SIGINT), flush=True); time.sleep(60)"
        cmd, preexec_fn = sigint_restored([sys.executable, "-c", code])
        process = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, preexec_fn=preexec_fn
        )
    finally:
        signal.signal(signal.SIGINT, previous)
    assert preexec_fn is None and cmd[:2] == ["env", "--default-signal=INT"]
    assert process.stdout is not None
    assert "default_int_handler" in process.stdout.readline()  # not 1 (SIG_IGN)
    assert stop_process(process, 30) == -signal.SIGINT


def test_sigint_not_ignored_runs_the_command_as_it_is() -> None:
    assert sigint_restored(["tritonserver"]) == (["tritonserver"], None)
