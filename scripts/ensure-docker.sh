#!/usr/bin/env bash
# A Docker engine for the compose test (./test.sh --docker), on a machine that may have none.
#
# Uses the engine DOCKER_HOST (or the default socket) points at when one answers. Otherwise
# installs Debian's docker.io (dockerd, containerd, runc) and docker-compose when missing, and
# starts dockerd in the background with its own socket, data root and exec root under
# DOCKER_TEST_ROOT (default /var/tmp/lago-billing-docker: outside the clone, so images built once
# are reused by later runs and clean clones). Also makes sure debootstrap is there (the stand-in
# images start from a Debian root filesystem).
#
# Prints `export DOCKER_HOST=...` for the caller to eval, or, when no engine can run here (no root,
# no apt, dockerd refuses to start), `export DOCKER_TEST_SKIP='<reason>'`: the test then says it
# was skipped and why, and never passes silently.
set -euo pipefail

ROOT_DIR="${DOCKER_TEST_ROOT:-/var/tmp/lago-billing-docker}"
SOCK="$ROOT_DIR/docker.sock"
say() { echo "ensure-docker: $*" >&2; }
skip() {
  say "SKIP: $1"
  printf "export DOCKER_TEST_SKIP=%q\n" "$1"
  exit 0
}

answers() { DOCKER_HOST="$1" docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }

need=()
command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
if [ "${#need[@]}" -gt 0 ]; then
  if ! command -v apt-get >/dev/null 2>&1 || [ "$(id -u)" != 0 ]; then
    skip "${need[*]} missing and cannot be installed here (needs root and apt-get)"
  fi
  say "installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null 2>&1; } \
    || skip "apt-get could not install ${need[*]}"
fi
command -v docker >/dev/null 2>&1 || skip "no docker client after installing docker.io"

# An engine that already answers: ours from an earlier run, or the caller's.
if answers "unix://$SOCK"; then
  echo "export DOCKER_HOST='unix://$SOCK'"
  exit 0
fi
if [ -n "${DOCKER_HOST:-}" ] && answers "$DOCKER_HOST"; then
  echo "export DOCKER_HOST='$DOCKER_HOST'"
  exit 0
fi

[ "$(id -u)" = 0 ] || skip "no Docker engine answers and starting dockerd needs root"
mkdir -p "$ROOT_DIR/data" "$ROOT_DIR/exec"
if [ -f "$ROOT_DIR/dockerd.pid" ] && ! kill -0 "$(cat "$ROOT_DIR/dockerd.pid")" 2>/dev/null; then
  rm -f "$ROOT_DIR/dockerd.pid" "$SOCK"
fi
say "starting dockerd (data root $ROOT_DIR/data, log $ROOT_DIR/dockerd.log)"
# setsid + closed descriptors: the engine outlives this script and the test run, like a system
# service would; later runs find it through its socket.
setsid dockerd --data-root "$ROOT_DIR/data" --exec-root "$ROOT_DIR/exec" \
  --pidfile "$ROOT_DIR/dockerd.pid" -H "unix://$SOCK" >"$ROOT_DIR/dockerd.log" 2>&1 </dev/null 9>&- &
for _ in $(seq 1 60); do
  answers "unix://$SOCK" && break
  sleep 0.5
done
if ! answers "unix://$SOCK"; then
  reason="dockerd did not start: $(tail -n 3 "$ROOT_DIR/dockerd.log" 2>/dev/null | tr '\n' ' ')"
  skip "$reason"
fi
say "dockerd $(DOCKER_HOST="unix://$SOCK" docker version --format '{{.Server.Version}}') answers on $SOCK"
echo "export DOCKER_HOST='unix://$SOCK'"
