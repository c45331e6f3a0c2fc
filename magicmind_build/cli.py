"""CLI: ``python -m magicmind_build [--repo triton_repo] [--size full|tiny] [--checkpoint bert_qa=path.bin]``.

Writes each engine into ``<repo>/<model>/1/`` (``model.onnx`` + ``manifest.json``), which is
where the Triton model of the same name loads it from.

``--backend magicmind`` (on an MLU host with the Cambricon MagicMind SDK) then builds ``model.mm`` from
``model.onnx`` and the ``magicmind_build_config.json`` written next to it, and points the manifest at it.
``--precision fp16 int8`` also builds ``<model>_fp16`` / ``<model>_int8`` next to each FP32 model (see
:mod:`magicmind_build.precision`; ``--calibration``, ``--calibration-method``, ``--quantization``); with
``--backend magicmind`` each variant is a ``model.mm`` that MagicMind builds from the FP32 graph, INT8
calibrated by its ``Calibrator`` on the same preprocessed calibration set (``minmax`` -> ``LINEAR_ALGORITHM``,
``eqnm`` -> ``EQNM_ALGORITHM``).

``--null-engine`` (benchmarks only) writes manifests with ``engine_format: null`` instead: Triton,
run with ``MM_ALLOW_NULL_ENGINE=1``, then answers zeros of the real shapes at no engine cost.
"""

from __future__ import annotations

import argparse
import json
import logging
import pathlib
import sys

from engine_runtime.manifest import Manifest
from magicmind_build import precision
from magicmind_build.build import CheckpointError, build_engine, build_null_manifest
from magicmind_build.magicmind import MagicMindBuildError, build_magicmind_engine, magicmind_sdk
from magicmind_build.specs import SIZES, SPECS

LOGGER = logging.getLogger("magicmind_build")


def _checkpoints(items: list[str]) -> dict[str, pathlib.Path]:
    result = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or name not in SPECS:
            raise SystemExit(f"--checkpoint wants MODEL=PATH with MODEL in {sorted(SPECS)}, got {item!r}")
        result[name] = pathlib.Path(path)
    return result


def _up_to_date(out_dir: pathlib.Path, size: str, checkpoint: pathlib.Path | None, backend: str = "onnx") -> bool:
    try:
        manifest = Manifest.read(out_dir)
    except (OSError, ValueError, TypeError):
        return False
    wanted_source = str(checkpoint) if checkpoint else None
    return (
        manifest.engine_format == backend
        and (out_dir / manifest.engine_file).exists()
        and manifest.config.get("size") == size
        and ((wanted_source is None and manifest.weights != "checkpoint") or manifest.weights_source == wanted_source)
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m magicmind_build", description="Build the served engines")
    parser.add_argument(
        "--repo", type=pathlib.Path, default=pathlib.Path("triton_repo"), help="Triton model repository"
    )
    parser.add_argument("--models", nargs="+", choices=sorted(SPECS), default=sorted(SPECS))
    parser.add_argument("--size", choices=SIZES, default="full", help="'tiny' = small configs for tests")
    parser.add_argument("--checkpoint", action="append", default=[], metavar="MODEL=PATH")
    parser.add_argument("--seed", type=int, default=0, help="seed for untrained (random) weights")
    parser.add_argument("--force", action="store_true", help="rebuild even if an up-to-date engine exists")
    parser.add_argument(
        "--backend",
        choices=("onnx", "magicmind"),
        default="onnx",
        help="engine to serve: ONNX (ONNX Runtime) or a MagicMind .mm built from it (needs the MagicMind SDK)",
    )
    parser.add_argument(
        "--null-engine",
        action="store_true",
        help="BENCHMARK ONLY: write null-engine manifests (zero outputs; Triton needs MM_ALLOW_NULL_ENGINE=1)",
    )
    precision.add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.null_engine:
        if args.checkpoint:
            raise SystemExit("--null-engine has no weights; drop --checkpoint")
        for name in args.models:
            manifest = build_null_manifest(SPECS[name], args.repo / name / "1", args.size)
            LOGGER.warning("%s: NULL ENGINE manifest (benchmark only) %s", name, json.dumps(manifest.outputs))
        return 0
    if args.backend == "magicmind":
        try:
            magicmind_sdk()
        except MagicMindBuildError as exc:
            raise SystemExit(f"--backend magicmind: {exc}") from None
    checkpoints = _checkpoints(args.checkpoint)
    options = precision.options_from_args(args, args.models)  # refuses bad precision flags before any build
    for name in args.models:
        out_dir = args.repo / name / "1"
        if not args.force and _up_to_date(out_dir, args.size, checkpoints.get(name), args.backend):
            LOGGER.info("%s: up to date in %s", name, out_dir)
            continue
        try:
            manifest = build_engine(SPECS[name], out_dir, args.size, checkpoints.get(name), args.seed)
        except CheckpointError as exc:
            LOGGER.error("%s: %s", name, exc)
            return 2
        if args.backend == "magicmind":
            try:
                manifest = build_magicmind_engine(manifest, out_dir)
            except MagicMindBuildError as exc:
                LOGGER.error("%s: %s", name, exc)
                return 2
        LOGGER.info("%s: built (%s weights) %s", name, manifest.weights, json.dumps(manifest.outputs))
    for name in args.models:
        for wanted in options.precisions[1:]:
            try:
                variant = precision.build_variant(SPECS[name], args.repo, args.size, wanted, options, args.force)
            except (precision.CalibrationError, MagicMindBuildError) as exc:
                LOGGER.error("%s: %s", name, exc)
                return 2
            LOGGER.info("%s: %s engine, calibration %s", variant.model, variant.precision, variant.calibration)
    return 0


if __name__ == "__main__":
    sys.exit(main())
