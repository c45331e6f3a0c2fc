"""FAKE Triton gRPC client for the fast (``unit``) test tier. Not a Triton: no engine, no batching.

:class:`FakeTritonGrpc` stands in for ``tritonclient.grpc.aio.InferenceServerClient`` behind the seam
``TritonClient(grpc_client=…)`` / ``create_app(settings, triton_client=…)``. It implements only the
calls the gateway makes, with the real wire types: model configurations are the repository's own
``config.pbtxt`` files parsed into Triton's JSON form, inputs arrive as real ``InferInput`` objects
and answers are real ``InferResult`` objects built from ``ModelInferResponse`` protobufs. Outputs are
canned arrays (zeros of the configured shape, or what a test's responder returns); failures are
scripted ``InferenceServerException`` objects with Triton's status strings.

Every behaviour tested with this fake is also tested end to end against a real tritonserver
(tests/gateway/test_resilience.py, test_errors.py, tests/reliability/).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import pathlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
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
    """

    model: str
    inputs: dict[str, np.ndarray]
    outputs: list[str]
    request_id: str
    timeout_s: float | None


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

    async def infer(
        self,
        model_name: str,
        inputs: Sequence[grpcclient.InferInput],
        outputs: Sequence[grpcclient.InferRequestedOutput] | None = None,
        request_id: str = "",
        client_timeout: float | None = None,
        **_: Any,
    ) -> grpcclient.InferResult:
        arrays = {tensor.name(): _array_of(tensor) for tensor in inputs}
        names = [o.name() for o in outputs or []]
        self.calls.append(Call(model_name, arrays, names, request_id, client_timeout))
        if self.failures:
            raise self.failures.popleft()
        config = self.config(model_name)
        responder = self.responders.get(model_name)
        produced = dict(responder(arrays)) if responder else _zeros(config, arrays)
        response = service_pb2.ModelInferResponse(model_name=model_name, id=request_id)
        for name in names or [o["name"] for o in config["output"]]:
            array = np.ascontiguousarray(produced[name])
            tensor = response.outputs.add(name=name, datatype=np_to_triton_dtype(array.dtype))
            tensor.shape.extend(array.shape)
            response.raw_output_contents.append(array.tobytes())
        return grpcclient.InferResult(response)

    async def register_system_shared_memory(self, name: str, key: str, byte_size: int, **_: Any) -> None:
        self.registered[name] = byte_size

    async def unregister_system_shared_memory(self, name: str = "", **_: Any) -> None:
        if name:
            self.registered.pop(name, None)
        else:
            self.registered.clear()

    async def close(self) -> None:
        self.closed = True


def _array_of(tensor: grpcclient.InferInput) -> np.ndarray:
    content = tensor._get_content()
    dtype = triton_to_np_dtype(tensor.datatype())
    return np.frombuffer(content, dtype=dtype).reshape(tensor.shape())


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

    async def _freeze(self, client_timeout: float | None) -> None:
        self.waits.append(client_timeout)
        if client_timeout is None:
            await asyncio.Event().wait()  # forever
        await asyncio.sleep(max(client_timeout or 0.0, 0.0))
        raise grpc_error(DEADLINE_EXCEEDED, "Deadline Exceeded")

    async def get_model_config(self, model_name: str, as_json: bool = False, **kwargs: Any) -> dict[str, Any]:
        await self._freeze(kwargs.get("client_timeout"))
        raise AssertionError("unreachable")

    async def infer(self, model_name: str, inputs: Any, *args: Any, **kwargs: Any) -> grpcclient.InferResult:
        await self._freeze(kwargs.get("client_timeout"))
        raise AssertionError("unreachable")

    async def register_system_shared_memory(self, name: str, key: str, byte_size: int, **kwargs: Any) -> None:
        await self._freeze(kwargs.get("client_timeout"))
