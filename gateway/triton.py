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
import functools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grpc
import numpy as np
import tritonclient.grpc.aio as grpcclient
from tritonclient.grpc import service_pb2
from tritonclient.utils import (
    InferenceServerException,
    deserialize_bytes_tensor,
    np_to_triton_dtype,
    triton_to_np_dtype,
)

from gateway import deadline
from gateway.coalesce import Coalescer
from gateway.errors import InferenceFailed, Overloaded, TritonUnavailable, UpstreamTimeout
from gateway.health import ModelHealth, cannot_serve
from gateway.model_io import ModelIO
from gateway.request_id import current as request_id_var
from gateway.settings import Settings
from gateway.shared_memory import Region, RegionPool, sweep_stale

LOGGER = logging.getLogger(__name__)

_UNAVAILABLE = "StatusCode.UNAVAILABLE"
_DEADLINE = "StatusCode.DEADLINE_EXCEEDED"
_MAX_MESSAGE = 2**31 - 1
# What Triton's dynamic batcher says when its queue policy sheds a request (also UNAVAILABLE).
QUEUE_REJECTIONS = ("Exceeds maximum queue size", "Request timeout expired")


def is_queue_rejection(message: str) -> bool:
    """Whether an ``UNAVAILABLE`` message is Triton shedding from a model queue, not an outage."""
    return any(text in message for text in QUEUE_REJECTIONS)


# tritonclient's dtype conversions, memoised: a handful of dtypes, looked up on every inference.
_triton_dtype = functools.cache(np_to_triton_dtype)
_numpy_dtype = functools.cache(triton_to_np_dtype)


def infer_request(
    model: str,
    inputs: Mapping[str, np.ndarray],
    outputs: Sequence[str],
    request_id: str,
    placed: Mapping[str, Region] | None = None,
) -> service_pb2.ModelInferRequest:
    """The ``ModelInferRequest`` protobuf, built straight from the arrays (``tritonclient``'s
    ``InferInput``/``InferRequestedOutput`` objects cost more CPU than the call itself).

    ``placed``: inputs whose array already lies in that shared-memory region (sent by reference).
    """
    request = service_pb2.ModelInferRequest(model_name=model, id=request_id)
    for name, array in inputs.items():
        tensor = request.inputs.add(name=name, datatype=_triton_dtype(array.dtype), shape=array.shape)
        region = placed.get(name) if placed else None
        if region is None:
            request.raw_input_contents.append(array.tobytes())
        else:
            tensor.parameters["shared_memory_region"].string_param = region.name
            tensor.parameters["shared_memory_byte_size"].int64_param = array.nbytes
    for name in outputs:
        request.outputs.add(name=name)
    return request


def output_arrays(response: service_pb2.ModelInferResponse) -> dict[str, np.ndarray]:
    """Every output of ``response`` as an array (read-only views of the response's raw bytes)."""
    arrays = {}
    raw = response.raw_output_contents
    for index, tensor in enumerate(response.outputs):
        datatype = tensor.datatype
        if index < len(raw):
            content = raw[index]
            array = (
                deserialize_bytes_tensor(content)
                if datatype == "BYTES"
                else np.frombuffer(content, dtype=_numpy_dtype(datatype))
            )
        else:
            array = np.empty(0, dtype=_numpy_dtype(datatype))
        arrays[tensor.name] = array.reshape(tensor.shape)
    return arrays


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
        shared_memory_regions: most system shared-memory regions per tensor; 0: no shared memory.
            The client is the one owner of the process's :class:`RegionPool` (inputs and outputs of
            every model), created here, once; :meth:`close` unregisters and unmaps every region.
        coalesce_inflight: calls per model in flight before further requests wait and are merged into
            one call (:mod:`gateway.coalesce`); 0: no coalescing.
        coalesce_max_rows: most rows of a merged call.
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
        shared_memory_regions: int = 0,
        coalesce_inflight: int = 0,
        coalesce_max_rows: int = 8,
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
        # The generated gRPC stub of the client: inference skips tritonclient's request and result objects.
        self._stub = self._client._client_stub
        self.pool = RegionPool(shared_memory_regions, timeout_s) if shared_memory_regions > 0 else None
        # Fed by every inference: a model that fails because it cannot serve, or serves again.
        self.health: ModelHealth | None = None
        self._probe_inputs: dict[str, tuple[list[tuple[str, list[int], str]], str]] = {}
        # Told of every inference call, merged or not (model, requests in it, rows): the metrics; None: nobody.
        self.on_call: Callable[[str, int, int], None] | None = None
        # Concurrent requests per model merged into one call (gateway.coalesce); None: every request its own.
        self.coalescer = (
            Coalescer(self, coalesce_inflight, coalesce_max_rows, on_call=self._observe_call)
            if coalesce_inflight > 0
            else None
        )

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
            shared_memory_regions=settings.triton_shared_memory_regions if settings.triton_shared_memory else 0,
            coalesce_inflight=settings.triton_coalesce_inflight,
            coalesce_max_rows=settings.triton_coalesce_max_rows,
        )

    def _observe_call(self, model: str, requests: int, rows: int) -> None:
        if self.on_call is not None:
            self.on_call(model, requests, rows)

    async def close(self) -> None:
        if self.coalescer is not None:
            await self.coalescer.close()
        if self.pool is not None:
            await self.pool.close(self._client)
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
        placed: Mapping[str, Region] | None = None,
        max_batch_size: int = 0,
    ) -> dict[str, np.ndarray]:
        """The requested outputs of ``inputs`` as arrays: through the :class:`Coalescer` when there is
        one and the model batches (``max_batch_size`` > 0: its configuration's), so that concurrent
        requests may share a call; else one call of its own (:meth:`infer_one`)."""
        if self.coalescer is not None and max_batch_size > 1:
            return await self.coalescer.infer(model, inputs, outputs, placed, max_batch_size)
        self._observe_call(model, 1, len(next(iter(inputs.values()))))
        return await self.infer_one(model, inputs, outputs, placed)

    async def infer_one(
        self,
        model: str,
        inputs: Mapping[str, np.ndarray],
        outputs: Sequence[str],
        placed: Mapping[str, Region] | None = None,
    ) -> dict[str, np.ndarray]:
        """One inference call; returns the requested outputs as arrays.

        ``placed``: inputs whose array is a view of that borrowed region (:meth:`region`), sent by
        reference (outputs always come back over gRPC: the detectors' 72 kB measured no cheaper
        through shared memory, docs/benchmarks.md, "What sets the gateway's CPU"). Its gRPC deadline
        is ``timeout_s`` or what is left of the request's deadline (:mod:`gateway.deadline`), whichever
        is sooner; none left: :class:`UpstreamTimeout` at once.
        """
        request = infer_request(model, inputs, outputs, request_id_var.get(), placed)

        def call() -> Any:
            left = deadline.remaining()
            timeout = self.timeout_s if left is None else min(self.timeout_s, left)
            if timeout <= 0:
                raise UpstreamTimeout(f"inference on {model}: the request's deadline has passed")
            return self._model_infer(request, timeout)

        try:
            try:
                response = await self._call(f"inference on {model}", call)
            except InferenceFailed as exc:
                # A restarted Triton has forgotten the regions: register them again, once.
                if self.pool is None or not placed or "shared memory" not in exc.detail:
                    raise
                if not await self.pool.reregister(self._client):
                    raise
                response = await self._call(f"inference on {model}", call)
        except InferenceFailed as exc:
            if self.health is not None and cannot_serve(exc.detail):
                self.health.record(model, False, exc.detail)
            raise
        if self.health is not None:
            self.health.record(model, True)
        arrays = output_arrays(response)
        return {name: arrays[name] for name in outputs}

    async def sweep_regions(self) -> list[str]:
        """Unregister and unlink the shared-memory regions of gateway processes that died
        (:func:`gateway.shared_memory.sweep_stale`); nothing when shared memory is off."""
        if self.pool is None:
            return []
        return await sweep_stale(self._client, self.pool.timeout_s, orphans=self.pool.shares_dev_shm)

    async def region(self, tensor: str, nbytes: int) -> Region | None:
        """A shared-memory region of ``nbytes`` for ``tensor`` (``<model>/<name>``) from the client's
        pool, to give back with :meth:`release`; None when shared memory is off or every region of
        that tensor is busy (the call then sends the tensor over gRPC)."""
        if self.pool is None:
            return None
        return await self.pool.acquire(self._client, tensor, nbytes)

    def release(self, region: Region) -> None:
        if self.pool is not None:
            self.pool.release(region)

    async def _model_infer(self, request: service_pb2.ModelInferRequest, timeout: float) -> Any:
        """``ModelInfer`` on the client's gRPC stub (what ``InferenceServerClient.infer`` does after
        building its request); a gRPC error becomes the ``InferenceServerException`` it would raise."""
        try:
            return await self._stub.ModelInfer(request=request, timeout=timeout)
        except grpc.RpcError as exc:
            raise InferenceServerException(
                msg=exc.details(), status=str(exc.code()), debug_details=exc.debug_error_string()
            ) from None

    async def _model_config(self, model: str) -> dict[str, Any]:
        what = f"config of {model}"
        config = await self._call(
            what, lambda: self._client.get_model_config(model, as_json=True, client_timeout=self._call_timeout(what))
        )
        return config["config"]  # type: ignore[no-any-return]

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
            zeros = {name: np.zeros(shape, dtype=_numpy_dtype(datatype)) for name, shape, datatype in specs}
            await self._model_infer(infer_request(model, zeros, [output], "probe"), timeout_s)
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
