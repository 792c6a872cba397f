#!/usr/bin/env bash
# Makes `docker compose` (Compose v2) available without changing the system's apt sources.
#
#   scripts/compose/compose-plugin.sh      # prints the Compose version it ends up with
#
# If `docker compose version` already works it is used. Otherwise Debian 13 (trixie)'s `docker-compose`
# package (a static Go binary, needs libc >= 2.34) is downloaded with a private apt configuration (its own
# sources list and package lists under BERTBC_COMPOSE_CACHE), unpacked with `dpkg -x`, and linked as the CLI
# plugin ~/.docker/cli-plugins/docker-compose. Nothing is installed into the system's package database.
set -euo pipefail

CACHE=${BERTBC_COMPOSE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/bertbc/compose}
SUITE=${BERTBC_COMPOSE_SUITE:-trixie}
MIRROR=${BERTBC_COMPOSE_MIRROR:-http://deb.debian.org/debian}
PLUGIN_DIR=${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins

log() { printf '[compose] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

if docker compose version >/dev/null 2>&1; then
  docker compose version --short
  exit 0
fi
command -v apt-get >/dev/null && command -v dpkg >/dev/null \
  || die "docker compose (v2) is missing and this host has no apt-get/dpkg to fetch it; install Compose >= 2.24.4"

binary=$CACHE/root/usr/libexec/docker/cli-plugins/docker-compose
if [[ ! -x $binary ]]; then
  log "fetching ${SUITE}'s docker-compose package into ${CACHE} (private apt config, system sources untouched)"
  mkdir -p "$CACHE/lists/partial" "$CACHE/archives/partial" "$CACHE/root"
  echo "deb ${MIRROR} ${SUITE} main" > "$CACHE/sources.list"
  apt_opts=(-o "Dir::Etc::SourceList=$CACHE/sources.list" -o Dir::Etc::SourceParts=/dev/null
            -o "Dir::State::Lists=$CACHE/lists" -o "Dir::Cache::Archives=$CACHE/archives"
            -o "Dir::Cache::pkgcache=" -o "Dir::Cache::srcpkgcache=" -o Debug::NoLocking=1 -o APT::Sandbox::User=root)
  apt-get "${apt_opts[@]}" update -qq
  (cd "$CACHE/archives" && apt-get "${apt_opts[@]}" download docker-compose)
  deb=$(ls -t "$CACHE"/archives/docker-compose_*.deb | head -n 1)
  dpkg -x "$deb" "$CACHE/root"
  [[ -x $binary ]] || die "no docker-compose CLI plugin inside ${deb}"
fi
mkdir -p "$PLUGIN_DIR"
ln -sfn "$binary" "$PLUGIN_DIR/docker-compose"
version=$(docker compose version --short) || die "docker compose does not run (${binary})"
log "Compose ${version} linked as ${PLUGIN_DIR}/docker-compose"
echo "$version"
