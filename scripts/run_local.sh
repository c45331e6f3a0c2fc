#!/usr/bin/env bash
# Set up everything, build the full-size engines and run the whole stack on this machine
# (no Docker): tritonserver (HTTP 8000, gRPC 8001, metrics 8002), the gateway (8080) and
# Prometheus (9090). Ctrl-C stops all of it. Logs go to run/.
#
#   MODEL_SIZE=tiny ./scripts/run_local.sh      # small models, for a quick look
#   CHECKPOINTS="bert_qa=/path/bert.bin yolov5n=/path/yolov5n_sd.pt" ./scripts/run_local.sh
#   PRECISIONS=fp16,int8 ./scripts/run_local.sh  # also build and serve <model>_fp16 / <model>_int8 variants
#     (CALIBRATION=PATH, CALIBRATION_METHOD=minmax|entropy|percentile, QUANTIZATION=static|dynamic)
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh

MODEL_SIZE="${MODEL_SIZE:-full}"
RUN_DIR="${RUN_DIR:-run}"
mkdir -p "$RUN_DIR"

build_args=(--repo triton_repo --size "$MODEL_SIZE")
for item in ${CHECKPOINTS:-}; do build_args+=(--checkpoint "$item"); done
if [ -n "${PRECISIONS:-}" ]; then
  build_args+=(--precision "$PRECISIONS" --calibration-method "${CALIBRATION_METHOD:-minmax}")
  build_args+=(--quantization "${QUANTIZATION:-static}")
  for item in ${CALIBRATION:-}; do build_args+=(--calibration "$item"); done
fi
echo "run_local: building engines ($MODEL_SIZE)"
.venv/bin/python -m magicmind_build "${build_args[@]}"

pids=()
cleanup() {
  trap - EXIT INT TERM
  echo "run_local: stopping"
  # SIGTERM: background jobs of a script ignore SIGINT. Each component shuts down gracefully on it.
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'cleanup; exit 0' INT TERM

for port in 8000 8001 8002 8080 9090; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "run_local: port $port is already in use (another stack running?)" >&2
    exit 1
  fi
done

wait_for() {  # url, name, seconds
  local deadline=$((SECONDS + $3))
  until curl -sf -o /dev/null "$1"; do
    kill -0 "${pids[-1]}" 2>/dev/null || { echo "run_local: $2 exited; see $RUN_DIR/" >&2; exit 1; }
    ((SECONDS < deadline)) || { echo "run_local: $2 not ready after $3s; see $RUN_DIR/" >&2; exit 1; }
    sleep 1
  done
  echo "run_local: $2 ready ($1)"
}

.venv/bin/python -m triton_local --model-repository triton_repo --work-dir "$RUN_DIR/triton" \
  >"$RUN_DIR/triton.log" 2>&1 &
pids+=($!)
wait_for http://127.0.0.1:8000/v2/health/ready tritonserver 600

# Same host as Triton: the detectors' outputs come back through shared memory instead of gRPC.
GATEWAY_TRITON_URL=127.0.0.1:8001 GATEWAY_MODEL_REPOSITORY=triton_repo GATEWAY_PORT=8080 GATEWAY_TRITON_SHARED_MEMORY=true \
  .venv/bin/python -m gateway >"$RUN_DIR/gateway.log" 2>&1 &
pids+=($!)
wait_for http://127.0.0.1:8080/readyz gateway 120

prometheus --config.file=deploy/prometheus/prometheus.local.yml --storage.tsdb.path="$RUN_DIR/prometheus" \
  --web.listen-address=127.0.0.1:9090 >"$RUN_DIR/prometheus.log" 2>&1 &
pids+=($!)
wait_for http://127.0.0.1:9090/-/ready prometheus 60

cat <<'USAGE'

Stack is up. Try:
  curl -s localhost:8080/qa -H 'content-type: application/json' \
       -d '{"question": "Who wrote the report?", "context": "The report was written by Ada Lovelace in 1843."}'
  curl -s localhost:8080/detect -F file=@examples/astronaut.jpg          # pretrained NanoDet (default)
  curl -s "localhost:8080/detect?model=yolov5n" -F file=@examples/astronaut.jpg
  curl -s 'localhost:8080/classify?model=efficientnet_lite0' -F file=@image.jpg
  curl -s localhost:8080/models        # weights provenance: untrained models say so
  open http://localhost:9090           # Prometheus (gateway_* and nv_* metrics)
Ctrl-C stops everything.
USAGE
wait -n "${pids[@]}"
echo "run_local: a component exited; see $RUN_DIR/*.log" >&2
exit 1
