"""Keep a tritonserver able to serve: reload a model whose stub died, restart a server that died.

Two signals find a dead model: a stub process seen alive earlier is gone (checked from /proc
every ``interval_s``, free), and a probe inference of every model every ``probe_interval_s``
(a hung or broken model). A model is reloaded through the repository API, which in Triton 2.51
respawns its stub; when that fails, or tritonserver itself exited, the server is restarted.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time

from triton_local.probe import probe_all
from triton_local.server import TritonServer, TritonServerError

LOGGER = logging.getLogger(__name__)


@dataclasses.dataclass
class HealConfig:
    """How the supervisor watches and heals.

    Args:
        interval_s: how often the stub processes (and the server process) are checked.
        probe_interval_s: how often every model gets a probe inference (0: never).
        probe_timeout_s: deadline of one probe inference.
        probe_failures: consecutive failed probes (not the dead-stub error, which heals at once)
            before a model is reloaded; a busy model can miss one deadline.
        reload_timeout_s: deadline of one model reload.
    """

    interval_s: float = 1.0
    probe_interval_s: float = 10.0
    probe_timeout_s: float = 10.0
    probe_failures: int = 3
    reload_timeout_s: float = 120.0


class Supervisor:
    """Heals one :class:`TritonServer`; ``check()`` is one round, ``run(stop)`` loops."""

    def __init__(self, server: TritonServer, config: HealConfig | None = None) -> None:
        self.server = server
        self.config = config or HealConfig()
        self.reloads = 0
        self.restarts = 0
        self._failures: dict[str, int] = {}
        self._next_probe = time.monotonic() + self.config.probe_interval_s

    def _restart(self, why: str) -> None:
        LOGGER.warning("restarting tritonserver: %s", why)
        self.server.stop()
        self.server.start()
        self.restarts += 1
        self._failures.clear()

    def _reload(self, models: list[str], why: str) -> None:
        if self.server.config.model_control_mode != "explicit":
            self._restart(f"{', '.join(models)} {why} (no explicit model control to reload them)")
            return
        for model in models:
            LOGGER.warning("reloading %s: %s", model, why)
            try:
                self.server.reload_model(model, self.config.reload_timeout_s)
            except TritonServerError as exc:
                self._restart(str(exc))
                return
            self.reloads += 1
            self._failures.pop(model, None)
        self.server.dead_models()  # record the new stubs

    def check(self) -> None:
        """One round: restart a dead server, reload models with a dead stub, probe when due."""
        if self.server.pid is None:
            self._restart("tritonserver exited")
            return
        dead = self.server.dead_models()
        if dead:
            self._reload(dead, "stub process died")
        now = time.monotonic()
        if self.config.probe_interval_s <= 0 or now < self._next_probe:
            return
        self._next_probe = now + self.config.probe_interval_s
        failed = []
        for result in probe_all(self.server.http_url, timeout_s=self.config.probe_timeout_s):
            if result.ok:
                self._failures.pop(result.model, None)
                continue
            count = self._failures[result.model] = self._failures.get(result.model, 0) + 1
            LOGGER.warning("probe of %s failed (%d in a row): %s", result.model, count, result.error)
            if result.stub_dead or count >= self.config.probe_failures:
                failed.append(result.model)
        if "<server>" in failed:
            self._restart("no model answers the repository index")
        elif failed:
            self._reload(failed, "probe inference failed")

    def run(self, stop: threading.Event) -> None:
        """Check every ``interval_s`` until ``stop`` is set; a failed restart is retried."""
        while not stop.wait(self.config.interval_s):
            try:
                self.check()
            except TritonServerError as exc:
                LOGGER.error("healing failed, retrying: %s", exc)
