#!/usr/bin/env bash
# Makes the upstream images the compose stack needs exist in the engine: pulled when a registry answers,
# else a locally built STAND-IN tagged with the upstream name (so the repo's Dockerfiles and compose files run
# unchanged). Every stand-in carries the label org.bertbc.standin=true and the file /BERTBC_STANDIN.
#
#   scripts/compose/standins.sh                       # every image below
#   scripts/compose/standins.sh locustio/locust:2.47.0
#   BERTBC_STANDIN_NO_PULL=1 scripts/compose/standins.sh   # do not even try the registry
#
# Stand-ins: debootstrap (bookworm minbase + python3, pip, venv, bash, ca-certificates, passwd) imported once as
# bertbc-standin/rootfs:bookworm, then one small Dockerfile per image in scripts/compose/standins/ that
# pip-installs the repo's own pins (scripts/compose/requirements.py). An existing stand-in is rebuilt when its
# recipe (Dockerfile + inputs) changed; an image without the stand-in label (a real one) is never touched.
# Needs root for debootstrap. Output: one line per image, "NAME upstream|STAND-IN".
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
PY=${PYTHON:-python3}
CACHE=${BERTBC_STANDIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/bertbc/standins}
SUITE=bookworm
MIRROR=${BERTBC_DEBIAN_MIRROR:-http://deb.debian.org/debian}
ROOTFS_IMAGE=bertbc-standin/rootfs:${SUITE}
COMMON_IMAGE=bertbc-standin/common:${SUITE}
PULL_TIMEOUT=${BERTBC_PULL_TIMEOUT:-60}
export DOCKER_BUILDKIT=0   # the classic builder: BuildKit would try to pull a dockerfile frontend

log() { printf '[standins] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

pin() { "$PY" "$HERE/requirements.py" "$1" | sed -n 's/^[^=]*==\([^;[:space:]]*\).*/\1/p' | head -n 1; }
TF=$(pin tensorflow)
LOCUST=$(pin locust)
ALL_IMAGES=("tensorflow/tensorflow:${TF}" "python:3.11-slim-bookworm" "locustio/locust:${LOCUST}"
            "tensorflow/serving:${TF}")

label() { docker image inspect --format "{{ index .Config.Labels \"$2\" }}" "$1" 2>/dev/null || true; }

build_rootfs_image() {
  [[ -n $(label "$ROOTFS_IMAGE" org.bertbc.standin) ]] && return 0
  [[ $(id -u) -eq 0 ]] || die "building a STAND-IN base needs root (debootstrap)"
  if ! command -v debootstrap >/dev/null; then
    command -v apt-get >/dev/null || die "debootstrap missing and no apt-get to install it"
    log "installing debootstrap with apt-get"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
  fi
  local rootfs
  mkdir -p "$CACHE"
  rootfs=$(mktemp -d "$CACHE/rootfs.XXXXXX")
  log "STAND-IN base: debootstrap ${SUITE} minbase into ${rootfs} (about a minute)"
  debootstrap --variant=minbase --include=python3,python3-pip,python3-venv,bash,ca-certificates,passwd \
    "$SUITE" "$rootfs" "$MIRROR" > "$CACHE/debootstrap.log" 2>&1 \
    || { tail -n 20 "$CACHE/debootstrap.log" >&2; rm -rf "$rootfs"; die "debootstrap failed (log: $CACHE/debootstrap.log)"; }
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -c . | docker import \
    --change 'LABEL org.bertbc.standin=true' --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["bash"]' - "$ROOTFS_IMAGE" >/dev/null
  rm -rf "$rootfs"
  log "STAND-IN base ${ROOTFS_IMAGE} imported"
}

# Fills a build context for one stand-in and prints its folder.
make_context() {
  local kind=$1 ctx
  ctx=$(mktemp -d "$CACHE/context.XXXXXX")
  cp "$HERE/standins/${kind}.Dockerfile" "$ctx/Dockerfile"
  case $kind in
    common)
      cp "${BERTBC_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}" "$ctx/ca-certificates.crt"
      printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' > "$ctx/pip.conf" ;;
    tensorflow|locust) "$PY" "$HERE/requirements.py" "$kind" > "$ctx/requirements.txt" ;;
    serving)
      "$PY" "$HERE/requirements.py" serving > "$ctx/requirements.txt"
      mkdir "$ctx/serving"
      cp "$REPO"/serving/*.py "$ctx/serving/"
      cp "$HERE/standins/tensorflow_model_server" "$HERE/standins/tf_serving_entrypoint.sh" "$ctx/" ;;
  esac
  echo "$ctx"
}

recipe_hash() {  # of the context's contents plus the image it builds on
  (cd "$1" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum; echo "$2") | sha256sum | cut -c1-16
}

build_standin() {  # kind, tag, base image
  local kind=$1 tag=$2 from=$3 ctx recipe base_id
  ctx=$(make_context "$kind")
  base_id=$(docker image inspect --format '{{.Id}}' "$from")
  recipe=$(recipe_hash "$ctx" "$base_id")
  if [[ $(label "$tag" org.bertbc.standin.recipe) == "$recipe" ]]; then
    rm -rf "$ctx"
    return 0
  fi
  log "building STAND-IN ${tag} (recipe ${recipe}, log: ${CACHE}/${kind}.build.log)"
  local args=(--build-arg "ROOTFS_IMAGE=${ROOTFS_IMAGE}" --build-arg "COMMON_IMAGE=${COMMON_IMAGE}"
              --build-arg "TF_IMAGE=${from}")
  docker build --quiet "${args[@]}" --label org.bertbc.standin=true --label "org.bertbc.standin.recipe=${recipe}" \
    --label "org.bertbc.standin.upstream=${tag}" -t "$tag" "$ctx" > "$CACHE/${kind}.build.log" 2>&1 \
    || { tail -n 30 "$CACHE/${kind}.build.log" >&2; rm -rf "$ctx"; die "building STAND-IN ${tag} failed"; }
  rm -rf "$ctx"
}

ensure() {  # one upstream image name
  local image=$1 kind
  if docker image inspect "$image" >/dev/null 2>&1 && [[ -z $(label "$image" org.bertbc.standin) ]]; then
    echo "$image upstream"; return 0
  fi
  if [[ -z ${BERTBC_STANDIN_NO_PULL:-} ]] && [[ -z $(label "$image" org.bertbc.standin) ]]; then
    if timeout "$PULL_TIMEOUT" docker pull --quiet "$image" >/dev/null 2>&1; then
      log "pulled the upstream ${image}"; echo "$image upstream"; return 0
    fi
    log "cannot pull ${image}: using a local STAND-IN under that name"
  fi
  case $image in
    tensorflow/tensorflow:*) kind=tensorflow ;;
    python:*) kind=python ;;
    locustio/locust:*) kind=locust ;;
    tensorflow/serving:*) kind=serving ;;
    *) die "no stand-in recipe for ${image}" ;;
  esac
  build_rootfs_image
  build_standin common "$COMMON_IMAGE" "$ROOTFS_IMAGE"
  if [[ $kind == serving ]]; then
    ensure "tensorflow/tensorflow:${TF}" >/dev/null   # the serving stand-in builds on it
    build_standin serving "$image" "tensorflow/tensorflow:${TF}"
  else
    build_standin "$kind" "$image" "$COMMON_IMAGE"
  fi
  echo "$image STAND-IN"
}

mkdir -p "$CACHE"
images=("$@")
[[ ${#images[@]} -gt 0 ]] || images=("${ALL_IMAGES[@]}")
for image in "${images[@]}"; do ensure "$image"; done
# Rebuilt stand-ins leave their old image untagged; remove those (only stand-ins, only untagged ones).
docker image prune --force --filter label=org.bertbc.standin=true >/dev/null
