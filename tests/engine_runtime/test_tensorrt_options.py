"""TensorRT-provider options read from config.pbtxt parameters (engine_runtime.engine.tensorrt_options).

No GPU here: the options are checked as parsed from the model configs a real tritonserver serves (the same
JSON the Python backend's ``initialize`` gets), not run through TensorRT.
"""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import pytest

from engine_runtime.engine import tensorrt_options
from magicmind_build.specs import SPECS
from triton_local import TritonServer


def _served_config(triton: TritonServer, model: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{triton.http_url}/v2/models/{model}/config", timeout=10) as response:
        return dict(json.loads(response.read()))


def _config(max_batch_size: int = 8, **parameters: str) -> dict[str, Any]:
    return {
        "max_batch_size": max_batch_size,
        "input": [{"name": "ids", "dims": ["128"]}, {"name": "mask", "dims": ["128"]}],
        "parameters": {key: {"string_value": value} for key, value in parameters.items()},
    }


@pytest.mark.parametrize("model", sorted(SPECS))
def test_served_configs_give_a_cache_on_the_volume_and_a_profile_over_the_batch_range(
    triton: TritonServer, model: str
) -> None:
    config = _served_config(triton, model)
    options = tensorrt_options(config)
    assert options["trt_engine_cache_enable"] == "true"
    assert options["trt_engine_cache_path"] == f"/trt-cache/{model}"
    batch = config["max_batch_size"]
    for key, first in (
        ("trt_profile_min_shapes", 1),
        ("trt_profile_opt_shapes", batch),
        ("trt_profile_max_shapes", batch),
    ):
        expected = ",".join(f"{i['name']}:{'x'.join(str(d) for d in (first, *i['dims']))}" for i in config["input"])
        assert options[key] == expected
    # Only TensorRT's own options: the engine file, providers and threads settings are not passed on.
    assert all(key.startswith("trt_") for key in options)


def test_bert_profile_shapes() -> None:
    options = tensorrt_options(_config(64, trt_fp16_enable="false", providers="", tensorrt_opt_batch="16"))
    assert options == {
        "trt_fp16_enable": "false",
        "trt_profile_min_shapes": "ids:1x128,mask:1x128",
        "trt_profile_opt_shapes": "ids:16x128,mask:16x128",
        "trt_profile_max_shapes": "ids:64x128,mask:64x128",
    }


def test_explicit_profile_in_the_config_wins() -> None:
    explicit = {
        "trt_profile_min_shapes": "ids:2x128,mask:2x128",
        "trt_profile_opt_shapes": "ids:4x128,mask:4x128",
        "trt_profile_max_shapes": "ids:4x128,mask:4x128",
    }
    assert tensorrt_options(_config(8, **explicit)) == explicit


def test_no_profile_without_batching_or_with_a_variable_dimension() -> None:
    assert tensorrt_options(_config(0, trt_engine_cache_enable="true")) == {"trt_engine_cache_enable": "true"}
    variable = _config(8)
    variable["input"][0]["dims"] = ["-1"]
    assert tensorrt_options(variable) == {}


def test_empty_values_are_dropped() -> None:
    assert "trt_engine_cache_path" not in tensorrt_options(_config(0, trt_engine_cache_path=""))


@pytest.mark.parametrize("opt", ["0", "9"])
def test_opt_batch_outside_the_range_is_refused(opt: str) -> None:
    with pytest.raises(ValueError, match=r"outside the batch range 1\.\.8"):
        tensorrt_options(_config(8, tensorrt_opt_batch=opt))
