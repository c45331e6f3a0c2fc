#!/bin/sh
# Copy the model repository skeleton (config.pbtxt + model.py) into $1 and build engines into it.
# Extra arguments go to `python -m magicmind_build` (e.g. --checkpoint bert_qa=/weights/bert.bin).
set -eu
repo="${1:-/models}"
shift || true
mkdir -p "$repo"
cp -r /src/triton_repo/. "$repo/"
exec python -m magicmind_build --repo "$repo" "$@"
