"""Model definitions are faithful to the checkpoints they claim to load."""

from __future__ import annotations

import pathlib

import numpy as np
import torch
from transformers import BertConfig as HFBertConfig
from transformers import BertForQuestionAnswering as HFBertForQuestionAnswering

from engine_runtime.engine import load_engine
from magicmind_build.build import build_engine
from magicmind_build.models.bert import BertConfig, BertForQuestionAnswering
from magicmind_build.specs import SPECS


def _tiny_hf_bert() -> HFBertForQuestionAnswering:
    torch.manual_seed(5)
    config = HFBertConfig(
        vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128
    )
    return HFBertForQuestionAnswering(config).eval()


def test_hugging_face_bert_qa_checkpoint_gives_identical_logits(tmp_path: pathlib.Path) -> None:
    hf = _tiny_hf_bert()
    ours = BertForQuestionAnswering(
        BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128)
    ).eval()
    ours.load_state_dict(hf.state_dict(), strict=True)

    rng = np.random.default_rng(0)
    ids = torch.from_numpy(rng.integers(0, 30522, (3, 128)))
    mask = torch.ones_like(ids)
    mask[1, 100:] = 0
    types = torch.zeros_like(ids)
    types[:, 20:] = 1
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask, token_type_ids=types)
        start, end = ours(ids, mask, types)
    torch.testing.assert_close(start, expected.start_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(end, expected.end_logits, rtol=1e-5, atol=1e-5)

    # The same checkpoint through the builder, as a user would supply it.
    checkpoint = tmp_path / "pytorch_model.bin"
    torch.save(hf.state_dict(), checkpoint)
    build_engine(SPECS["bert_qa"], tmp_path / "engine", size="tiny", checkpoint=checkpoint)
    engine = load_engine(tmp_path / "engine" / "model.onnx")
    out = engine.run({"input_ids": ids.numpy(), "attention_mask": mask.numpy(), "token_type_ids": types.numpy()})
    np.testing.assert_allclose(out["start_logits"], expected.start_logits.numpy(), rtol=1e-4, atol=1e-4)


def _parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_full_size_bert_has_the_hugging_face_parameter_set() -> None:
    ours = BertForQuestionAnswering(BertConfig())
    hf = HFBertForQuestionAnswering(HFBertConfig())  # bert-base-uncased dimensions
    assert ours.state_dict().keys() == hf.state_dict().keys()
    assert _parameters(ours) == _parameters(hf) == 108_893_186


def test_resnet50_vd_and_efficientnet_lite0_sizes() -> None:
    from magicmind_build.models.efficientnet_lite import EfficientNetLite, EfficientNetLiteConfig
    from magicmind_build.models.resnet_vd import ResNetVd, ResNetVdConfig

    assert round(_parameters(ResNetVd(ResNetVdConfig())) / 1e6, 2) == 25.58  # PaddleClas: ResNet50_vd 25.58M
    assert round(_parameters(EfficientNetLite(EfficientNetLiteConfig())) / 1e6, 2) == 4.65  # EfficientNet-Lite0 4.65M
