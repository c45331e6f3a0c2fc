"""The gateway's one asyncio gRPC client to Triton.

Retries only ``UNAVAILABLE`` (Triton restarting or not yet listening), with exponential
back-off, so that a request in flight survives a short outage; every other failure maps to a
narrow :mod:`gateway.errors` leaf at once. Triton also answers ``UNAVAILABLE`` when it sheds a
request from a model's queue (``default_queue_policy`` in ``config.pbtxt``: queue full, or timed
out in the queue); that is overload, not an outage, so it maps to 503 ``overloaded`` and is never
retried (a retry would only add to the queue).

The channel's reconnect back-off is capped (settings), so after an outage the gateway reconnects
within about a second of Triton being ready instead of gRPC's default of up to two minutes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tritonclient.grpc.aio as grpcclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype, triton_to_np_dtype

from gateway import deadline
from gateway.errors import InferenceFailed, Overloaded, TritonUnavailable, UpstreamTimeout
from gateway.health import ModelHealth, cannot_serve
from gateway.model_io import ModelIO
from gateway.request_id import current as request_id_var
from gateway.settings import Settings
from gateway.shared_memory import OutputRegions

LOGGER = logging.getLogger(__name__)

_UNAVAILABLE = "StatusCode.UNAVAILABLE"
_DEADLINE = "StatusCode.DEADLINE_EXCEEDED"
_MAX_MESSAGE = 2**31 - 1
# What Triton's dynamic batcher says when its queue policy sheds a request (also UNAVAILABLE).
QUEUE_REJECTIONS = ("Exceeds maximum queue size", "Request timeout expired")


def is_queue_rejection(message: str) -> bool:
    """Whether an ``UNAVAILABLE`` message is Triton shedding from a model queue, not an outage."""
    return any(text in message for text in QUEUE_REJECTIONS)


class TritonClient:
    """Async inference against one Triton server.

    Args:
        url: gRPC ``host:port`` or target (``dns:///host:port``, ``ipv4:a:p,b:p``).
        timeout_s: deadline of each call.
        retries: extra attempts after ``UNAVAILABLE``.
        backoff_s: first back-off; doubles per retry.
        reconnect_backoff_initial_s: first gRPC reconnect back-off after the connection is lost.
        reconnect_backoff_max_s: largest gRPC reconnect back-off.
        connect_timeout_s: deadline of one connection attempt (gRPC ``min_reconnect_backoff_ms``).
        lb_policy: gRPC load balancing over the addresses ``url`` resolves to (``pick_first`` or
            ``round_robin``); e.g. ``dns:///triton-grpc:8001`` with ``round_robin`` spreads calls over
            every address of a headless Service.
        grpc_client: the ``tritonclient.grpc.aio.InferenceServerClient`` to use; one for ``url`` when
            None. The seam of the fast test tier, which passes a labelled fake (``tests/fakes.py``).
    """

    def __init__(
        self,
        url: str,
        timeout_s: float,
        retries: int,
        backoff_s: float,
        reconnect_backoff_initial_s: float = 0.1,
        reconnect_backoff_max_s: float = 1.0,
        connect_timeout_s: float = 1.0,
        lb_policy: str = "pick_first",
        grpc_client: Any = None,
    ) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s

        def ms(seconds: float) -> int:
            return max(1, round(seconds * 1000))

        self._client = grpc_client or grpcclient.InferenceServerClient(
            url,
            channel_args=[
                ("grpc.max_send_message_length", _MAX_MESSAGE),
                ("grpc.max_receive_message_length", _MAX_MESSAGE),
                ("grpc.initial_reconnect_backoff_ms", ms(reconnect_backoff_initial_s)),
                ("grpc.max_reconnect_backoff_ms", ms(reconnect_backoff_max_s)),
                ("grpc.min_reconnect_backoff_ms", ms(connect_timeout_s)),
                ("grpc.lb_policy_name", lb_policy),
            ],
        )
        # Fed by every inference: a model that fails because it cannot serve, or serves again.
        self.health: ModelHealth | None = None
        self._probe_inputs: dict[str, tuple[list[tuple[str, list[int], str]], str]] = {}

    @classmethod
    def from_settings(cls, settings: Settings, grpc_client: Any = None) -> TritonClient:
        return cls(
            settings.triton_url,
            settings.triton_timeout_s,
            settings.triton_retries,
            settings.triton_retry_backoff_s,
            reconnect_backoff_initial_s=settings.triton_reconnect_backoff_initial_s,
            reconnect_backoff_max_s=settings.triton_reconnect_backoff_max_s,
            connect_timeout_s=settings.triton_connect_timeout_s,
            lb_policy=settings.triton_lb_policy,
            grpc_client=grpc_client,
        )

    async def close(self) -> None:
        await self._client.close()

    def _call_timeout(self, what: str) -> float:
        """The gRPC deadline of one attempt: ``timeout_s`` or what is left of the current deadline."""
        left = deadline.remaining()
        timeout = self.timeout_s if left is None else min(self.timeout_s, left)
        if timeout <= 0:
            raise UpstreamTimeout(f"{what}: the request's deadline has passed")
        return timeout

    async def _call(self, what: str, coro_factory: Any) -> Any:
        # One call, its retries and back-offs included, ends within timeout_s of its start, or at the
        # request's deadline when sooner: narrowed here, every attempt's gRPC deadline reads what is left
        # (deadline.remaining), and no back-off sleeps past it. Without this, a Triton answering
        # UNAVAILABLE held a call (retries + 1) x timeout_s plus the back-offs.
        end = time.monotonic() + self.timeout_s
        outer = deadline.current.get()
        token = deadline.current.set(end if outer is None else min(end, outer))
        try:
            return await self._attempts(what, coro_factory)
        finally:
            deadline.current.reset(token)

    async def _attempts(self, what: str, coro_factory: Any) -> Any:
        delay = self.backoff_s
        for attempt in range(self.retries + 1):
            try:
                return await coro_factory()
            except InferenceServerException as exc:
                status = exc.status()
                if status == _UNAVAILABLE and is_queue_rejection(exc.message() or ""):
                    detail = f"Triton at {self.url}: {exc.message()}"
                    raise Overloaded(
                        f"{what}: shed from the model's queue (full, or waited too long); retry", detail=detail
                    ) from exc
                left = deadline.remaining()
                if status == _UNAVAILABLE and attempt < self.retries and (left is None or left > delay):
                    LOGGER.warning("%s: Triton unavailable (attempt %d), retrying in %.2fs", what, attempt + 1, delay)
                    await asyncio.sleep(delay)
                    delay *= 2
                    continue
                # The client reads the generic message; the address and gRPC text are only logged.
                if status == _UNAVAILABLE:
                    detail = f"Triton at {self.url}: {exc.message()}"
                    raise TritonUnavailable("the inference server is unavailable; retry later", detail) from exc
                if status == _DEADLINE:
                    raise UpstreamTimeout(f"{what} did not finish before its deadline") from exc
                raise InferenceFailed(f"{what} failed", f"Triton at {self.url}: {exc.message()}") from exc
        raise AssertionError("unreachable")

    async def infer(
        self,
        model: str,
        inputs: Mapping[str, np.ndarray],
        outputs: Sequence[str],
        regions: OutputRegions | None = None,
    ) -> dict[str, np.ndarray]:
        """One inference call; returns the requested outputs as arrays.

        With ``regions``, that output comes back through shared memory when a region is free.
        Its gRPC deadline is ``timeout_s`` or what is left of the request's deadline
        (:mod:`gateway.deadline`), whichever is sooner; none left: :class:`UpstreamTimeout` at once.
        """
        infer_inputs = []
        for name, array in inputs.items():
            tensor = grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            tensor.set_data_from_numpy(array)
            infer_inputs.append(tensor)
        region = await regions.acquire(self._client) if regions is not None else None
        # The output (if any) that comes back through shared memory for this call.
        shm_output = regions.output if regions is not None and region is not None else None
        try:
            requested = []
            for name in outputs:
                output = grpcclient.InferRequestedOutput(name)
                if name == shm_output and region is not None:
                    output.set_shared_memory(region.name, region.nbytes)
                requested.append(output)
            request_id = request_id_var.get()

            def call() -> Any:
                left = deadline.remaining()
                timeout = self.timeout_s if left is None else min(self.timeout_s, left)
                if timeout <= 0:
                    raise UpstreamTimeout(f"inference on {model}: the request's deadline has passed")
                return self._client.infer(
                    model, infer_inputs, outputs=requested, request_id=request_id, client_timeout=timeout
                )

            try:
                try:
                    result = await self._call(f"inference on {model}", call)
                except InferenceFailed as exc:
                    # A restarted Triton has forgotten the regions: register them again, once.
                    if regions is None or shm_output is None or "shared memory" not in exc.detail:
                        raise
                    if not await regions.reregister(self._client):
                        raise
                    result = await self._call(f"inference on {model}", call)
            except InferenceFailed as exc:
                if self.health is not None and cannot_serve(exc.detail):
                    self.health.record(model, False, exc.detail)
                raise
            if self.health is not None:
                self.health.record(model, True)
            arrays = {}
            for name in outputs:
                if name == shm_output and regions is not None and region is not None:
                    tensor = result.get_output(name)
                    arrays[name] = regions.read(region, triton_to_np_dtype(tensor.datatype), list(tensor.shape))
                else:
                    arrays[name] = result.as_numpy(name)
            return arrays
        finally:
            if regions is not None and region is not None:
                regions.release(region)

    async def _model_config(self, model: str) -> dict[str, Any]:
        what = f"config of {model}"
        config = await self._call(
            what, lambda: self._client.get_model_config(model, as_json=True, client_timeout=self._call_timeout(what))
        )
        return config["config"]  # type: ignore[no-any-return]

    async def output_nbytes(self, model: str, output: str) -> int:
        """Bytes of one request's ``output`` (batch 1), from the model's configuration."""
        config = await self._model_config(model)
        spec = next(o for o in config["output"] if o["name"] == output)
        dtype = triton_to_np_dtype(spec["data_type"].removeprefix("TYPE_"))
        return int(np.prod([int(d) for d in spec["dims"]])) * np.dtype(dtype).itemsize

    async def close_regions(self, regions: OutputRegions) -> None:
        await regions.close(self._client)

    async def model_io(self, models: Sequence[str], wait_s: float) -> dict[str, ModelIO]:
        """Each model's tensors from Triton's configuration, waiting up to ``wait_s`` for Triton
        (start-up, where the gateway cannot read the model repository)."""
        deadline_at = time.monotonic() + wait_s
        found: dict[str, ModelIO] = {}
        # No call outlives wait_s, not even one to a Triton that accepts connections but never answers.
        token = deadline.current.set(deadline_at)
        try:
            return await self._wait_model_io(models, wait_s, deadline_at, found)
        finally:
            deadline.current.reset(token)

    async def _wait_model_io(
        self, models: Sequence[str], wait_s: float, deadline_at: float, found: dict[str, ModelIO]
    ) -> dict[str, ModelIO]:
        while True:
            try:
                for model in models:
                    if model not in found:
                        found[model] = ModelIO.from_config(await self._model_config(model))
                return found
            except (TritonUnavailable, InferenceFailed, UpstreamTimeout) as exc:
                if time.monotonic() >= deadline_at:
                    raise TritonUnavailable(
                        f"could not read the configuration of {[m for m in models if m not in found]} from "
                        f"Triton within {wait_s}s (model_config_wait_s)",
                        exc.detail,
                    ) from exc
                LOGGER.info("waiting for Triton to read model configurations: %s", exc.message)
                await asyncio.sleep(min(1.0, max(0.0, deadline_at - time.monotonic())))

    async def probe(self, model: str, timeout_s: float) -> None:
        """One tiny real inference (zeros of each input, batch 1; the first output only), no retry.

        Raises the narrow :mod:`gateway.errors` leaf of the failure.
        """
        try:
            if model not in self._probe_inputs:
                response = await self._client.get_model_config(model, as_json=True, client_timeout=timeout_s)
                config = response["config"]
                batched = int(config.get("max_batch_size", 0)) > 0
                specs = [
                    (
                        i["name"],
                        ([1] if batched else []) + [max(int(d), 1) for d in i["dims"]],
                        i["data_type"].removeprefix("TYPE_"),
                    )
                    for i in config["input"]
                ]
                self._probe_inputs[model] = (specs, config["output"][0]["name"])
            specs, output = self._probe_inputs[model]
            inputs = []
            for name, shape, datatype in specs:
                tensor = grpcclient.InferInput(name, shape, datatype)
                tensor.set_data_from_numpy(np.zeros(shape, dtype=triton_to_np_dtype(datatype)))
                inputs.append(tensor)
            outputs = [grpcclient.InferRequestedOutput(output)]
            await self._client.infer(model, inputs, outputs=outputs, request_id="probe", client_timeout=timeout_s)
        except InferenceServerException as exc:
            self._probe_inputs.pop(model, None)  # a reloaded model may have a new config
            if exc.status() == _UNAVAILABLE:
                # /readyz shows the message: no internal address in it (the detail is for logs).
                detail = f"Triton at {self.url}: {exc.message()}"
                raise TritonUnavailable("the inference server is unavailable", detail) from exc
            if exc.status() == _DEADLINE:
                raise UpstreamTimeout(f"probe of {model} took longer than {timeout_s}s") from exc
            raise InferenceFailed(f"probe of {model} failed: {exc.message()}") from exc

    async def server_ready(self) -> bool:
        try:
            return bool(await self._client.is_server_ready(client_timeout=2.0))
        except InferenceServerException:
            return False

    async def model_ready(self, model: str) -> bool:
        try:
            return bool(await self._client.is_model_ready(model, client_timeout=2.0))
        except InferenceServerException:
            return False
