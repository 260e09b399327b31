#!/usr/bin/env bash
# Builds the stand-in images the compose test maps docker-compose.yml's pinned images to (see
# test/docker/compose.standins.yml). No image registry is reachable here, only Debian's, PyPI's and
# npm's package registries, so:
#   lago-standin/debian:bookworm, :sid   root filesystems from debootstrap (`docker import`); sid
#                                         only for nginx >= 1.27.3
#   lago-standin/postgres, redis, nginx   Debian's packages behind the official images' contracts
#   lago-standin/litellm:v1.106.12        the pinned PyPI release, hash-checked from proxy/*.lock
#   lago-standin/node:24.21.0-bookworm-slim  the project's Node binary and npm, for ./Dockerfile
# Idempotent: the base images are made once (cached in the engine), the others are `docker build`s
# whose layers are cached, so a second run takes seconds. Needs DOCKER_HOST (scripts/ensure-docker.sh).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../../.." && pwd)"
CACHE="${DOCKER_TEST_ROOT:-/var/tmp/lago-billing-docker}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
NPM_VERSION="${STANDIN_NPM_VERSION:-11.19.1}"
say() { echo "standins: $*" >&2; }

has_image() { docker image inspect "$1" >/dev/null 2>&1; }

base_image() {
  local suite="$1" tag="lago-standin/debian:$1" rootfs="$CACHE/rootfs-$1"
  has_image "$tag" && return 0
  say "debootstrap $suite (first run only, about a minute)"
  rm -rf "$rootfs"
  debootstrap --variant=minbase "$suite" "$rootfs" "$MIRROR" >"$CACHE/debootstrap-$suite.log" 2>&1 \
    || { tail -n 20 "$CACHE/debootstrap-$suite.log" >&2; exit 1; }
  # This machine's mirror serves unstable as a snapshot whose Release file has expired.
  [[ "$suite" == sid ]] && echo 'Acquire::Check-Valid-Until "false";' >"$rootfs/etc/apt/apt.conf.d/99snapshot"
  rm -rf "$rootfs/var/lib/apt/lists/"* "$rootfs/var/cache/apt/archives/"*.deb
  tar -C "$rootfs" -c . | docker import -c 'CMD ["bash"]' - "$tag" >/dev/null
  rm -rf "$rootfs"
  say "$tag imported"
}

build() {
  local tag="$1" context="$2" started=$SECONDS
  docker build -q -t "$tag" "$context" >/dev/null \
    || { say "building $tag failed; rerun without -q: docker build $context"; exit 1; }
  say "$tag ready ($((SECONDS - started)) s)"
}

mkdir -p "$CACHE"
export DOCKER_BUILDKIT=0
base_image bookworm
base_image sid

build lago-standin/postgres:16.15-alpine "$HERE/postgres"
build lago-standin/redis:7.4.11-alpine "$HERE/redis"
build lago-standin/nginx:1.30.5-alpine "$HERE/nginx"

# Contexts that need files from the repository or a registry are assembled in a scratch folder.
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# This machine's extra CA certificates (an HTTPS proxy in front of PyPI and npm signs with one).
local_ca() {
  mkdir -p "$1/local-ca"
  find /usr/local/share/ca-certificates -maxdepth 1 -name '*.crt' -exec cp {} "$1/local-ca/" \; 2>/dev/null || true
}

mkdir -p "$work/litellm"
cp "$HERE/litellm/Dockerfile" "$HERE/litellm/entrypoint.sh" "$ROOT/proxy/pip.lock" "$ROOT/proxy/requirements.lock" \
  "$work/litellm/"
local_ca "$work/litellm"
build lago-standin/litellm:v1.106.12 "$work/litellm"

node_bin="$ROOT/node_modules/node/bin/node"
[[ -x "$node_bin" ]] || { say "no $node_bin: run npm ci first"; exit 1; }
[[ "$("$node_bin" --version)" == v24.21.0 ]] || { say "node_modules/node is not 24.21.0"; exit 1; }
mkdir -p "$work/node"
cp "$HERE/node/Dockerfile" "$work/node/"
local_ca "$work/node"
cp "$node_bin" "$work/node/node"
if [[ ! -s "$CACHE/npm-$NPM_VERSION.tgz" ]]; then
  (cd "$CACHE" && npm pack --silent "npm@$NPM_VERSION" >/dev/null)
fi
cp "$CACHE/npm-$NPM_VERSION.tgz" "$work/node/npm.tgz"
build lago-standin/node:24.21.0-bookworm-slim "$work/node"
