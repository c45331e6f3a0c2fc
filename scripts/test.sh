#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite against a real tritonserver and Prometheus.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
