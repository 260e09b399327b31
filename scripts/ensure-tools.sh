#!/usr/bin/env bash
# Static checkers the deployment tests use: Debian's docker-compose (validates docker-compose.yml
# without a Docker engine) and shellcheck. (nginx -t runs too where nginx happens to be installed;
# it is not installed here because its Debian package starts a server.)
# Installed with apt when missing; if that is impossible the checks say they were skipped.
set -euo pipefail
missing=()
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
command -v shellcheck >/dev/null 2>&1 || missing+=(shellcheck)
if [ "${#missing[@]}" -eq 0 ]; then
  exit 0
fi
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "ensure-tools: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null; } \
    || echo "ensure-tools: could not install ${missing[*]}; the checks that need them will say they were skipped" >&2
else
  echo "ensure-tools: ${missing[*]} missing and apt-get unavailable; those checks will be skipped" >&2
fi
