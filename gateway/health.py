"""Whether each served model can serve: a cached view fed by probe inferences and real requests.

Triton's model-ready stays true for a Python-backend model whose stub process died, while every
inference on it fails. So readiness here is what inferences say:

- a background prober sends each model one tiny real inference (zeros, batch 1) every
  ``health_probe_interval_s``, with its own deadline; probes are counted in
  ``gateway_probes_total`` / ``gateway_probe_seconds``, never as user traffic;
- a real request that fails because the model cannot serve (dead stub, model not loaded) marks
  it unhealthy at once, and a real success marks it healthy.

``/readyz`` and ``/models`` read the cached view: no probe runs on their behalf, so their cost
is bounded whatever the polling rate.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable

from gateway.errors import GatewayError, Overloaded
from gateway.metrics import Metrics

LOGGER = logging.getLogger(__name__)

# Triton error texts that mean "this model cannot serve" rather than "this request was bad".
_CANNOT_SERVE = ("is not healthy", "is not ready", "unknown model", "is not found")


def cannot_serve(message: str) -> bool:
    """Whether a Triton error message says the model itself cannot serve (e.g. its stub died)."""
    return any(marker in message for marker in _CANNOT_SERVE)


@dataclasses.dataclass
class ModelState:
    """Last known health of one model.

    Args:
        ok: None until the first probe or request; then whether the model last served.
        reason: why it is unhealthy (empty when healthy).
        source: what set the state: ``probe`` or ``request``.
        at: ``time.time()`` of that observation.
    """

    ok: bool | None = None
    reason: str = ""
    source: str = ""
    at: float = 0.0


class ModelHealth:
    """The per-model health view, shared by the Triton client (passive) and the prober (active)."""

    def __init__(self, models: list[str]) -> None:
        self.states = {name: ModelState() for name in models}

    def record(self, model: str, ok: bool, reason: str = "", source: str = "request") -> None:
        state = self.states.get(model)
        if state is None:
            return
        if state.ok is not False and not ok:
            LOGGER.warning("model %s cannot serve (%s): %s", model, source, reason)
        elif state.ok is False and ok:
            LOGGER.info("model %s serves again (%s)", model, source)
        state.ok, state.reason, state.source, state.at = ok, reason, source, time.time()

    def unhealthy(self) -> dict[str, str]:
        """Models known not to serve, with the reason."""
        return {name: s.reason for name, s in self.states.items() if s.ok is False}


ProbeFn = Callable[[str, float], Awaitable[None]]


class Prober:
    """Probes every model of ``health`` every ``interval_s`` (one at a time, to keep the cost low).

    Args:
        health: the view to update.
        probe: one probe inference of a model within a deadline; raises on failure.
        metrics: where probes are counted.
        interval_s: pause between rounds; 0 disables probing.
        timeout_s: deadline of one probe.
        retry_interval_s: pause between rounds while a model is unhealthy (at most ``interval_s``),
            so readiness comes back soon after the model (or Triton) does.
    """

    def __init__(
        self,
        health: ModelHealth,
        probe: ProbeFn,
        metrics: Metrics,
        interval_s: float,
        timeout_s: float,
        retry_interval_s: float = 1.0,
    ) -> None:
        self.health = health
        self.probe = probe
        self.metrics = metrics
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.retry_interval_s = retry_interval_s
        self._task: asyncio.Task[None] | None = None
        # Set by stop(): the loop ends on it even when a cancellation is lost (Python 3.11's
        # asyncio.wait_for drops one that arrives as the probe completes), so stop() never hangs.
        self._stopped = asyncio.Event()

    async def probe_once(self) -> None:
        """One round over every model."""
        for model in self.health.states:
            if self._stopped.is_set():
                return
            start = time.perf_counter()
            try:
                await asyncio.wait_for(self.probe(model, self.timeout_s), self.timeout_s + 1.0)
            except Overloaded:
                # Shed by Triton's queue policy: the model is busy, not dead; its state stays as it was
                # (else an overloaded gateway would also turn not-ready and be taken out of rotation).
                result = "overloaded"
            except (GatewayError, TimeoutError) as exc:
                reason = exc.message if isinstance(exc, GatewayError) else f"probe took over {self.timeout_s}s"
                self.health.record(model, False, reason, source="probe")
                result = "fail"
            else:
                self.health.record(model, True, source="probe")
                result = "ok"
            self.metrics.probes.labels(model, result).inc()
            self.metrics.probe_latency.labels(model).observe(time.perf_counter() - start)

    async def _loop(self) -> None:
        while not self._stopped.is_set():
            try:
                await self.probe_once()
            except Exception:  # a bug in one round must not end probing
                LOGGER.exception("probe round failed")
            unhealthy = bool(self.health.unhealthy())
            pause = min(self.interval_s, self.retry_interval_s) if unhealthy else self.interval_s
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopped.wait(), pause)

    def start(self) -> None:
        if self.interval_s > 0 and self._task is None:
            self._task = asyncio.create_task(self._loop(), name="model-prober")

    async def stop(self) -> None:
        task, self._task = self._task, None
        self._stopped.set()
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
