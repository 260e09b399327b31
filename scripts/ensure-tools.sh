#!/usr/bin/env bash
# Static checkers the deployment tests use: Debian's docker-compose (validates docker-compose.yml
# without a Docker engine), shellcheck, and prometheus (its promtool checks and unit-tests the alert
# rules in deploy/prometheus/; scripts/stack.sh also runs the prometheus binary when it is there).
# (nginx -t runs too where nginx happens to be installed; it is not installed here because its
# Debian package starts a server.)
# Installed with apt when missing; if that is impossible the checks say they were skipped, and the
# tools that could not be installed are listed in $ENSURE_TOOLS_REPORT (one per line; the file is
# removed when nothing is missing): test/deploy/prometheus.test.ts fails under CI when promtool is
# missing without being listed there.
set -euo pipefail
report="${ENSURE_TOOLS_REPORT:-${XDG_CACHE_HOME:-$HOME/.cache}/lago-billing/tools-unavailable}"
# Debian package for each command.
declare -A package=([docker-compose]=docker-compose [shellcheck]=shellcheck [promtool]=prometheus)
missing=()
for tool in docker-compose shellcheck promtool; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ "${#missing[@]}" -eq 0 ]; then
  rm -f "$report"
  exit 0
fi
packages=()
for tool in "${missing[@]}"; do
  packages+=("${package[$tool]}")
done
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "ensure-tools: installing ${packages[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q --no-install-recommends "${packages[@]}" >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q --no-install-recommends "${packages[@]}" >/dev/null; } \
    || echo "ensure-tools: could not install ${packages[*]}; the checks that need them will say they were skipped" >&2
else
  echo "ensure-tools: ${missing[*]} missing and apt-get unavailable; those checks will be skipped" >&2
fi
still=()
for tool in "${missing[@]}"; do
  command -v "$tool" >/dev/null 2>&1 || still+=("$tool")
done
if [ "${#still[@]}" -eq 0 ]; then
  rm -f "$report"
else
  mkdir -p "$(dirname "$report")"
  printf '%s\n' "${still[@]}" >"$report"
fi
