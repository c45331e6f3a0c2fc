#!/usr/bin/env bash
# The compose tier: `docker compose up` for real (CPU profile, tiny models) under podman, checks, `down -v`.
# Sets up (idempotent: podman, Docker Compose, local base images), then runs the tests marked `compose`,
# printing the phase timings. Needs root (or sudo) for podman. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup-compose.sh
exec .venv/bin/python -m pytest -m compose -o log_cli=true -o log_cli_level=INFO tests/deploy/test_compose_up.py "$@"
