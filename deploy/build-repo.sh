#!/bin/sh
# Copy the model repository skeleton (config.pbtxt + model.py) into $1 and build engines into it.
# Extra arguments go to `python -m magicmind_build` (e.g. --checkpoint bert_qa=/weights/bert.bin).
# From the environment (Compose passes them): MM_MODEL_SIZE (full | tiny; default full) and MM_CHECKPOINTS,
# space-separated MODEL=PATH pairs, e.g. "bert_qa=/weights/bert.bin yolov5n=/weights/yolov5n.pt".
set -eu
repo="${1:-/models}"
shift || true
mkdir -p "$repo"
cp -r /src/triton_repo/. "$repo/"
for checkpoint in ${MM_CHECKPOINTS:-}; do
  set -- "$@" --checkpoint "$checkpoint"
done
exec python -m magicmind_build --repo "$repo" --size "${MM_MODEL_SIZE:-full}" "$@"
