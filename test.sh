#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what it needs from the project's own files
# (npm ci, the pinned LiteLLM virtualenv), makes sure PostgreSQL and Redis run, then checks types,
# lint, the Python callback's tests and every TypeScript test layer.
#   ./test.sh                 everything but the Docker deployment test
#   ./test.sh test/unit       only some vitest paths (no benchmark smoke run)
#   ./test.sh --docker        the Docker deployment test: the real docker-compose.yml through
#                             ./deploy.sh on a Docker engine it starts, with stand-in images
#                             (several minutes; the first run builds the images)
set -euo pipefail
cd "$(dirname "$0")"
docker_test=0
if [ "${1:-}" = "--docker" ]; then
  docker_test=1
  shift
fi
started=$(date +%s)
step() { printf '\n==> %s (%ss)\n' "$1" "$(( $(date +%s) - started ))"; }

step "node dependencies"
# The lockfile and the dependency patches (patches/, applied by npm's postinstall) decide the install.
lock_hash=$(cat package-lock.json patches/*.patch | sha256sum | cut -d' ' -f1)
if [ "$(cat node_modules/.lock-hash 2>/dev/null || true)" != "$lock_hash" ]; then
  npm ci --no-audit --no-fund
  echo "$lock_hash" > node_modules/.lock-hash
fi
export PATH="$PWD/node_modules/.bin:$PATH"
node --version
npm run -s build

# The Docker deployment test needs only the node dependencies (vitest, the Node binary the stand-in
# image takes); the rest of the suite's steps are not repeated.
if [ "$docker_test" = 1 ]; then
  step "Docker engine"
  eval "$(scripts/ensure-docker.sh)"
  if [ -z "${DOCKER_TEST_SKIP:-}" ]; then
    step "stand-in images"
    test/docker/standins/build.sh
  fi
  step "compose test"
  VITEST_DOCKER=1 vitest run test/docker
  step "done"
  exit 0
fi

step "services"
eval "$(scripts/ensure-services.sh)"

step "LiteLLM virtualenv"
scripts/ensure-litellm.sh

step "static checkers (docker-compose, shellcheck, promtool)"
scripts/ensure-tools.sh

step "types and lint"
tsc -p tsconfig.json --noEmit
biome check .

step "python callback tests"
(cd proxy && LITELLM_LOCAL_MODEL_COST_MAP=True ../.venv/litellm/bin/python -m unittest -q test_lago_billing test_lago_entitlements)

step "vitest"
if [ "$#" -gt 0 ]; then
  vitest run "$@"
else
  vitest run
  step "benchmark smoke (correctness only, no timing asserts)"
  VITEST_BENCH_SMOKE=1 vitest run test/bench
fi
step "done"
