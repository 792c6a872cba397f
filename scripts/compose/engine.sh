#!/usr/bin/env bash
# A Docker engine for the compose end-to-end test: `engine.sh start` makes `docker info` answer,
# `engine.sh stop` stops only an engine this script started.
#
#   scripts/compose/engine.sh start   # installs docker.io + debootstrap (apt) when missing, starts dockerd
#   scripts/compose/engine.sh stop    # stops the dockerd started above (by its pid file), nothing else
#
# An engine that already answers is used as it is (and never stopped). Otherwise this needs root: it runs
# Debian's dockerd with its data outside the repo (BERTBC_DOCKER_ROOT, default /var/lib/bertbc-docker) and
# its own socket (BERTBC_DOCKER_HOST, default unix:///run/bertbc-docker.sock), so it never touches a system engine.
# The caller then exports DOCKER_HOST from the line this script prints (`DOCKER_HOST=...`).
set -euo pipefail

ROOT_DIR=${BERTBC_DOCKER_ROOT:-/var/lib/bertbc-docker}
SOCKET=${BERTBC_DOCKER_SOCKET:-/run/bertbc-docker.sock}
EXEC_ROOT=${BERTBC_DOCKER_EXEC_ROOT:-/run/bertbc-docker}
PID_FILE=${EXEC_ROOT}.pid
LOG_FILE=${ROOT_DIR}.log
START_TIMEOUT=${BERTBC_DOCKER_START_TIMEOUT:-60}

log() { printf '[engine] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

answers() { DOCKER_HOST=$1 timeout 20 docker info --format '{{.ServerVersion}}' >/dev/null 2>&1; }

install_packages() {
  local missing=()
  command -v dockerd >/dev/null || missing+=(docker.io)
  command -v docker >/dev/null || missing+=(docker.io)
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  [[ ${#missing[@]} -eq 0 ]] && return 0
  [[ $(id -u) -eq 0 ]] || die "need ${missing[*]} and root to install them (apt-get); run as root, install them, or set BERTBC_SKIP_COMPOSE=1"
  command -v apt-get >/dev/null || die "need ${missing[*]}; no apt-get on this host to install them"
  log "installing ${missing[*]} with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends docker.io debootstrap >/dev/null
}

start() {
  # 1. an engine the user already runs (DOCKER_HOST or the default socket)
  if [[ -z ${BERTBC_DOCKER_OWN:-} ]] && command -v docker >/dev/null && answers "${DOCKER_HOST:-}"; then
    log "using the running engine ${DOCKER_HOST:-unix:///var/run/docker.sock}"
    echo "DOCKER_HOST=${DOCKER_HOST:-unix:///var/run/docker.sock}"
    return 0
  fi
  install_packages
  # 2. ours, from an earlier call
  if answers "unix://${SOCKET}"; then
    log "using the engine started earlier at unix://${SOCKET}"
    echo "DOCKER_HOST=unix://${SOCKET}"
    return 0
  fi
  [[ $(id -u) -eq 0 ]] || die "no Docker engine answers and starting dockerd needs root (or set BERTBC_SKIP_COMPOSE=1)"
  mkdir -p "$ROOT_DIR" "$EXEC_ROOT"
  log "starting dockerd $(dockerd --version | sed 's/^Docker version //') (data ${ROOT_DIR}, socket unix://${SOCKET}, log ${LOG_FILE})"
  # --pidfile/--exec-root/containerd state are private, so a system dockerd (if any) is left alone.
  setsid dockerd --data-root "$ROOT_DIR" --exec-root "$EXEC_ROOT" --pidfile "$PID_FILE" \
    --host "unix://${SOCKET}" >>"$LOG_FILE" 2>&1 < /dev/null &
  local waited=0
  until answers "unix://${SOCKET}"; do
    kill -0 $! 2>/dev/null || { tail -n 20 "$LOG_FILE" >&2; die "dockerd exited (log above)"; }
    (( waited++ < START_TIMEOUT )) || die "dockerd did not answer within ${START_TIMEOUT}s (log: ${LOG_FILE})"
    sleep 1
  done
  log "engine $(DOCKER_HOST=unix://${SOCKET} docker info --format '{{.ServerVersion}} ({{.Driver}}, cgroup v{{.CgroupVersion}})') is up"
  echo "DOCKER_HOST=unix://${SOCKET}"
}

stop() {
  [[ -f $PID_FILE ]] || { log "no engine started by this script (${PID_FILE} absent)"; return 0; }
  local pid
  pid=$(cat "$PID_FILE")
  log "stopping dockerd pid ${pid}"
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  kill -0 "$pid" 2>/dev/null && { log "dockerd ${pid} still running after 30 s, sending SIGKILL"; kill -KILL "$pid"; }
  rm -f "$PID_FILE"
}

case ${1:-} in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
