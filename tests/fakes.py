"""FAKE Triton gRPC client for the fast (``unit``) test tier. Not a Triton: no engine, no batching.

:class:`FakeTritonGrpc` stands in for ``tritonclient.grpc.aio.InferenceServerClient`` behind the seam
``TritonClient(grpc_client=…)`` / ``create_app(settings, triton_client=…)``. It implements only the
calls the gateway makes, with the real wire types: model configurations are the repository's own
``config.pbtxt`` files parsed into Triton's JSON form; inferences arrive at the fake gRPC stub
(``_client_stub.ModelInfer``, what the gateway calls) as real ``ModelInferRequest`` protobufs and are
answered with real ``ModelInferResponse`` protobufs. Outputs are canned arrays (zeros of the
configured shape, or what a test's responder returns); an input in a registered system
shared-memory region is read from that region, as Triton does. Failures are scripted
``InferenceServerException`` objects with Triton's status strings, raised by the stub as the
``grpc.aio.AioRpcError`` they stand for.

Every behaviour tested with this fake is also tested end to end against a real tritonserver
(tests/gateway/test_resilience.py, test_errors.py, tests/reliability/).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import pathlib
from collections.abc import Callable, Mapping
from typing import Any

import grpc
import numpy as np
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2, service_pb2
from tritonclient.utils import InferenceServerException, np_to_triton_dtype, triton_to_np_dtype

ROOT = pathlib.Path(__file__).resolve().parent.parent
Responder = Callable[[Mapping[str, np.ndarray]], Mapping[str, np.ndarray]]

UNAVAILABLE = "StatusCode.UNAVAILABLE"
DEADLINE_EXCEEDED = "StatusCode.DEADLINE_EXCEEDED"
INTERNAL = "StatusCode.INTERNAL"


def read_config(model_dir: pathlib.Path) -> dict[str, Any]:
    """A ``config.pbtxt`` as Triton's ``get_model_config(as_json=True)["config"]`` returns it."""
    message = text_format.Parse((model_dir / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def grpc_error(status: str, message: str) -> InferenceServerException:
    """The exception tritonclient's aio client raises for a failed call with this gRPC status."""
    return InferenceServerException(msg=message, status=status)


@dataclasses.dataclass
class Call:
    """Args:
    model: the model called.
    inputs: the input arrays, by name.
    outputs: the requested output names.
    request_id: the request id sent.
    timeout_s: the call's client-side deadline.
    shared: the inputs that came in a shared-memory region.
    """

    model: str
    inputs: dict[str, np.ndarray]
    outputs: list[str]
    request_id: str
    timeout_s: float | None
    shared: list[str] = dataclasses.field(default_factory=list)


class FakeTritonGrpc:
    """FAKE: the subset of ``tritonclient.grpc.aio.InferenceServerClient`` the gateway calls.

    Args:
        repository: where the model configurations are read (``<repository>/<model>/config.pbtxt``).
        responders: per model, a function from the input arrays to the output arrays; zeros of the
            configured output shapes (batch from the first input) where none is given.
    """

    def __init__(
        self, repository: pathlib.Path = ROOT / "triton_repo", responders: Mapping[str, Responder] | None = None
    ) -> None:
        self.repository = repository
        self.responders = dict(responders or {})
        self.calls: list[Call] = []
        self.failures: collections.deque[InferenceServerException] = collections.deque()
        self.server_is_ready = True
        self.closed = False
        self.registered: dict[str, int] = {}
        self.keys: dict[str, str] = {}  # region name -> POSIX shared-memory key
        self._client_stub = _FakeStub(self)

    def fail_next(self, *errors: InferenceServerException) -> None:
        """The next ``len(errors)`` inference calls raise these, in order."""
        self.failures.extend(errors)

    def config(self, model: str) -> dict[str, Any]:
        model_dir = self.repository / model
        if not (model_dir / "config.pbtxt").is_file():
            raise grpc_error("StatusCode.NOT_FOUND", f"Request for unknown model: '{model}' is not found")
        return read_config(model_dir)

    async def get_model_config(self, model_name: str, as_json: bool = False, **_: Any) -> dict[str, Any]:
        assert as_json, "the gateway reads configurations as JSON"
        return {"config": self.config(model_name)}

    async def is_server_ready(self, **_: Any) -> bool:
        return self.server_is_ready

    async def is_model_ready(self, model_name: str, **_: Any) -> bool:
        return self.server_is_ready and (self.repository / model_name / "config.pbtxt").is_file()

    def model_infer(
        self, request: service_pb2.ModelInferRequest, timeout: float | None
    ) -> service_pb2.ModelInferResponse:
        arrays, shared = {}, []
        raw = iter(request.raw_input_contents)  # one per input not in shared memory, in order
        for tensor in request.inputs:
            dtype = triton_to_np_dtype(tensor.datatype)
            if "shared_memory_region" in tensor.parameters:
                shared.append(tensor.name)
            content = self._read_region(tensor.parameters) if tensor.name in shared else next(raw)
            arrays[tensor.name] = np.frombuffer(content, dtype=dtype).reshape(tensor.shape).copy()
        names = [o.name for o in request.outputs]
        self.calls.append(Call(request.model_name, arrays, names, request.id, timeout, shared))
        if self.failures:
            raise self.failures.popleft()
        config = self.config(request.model_name)
        responder = self.responders.get(request.model_name)
        produced = dict(responder(arrays)) if responder else _zeros(config, arrays)
        response = service_pb2.ModelInferResponse(model_name=request.model_name, id=request.id)
        for name in names or [o["name"] for o in config["output"]]:
            array = np.ascontiguousarray(produced[name])
            tensor = response.outputs.add(name=name, datatype=np_to_triton_dtype(array.dtype))
            tensor.shape.extend(array.shape)
            response.raw_output_contents.append(array.tobytes())
        return response

    def _read_region(self, parameters: Any) -> bytes:
        region = parameters["shared_memory_region"].string_param
        if region not in self.registered:
            raise grpc_error(INTERNAL, f"Unable to find system shared memory region: '{region}'")
        nbytes = parameters["shared_memory_byte_size"].int64_param
        if nbytes > self.registered[region]:
            raise grpc_error(INTERNAL, f"shared memory region '{region}' is smaller than the input")
        with open("/dev/shm" + self.keys[region], "rb") as segment:
            return segment.read(nbytes)

    async def register_system_shared_memory(self, name: str, key: str, byte_size: int, **_: Any) -> None:
        self.registered[name] = byte_size
        self.keys[name] = key

    async def unregister_system_shared_memory(self, name: str = "", **_: Any) -> None:
        if name:
            self.registered.pop(name, None)
        else:
            self.registered.clear()

    async def close(self) -> None:
        self.closed = True


class _FakeStub:
    """FAKE: the generated ``GRPCInferenceServiceStub``'s ``ModelInfer``, answered by the fake client."""

    def __init__(self, fake: FakeTritonGrpc) -> None:
        self.fake = fake

    async def ModelInfer(
        self, request: service_pb2.ModelInferRequest, timeout: float | None = None, **_: Any
    ) -> service_pb2.ModelInferResponse:
        try:
            return self.fake.model_infer(request, timeout)
        except InferenceServerException as exc:  # what the aio channel raises for a failed call
            code = grpc.StatusCode[str(exc.status()).removeprefix("StatusCode.")]
            raise grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=exc.message()) from None


def _zeros(config: Mapping[str, Any], inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    batch = [len(next(iter(inputs.values())))] if int(config.get("max_batch_size", 0)) > 0 else []
    return {
        o["name"]: np.zeros(
            batch + [int(d) for d in o["dims"]], dtype=triton_to_np_dtype(o["data_type"].removeprefix("TYPE_"))
        )
        for o in config["output"]
    }


class FrozenTritonGrpc(FakeTritonGrpc):
    """FAKE: a Triton that accepts every call and never answers (as a SIGSTOPped tritonserver does).

    Each call waits out its ``client_timeout`` and then raises ``DEADLINE_EXCEEDED``, as gRPC does
    at a call's deadline; a call sent without one never returns. ``waits`` records each call's
    timeout (None: unbounded). The real frozen Triton: tests/reliability/test_triton_faults.py.
    """

    def __init__(self, repository: pathlib.Path = ROOT / "triton_repo") -> None:
        super().__init__(repository)
        self.waits: list[float | None] = []
        self._client_stub = _FrozenStub(self)

    async def _freeze(self, client_timeout: float | None) -> None:
        self.waits.append(client_timeout)
        if client_timeout is None:
            await asyncio.Event().wait()  # forever
        await asyncio.sleep(max(client_timeout or 0.0, 0.0))
        raise grpc_error(DEADLINE_EXCEEDED, "Deadline Exceeded")

    async def get_model_config(self, model_name: str, as_json: bool = False, **kwargs: Any) -> dict[str, Any]:
        await self._freeze(kwargs.get("client_timeout"))
        raise AssertionError("unreachable")

    async def register_system_shared_memory(self, name: str, key: str, byte_size: int, **kwargs: Any) -> None:
        await self._freeze(kwargs.get("client_timeout"))


class _FrozenStub(_FakeStub):
    """FAKE: ``ModelInfer`` of a frozen Triton: waits out the call's deadline, then DEADLINE_EXCEEDED."""

    fake: FrozenTritonGrpc

    async def ModelInfer(
        self, request: service_pb2.ModelInferRequest, timeout: float | None = None, **_: Any
    ) -> service_pb2.ModelInferResponse:
        try:
            await self.fake._freeze(timeout)
        except InferenceServerException as exc:
            code = grpc.StatusCode[str(exc.status()).removeprefix("StatusCode.")]
            raise grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=exc.message()) from None
        raise AssertionError("unreachable")
