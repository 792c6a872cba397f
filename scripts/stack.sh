#!/usr/bin/env bash
# The Docker stack without Docker: train (smoke-sized) -> dev server -> TensorBoard -> short Locust run,
# on the same ports as docker-compose.yml, then stop everything this script started.
#
#   scripts/stack.sh                      # or: make stack
#   BERTBC_STACK_KEEP=1 scripts/stack.sh  # keep server + TensorBoard up after the load test (Ctrl-C stops)
#   BERTBC_TRAIN_ARGS="--seq-length 128" scripts/stack.sh   # more trainer flags (word-split), e.g. --new-run
#
# Everything it writes goes under one folder of its own, stack/ (BERTBC_STACK_DIR): stack/checkpoints,
# stack/logs, stack/models/bertbc, stack/reports. Your `make train` runs (checkpoints/, logs/) and models
# (models/bertbc) are never read or written, so a stack run can neither block a resume nor publish its smoke
# model where `make serve` looks. Training is skipped when stack/models/bertbc already holds a version;
# BERTBC_RETRAIN=1 trains anyway. Every setting below can be overridden from the environment.
# Exit code: the load test's verdict (0 = PASS).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

VENV=${VENV:-.venv}
PY=$VENV/bin/python
DATA_DIR=${BERTBC_DATA_DIR:-../shared/data/bbc}   # if absent, the trainer downloads the BBC zip
ENCODER=${BERTBC_ENCODER:-tiny-random}            # smoke default; minilm-l6 for a real model
EPOCHS=${BERTBC_EPOCHS:-1}
BATCH_SIZE=${BERTBC_BATCH_SIZE:-8}
SEQ_LENGTH=${BERTBC_SEQ_LENGTH:-64}
MAX_TRAIN_DOCS=${BERTBC_MAX_TRAIN_DOCS:-64}
MAX_VAL_DOCS=${BERTBC_MAX_VAL_DOCS:-32}
CACHE_DIR=${BERTBC_CACHE_DIR:-$HOME/.cache/bertbc}
STACK_DIR=${BERTBC_STACK_DIR:-stack}              # the stack's own folder: never checkpoints/, logs/, models/
MODELS_DIR=$STACK_DIR/models
LOGS_DIR=$STACK_DIR/logs
CHECKPOINTS_DIR=$STACK_DIR/checkpoints
REPORTS_DIR=$STACK_DIR/reports
REST_PORT=${BERTBC_REST_PORT:-8501}
TB_PORT=${BERTBC_TB_PORT:-6006}
USERS=${BERTBC_LOCUST_USERS:-4}
SPAWN_RATE=${BERTBC_LOCUST_SPAWN_RATE:-2}
RUN_TIME=${BERTBC_LOCUST_RUN_TIME:-20s}
MAX_P95_MS=${BERTBC_MAX_P95_MS:-5000}
MAX_P99_MS=${BERTBC_MAX_P99_MS:-10000}
READY_TIMEOUT=${BERTBC_READY_TIMEOUT:-300}
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}

URL="http://127.0.0.1:${REST_PORT}"
BASE_PATH="${MODELS_DIR}/bertbc"
PIDS=()

log() { printf '[stack] %s\n' "$*" >&2; }

cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  PIDS=()
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

port_free() {
  "$PY" - "$1" <<'EOF'
import socket, sys
with socket.socket() as s:
    try:
        s.bind(("127.0.0.1", int(sys.argv[1])))
    except OSError:
        sys.exit(1)
EOF
}

wait_available() {  # polls the model status endpoint; fails early if the server process died
  "$PY" - "$URL" "$1" "$READY_TIMEOUT" <<'EOF'
import json, os, sys, time, urllib.request
url, pid, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
deadline = time.monotonic() + timeout
while time.monotonic() < deadline:
    try:
        os.kill(pid, 0)
    except OSError:
        sys.exit(f"dev server (pid {pid}) exited before the model became available")
    try:
        with urllib.request.urlopen(f"{url}/v1/models/bertbc", timeout=2) as r:
            if any(v["state"] == "AVAILABLE" for v in json.load(r)["model_version_status"]):
                sys.exit(0)
    except Exception:
        pass
    time.sleep(0.5)
sys.exit(f"model not AVAILABLE at {url} after {timeout:.0f}s")
EOF
}

[[ -x "$PY" ]] || { log "$PY not found: run 'make install' first"; exit 2; }
for port in "$REST_PORT" "$TB_PORT"; do
  port_free "$port" || { log "port $port on 127.0.0.1 is in use (stop the other server or set BERTBC_REST_PORT/BERTBC_TB_PORT)"; exit 2; }
done
mkdir -p "$STACK_DIR"
if [[ "$(cd "$STACK_DIR" && pwd -P)" == "$(pwd -P)" ]]; then
  log "BERTBC_STACK_DIR=${STACK_DIR} is the project folder: the stack would write into your checkpoints/ and models/"
  exit 2
fi
mkdir -p "$REPORTS_DIR" "$LOGS_DIR" "$CHECKPOINTS_DIR" "$BASE_PATH"

# 1. trainer (one-shot, like the compose service)
if [[ "${BERTBC_RETRAIN:-0}" != 1 ]] && compgen -G "${BASE_PATH}/[0-9]*" > /dev/null; then
  log "a model version exists in ${BASE_PATH}; not retraining (BERTBC_RETRAIN=1 to train again)"
else
  data_flag=()
  if [[ -d "$DATA_DIR" ]]; then data_flag=(--data-dir "$DATA_DIR"); fi
  log "training ${ENCODER}: ${EPOCHS} epoch(s), ${MAX_TRAIN_DOCS}/${MAX_VAL_DOCS} docs -> ${BASE_PATH} (log: ${REPORTS_DIR}/trainer.log)"
  # shellcheck disable=SC2086  # BERTBC_TRAIN_ARGS is word-split on purpose
  "$PY" -m trainer "${data_flag[@]}" --encoder "$ENCODER" --epochs "$EPOCHS" --batch-size "$BATCH_SIZE" \
    --seq-length "$SEQ_LENGTH" --max-train-docs "$MAX_TRAIN_DOCS" --max-val-docs "$MAX_VAL_DOCS" \
    --logdir "$LOGS_DIR" --checkpoint-dir "$CHECKPOINTS_DIR" --model-base-path "$BASE_PATH" \
    --model-name bertbc --cache-dir "$CACHE_DIR" ${BERTBC_TRAIN_ARGS:-} > "${REPORTS_DIR}/trainer.log" 2>&1 \
    || { log "trainer failed; last lines of ${REPORTS_DIR}/trainer.log:"; tail -n 30 "${REPORTS_DIR}/trainer.log" >&2
         log "(more trainer flags: BERTBC_TRAIN_ARGS=\"--new-run ...\"; or start afresh: rm -r ${STACK_DIR})"; exit 1; }
fi

# 2. dev server (the compose `serving` service's flags, with local paths)
log "starting dev server on ${URL} (log: ${REPORTS_DIR}/server.log)"
"$PY" -m serving --rest_api_host 127.0.0.1 --rest_api_port "$REST_PORT" --model_name bertbc \
  --model_base_path "$BASE_PATH" --monitoring_config_file serving/monitoring.config \
  --enable_batching --batching_parameters_file serving/batching_parameters.txt \
  --file_system_poll_wait_seconds 10 > "${REPORTS_DIR}/server.log" 2>&1 &
SERVER_PID=$!
PIDS+=("$SERVER_PID")

# 3. TensorBoard
log "starting TensorBoard on http://127.0.0.1:${TB_PORT} (log: ${REPORTS_DIR}/tensorboard.log)"
"$VENV/bin/tensorboard" --logdir "$LOGS_DIR" --port "$TB_PORT" --host 127.0.0.1 > "${REPORTS_DIR}/tensorboard.log" 2>&1 &
PIDS+=("$!")

wait_available "$SERVER_PID" || { log "last lines of ${REPORTS_DIR}/server.log:"; tail -n 30 "${REPORTS_DIR}/server.log" >&2; exit 1; }
log "model available: $(${PY} -c "import json,urllib.request;print(json.load(urllib.request.urlopen('${URL}/v1/models/bertbc'))['model_version_status'][0])")"

# 4. load test (bounded); its verdict is this script's exit code
log "load test: ${USERS} users for ${RUN_TIME} against ${URL}"
set +e
"$VENV/bin/locust" -f loadtest/locustfile.py --headless -u "$USERS" -r "$SPAWN_RATE" -t "$RUN_TIME" \
  --host "$URL" --csv "${REPORTS_DIR}/loadtest" --html "${REPORTS_DIR}/loadtest.html" --only-summary \
  --stop-timeout 5 --max-p95-ms "$MAX_P95_MS" --max-p99-ms "$MAX_P99_MS" 2>&1 | tee "${REPORTS_DIR}/loadtest.log"
status=${PIPESTATUS[0]}
set -e

if [[ "${BERTBC_STACK_KEEP:-0}" == 1 ]]; then
  log "serving ${URL}, TensorBoard http://127.0.0.1:${TB_PORT}; Ctrl-C stops both"
  wait "$SERVER_PID" || true
fi

cat >&2 <<EOF

[stack] done (load test exit code ${status}). Where to look (all under ${STACK_DIR}/):
  model versions   ${BASE_PATH}/<N>  (model_card.json inside)
  TensorBoard logs ${LOGS_DIR}/        (.venv/bin/tensorboard --logdir ${LOGS_DIR})
  checkpoints      ${CHECKPOINTS_DIR}/
  load test        ${REPORTS_DIR}/loadtest.html, ${REPORTS_DIR}/loadtest_stats.csv
  process logs     ${REPORTS_DIR}/{trainer,server,tensorboard,loadtest}.log
EOF
# What was served: the newest version's card, so nobody mistakes the smoke model for the real one.
"$PY" - "$BASE_PATH" <<'EOF' >&2 || true
import json, pathlib, sys
base = pathlib.Path(sys.argv[1])
versions = sorted((p for p in base.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
card_path = versions[-1] / "model_card.json" if versions else None
if card_path is None or not card_path.is_file():
    sys.exit(f"[stack] no model card in {base}: its model's accuracy is unknown")
card = json.loads(card_path.read_text())
encoder, docs = card["encoder"]["name"], card["data"]["train_docs"]
accuracy, epochs = card["best_val_accuracy"], len(card["epochs"])
kind = "a SMOKE model" if encoder == "tiny-random" or docs < 1780 else "the stack's own model"
print(f"[stack] {versions[-1]} is {kind} ({encoder}, {docs} training docs, {epochs} epoch(s)): "
      f"validation accuracy {accuracy:.3f}.")
print("[stack] `make train` trains the real model into models/bertbc/ (the folder `make serve` serves); "
      "the stack never touches it.")
EOF
exit "$status"
