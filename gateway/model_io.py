"""The tensors a served model takes and returns, from its Triton model configuration.

One source of truth for shapes: the engine builder exports each model at the sizes of its spec and
writes them into the model's ``config.pbtxt`` (``magicmind_build.build.sync_config``); Triton serves
that configuration and the gateway reads it, from the mounted model repository or, where the gateway
cannot see the repository, from Triton itself at start-up. The gateway's size settings
(``qa_max_seq_len``, ``detect_img_size``, ``classify_crop``) are unset by default and then follow the
model; when set they must agree with it, or the gateway refuses to start with
:class:`ShapeMismatch` naming both values, instead of answering 502 at request time.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Mapping
from typing import Any

from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2

CONFIG_NAME = "config.pbtxt"


class ShapeMismatch(ValueError):
    """A gateway setting disagrees with the model Triton serves (raised at start-up)."""


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """Args:
    name: the tensor's name.
    datatype: Triton's type name without ``TYPE_`` (``FP32``, ``UINT8``, ``INT64`` …).
    dims: the shape of one batch row (without the batch dimension when the model batches).
    """

    name: str
    datatype: str
    dims: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class ModelIO:
    """Args:
    name: the Triton model name.
    max_batch_size: Triton's ``max_batch_size`` (0: the model does not batch).
    inputs: the inputs, by name, in configuration order.
    outputs: the outputs, by name, in configuration order.
    """

    name: str
    max_batch_size: int
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ModelIO:
        """From Triton's JSON model configuration (``get_model_config(as_json=True)["config"]``)."""

        def specs(key: str) -> dict[str, TensorSpec]:
            return {
                t["name"]: TensorSpec(t["name"], t["data_type"].removeprefix("TYPE_"), tuple(int(d) for d in t["dims"]))
                for t in config.get(key, [])
            }

        return cls(config["name"], int(config.get("max_batch_size", 0)), specs("input"), specs("output"))

    def dims(self, tensor: str) -> tuple[int, ...]:
        spec = self.inputs.get(tensor) or self.outputs.get(tensor)
        if spec is None:
            raise ShapeMismatch(f"model {self.name} has no tensor {tensor!r} (it has {sorted(self.inputs)})")
        return spec.dims

    def image_size(self, tensor: str = "images") -> int:
        """The side of the square uint8 NHWC image input (``dims`` ``[S, S, 3]``)."""
        dims = self.dims(tensor)
        if len(dims) != 3 or dims[0] != dims[1] or dims[2] != 3 or dims[0] <= 0:
            raise ShapeMismatch(f"model {self.name}: input {tensor!r} has dims {list(dims)}, expected [S, S, 3]")
        return dims[0]

    def seq_len(self, tensor: str = "input_ids") -> int:
        """The token length of a sequence input (``dims`` ``[L]``)."""
        dims = self.dims(tensor)
        if len(dims) != 1 or dims[0] <= 0:
            raise ShapeMismatch(f"model {self.name}: input {tensor!r} has dims {list(dims)}, expected [L]")
        return dims[0]


def parse_config(text: str) -> dict[str, Any]:
    """A ``config.pbtxt`` text as Triton's JSON model configuration."""
    message = text_format.Parse(text, model_config_pb2.ModelConfig())
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def read_model_io(repository: pathlib.Path | None, name: str) -> ModelIO | None:
    """``<repository>/<name>/config.pbtxt`` as a :class:`ModelIO`; None when it cannot be read."""
    if repository is None:
        return None
    path = repository / name / CONFIG_NAME
    try:
        text = path.read_text()
    except OSError:
        return None
    config = parse_config(text)
    config.setdefault("name", name)
    return ModelIO.from_config(config)


def resolve(setting: str, value: int | None, model_value: int, model: str) -> int:
    """A size the gateway uses: the model's, or the setting when it is set and agrees."""
    if value is not None and value != model_value:
        env = f"GATEWAY_{setting.upper()}"
        raise ShapeMismatch(
            f"{env}={value} but model {model} is served with {model_value}: unset {env} (the gateway follows "
            f"the model) or rebuild the model at that size (python -m magicmind_build; sizes live in its spec)"
        )
    return model_value
