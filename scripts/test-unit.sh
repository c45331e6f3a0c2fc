#!/usr/bin/env bash
# The fast tier: tests marked `unit` (tests/conftest.py assigns tiers). No tritonserver, no PyTorch import;
# the schemathesis and hypothesis plugins are not loaded (no unit test uses them). Assumes ./scripts/setup.sh ran.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python -m pytest -m unit -q -p no:schemathesis -p no:hypothesispytest "$@"
