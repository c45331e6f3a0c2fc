#!/usr/bin/env bash
# Set up (idempotent), lint and type-check, then run the whole test suite against a real
# tritonserver and a real Prometheus. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
code=(gateway engine_runtime magicmind_build triton_local triton_repo tests benchmarks scripts)
.venv/bin/ruff check "${code[@]}"
.venv/bin/ruff format --check "${code[@]}"
.venv/bin/mypy gateway engine_runtime magicmind_build triton_local
exec .venv/bin/python -m pytest "$@"
