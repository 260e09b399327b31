#!/usr/bin/env bash
# Deploys the LiteLLM + Lago billing stack with Docker Compose on this host.
#
#   ./deploy.sh                       preflight, build, start, wait until every service is healthy
#   ./deploy.sh --generate-secrets    also fill missing/placeholder secrets in .env (no prompt)
#   ./deploy.sh --scale 3             run 3 LiteLLM replicas behind the nginx load balancer
#   ./deploy.sh --check               preflight only (tools, daemon, .env, compose file); starts nothing
#   ./deploy.sh --monitoring          also Prometheus and Grafana (the compose profile `monitoring`)
#
# Safe to run again: existing secrets in .env are never regenerated, running services are updated
# in place by `docker compose up -d`.
#
# Environment: COMPOSE_CMD overrides the compose command (e.g. COMPOSE_CMD="docker-compose");
# COMPOSE_FILE (Docker Compose's own variable, files separated by ':') adds override files.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$SCRIPT_DIR"

ENV_FILE=".env"
ENV_EXAMPLE=".env.example"
# Docker Compose's own variable, honoured by every compose call below: docker-compose.yml unless the
# caller names other files (e.g. an override: docker-compose.yml:my-override.yml).
export COMPOSE_FILE="${COMPOSE_FILE:-docker-compose.yml}"

REQUIRED_VARS=(POSTGRES_PASSWORD LITELLM_MASTER_KEY LITELLM_SALT_KEY UI_USERNAME UI_PASSWORD
  WEBHOOK_SECRET WEBHOOK_DB_PASSWORD REDIS_PASSWORD)
# Values that end up inside URLs (postgres://user:PASSWORD@..., redis://:PASSWORD@...).
URL_SAFE_VARS=(POSTGRES_PASSWORD WEBHOOK_DB_PASSWORD REDIS_PASSWORD)
PROVIDER_VARS=(OPENAI_API_KEY ANTHROPIC_API_KEY COHERE_API_KEY AZURE_API_KEY)
SERVICES=(postgres redis webhook-service litellm litellm-lb)
# With --monitoring (compose profile `monitoring`): also required, and also waited for.
MONITORING_VARS=(GRAFANA_ADMIN_PASSWORD)
MONITORING_SERVICES=(prometheus grafana)

CHECK_ONLY=0
GENERATE=0
SCALE=1
TIMEOUT=180
BUILD=1
MONITORING=0
GENERATED_SALT=0

# ---- output helpers ---------------------------------------------------------------------------------
if [[ -t 1 ]]; then
  C_RED=$'\033[31m' C_YEL=$'\033[33m' C_GRN=$'\033[32m' C_BLD=$'\033[1m' C_OFF=$'\033[0m'
else
  C_RED="" C_YEL="" C_GRN="" C_BLD="" C_OFF=""
fi
info() { printf '%s\n' "$*"; }
ok() { printf '%s✔%s %s\n' "$C_GRN" "$C_OFF" "$*"; }
warn() { printf '%sWARNING:%s %s\n' "$C_YEL" "$C_OFF" "$*" >&2; }
die() {
  printf '%sERROR:%s %s\n' "$C_RED" "$C_OFF" "$*" >&2
  exit 1
}

usage() {
  cat <<'EOF'
Usage: ./deploy.sh [options]

Options:
  --check              Preflight only: tools, Docker daemon, .env values, compose file. Starts nothing.
  --generate-secrets   Write strong random values for missing/placeholder secrets into .env
                       (creates .env from .env.example if needed). Existing values are kept.
  --scale N            Number of LiteLLM replicas behind the load balancer (default 1; running
                       again without --scale goes back to 1).
  --timeout SECONDS    How long to wait for all services to become healthy (default 180).
  --no-build           Do not rebuild the webhook-service image.
  --monitoring         Also run Prometheus and Grafana (compose profile `monitoring`; Grafana on
                       GRAFANA_PORT, default 3000, admin password GRAFANA_ADMIN_PASSWORD).
  -h, --help           This help.

Environment:
  COMPOSE_CMD          Compose command to use instead of auto-detection ("docker compose" or
                       "docker-compose").
  COMPOSE_FILE         Compose files, separated by ':' (default docker-compose.yml).
EOF
}

# ---- arguments ----------------------------------------------------------------------------------
while [[ $# -gt 0 ]]; do
  case "$1" in
    --check) CHECK_ONLY=1 ;;
    --generate-secrets) GENERATE=1 ;;
    --scale)
      [[ $# -ge 2 ]] || die "--scale needs a number, e.g. --scale 3"
      SCALE="$2"
      shift
      ;;
    --scale=*) SCALE="${1#*=}" ;;
    --timeout)
      [[ $# -ge 2 ]] || die "--timeout needs a number of seconds, e.g. --timeout 300"
      TIMEOUT="$2"
      shift
      ;;
    --timeout=*) TIMEOUT="${1#*=}" ;;
    --no-build) BUILD=0 ;;
    --monitoring) MONITORING=1 ;;
    -h | --help)
      usage
      exit 0
      ;;
    *)
      usage >&2
      die "unknown option: $1"
      ;;
  esac
  shift
done
[[ "$SCALE" =~ ^[1-9][0-9]*$ ]] || die "--scale must be a positive whole number (got '$SCALE')"
[[ "$TIMEOUT" =~ ^[1-9][0-9]*$ ]] || die "--timeout must be a positive number of seconds (got '$TIMEOUT')"
if [[ "$MONITORING" == 1 ]]; then
  REQUIRED_VARS+=("${MONITORING_VARS[@]}")
  SERVICES+=("${MONITORING_SERVICES[@]}")
fi

# ---- .env reading/writing (never `source`d: values are data, not shell code) -------------------------
# Prints the value of KEY as Docker Compose would read it from .env (last assignment wins;
# surrounding quotes removed; ` #comment` after an unquoted value removed).
env_file_value() {
  local key="$1" line value=""
  [[ -f "$ENV_FILE" ]] || return 0
  while IFS= read -r line || [[ -n "$line" ]]; do
    line="${line%$'\r'}"
    [[ "$line" =~ ^[[:space:]]*(export[[:space:]]+)?([A-Za-z_][A-Za-z0-9_]*)[[:space:]]*=(.*)$ ]] || continue
    [[ "${BASH_REMATCH[2]}" == "$key" ]] || continue
    value="${BASH_REMATCH[3]}"
    value="${value#"${value%%[![:space:]]*}"}"
    if [[ "$value" =~ ^\"(.*)\"[[:space:]]*(#.*)?$ ]] || [[ "$value" =~ ^\'(.*)\'[[:space:]]*(#.*)?$ ]]; then
      value="${BASH_REMATCH[1]}"
    else
      value="${value%%[[:space:]]#*}"
      value="${value%"${value##*[![:space:]]}"}"
    fi
  done <"$ENV_FILE"
  printf '%s' "$value"
}

# Value compose will use: the shell environment wins over .env (compose's own precedence).
effective_value() {
  local key="$1"
  if [[ -n "${!key+x}" ]]; then
    printf '%s' "${!key}"
  else
    env_file_value "$key"
  fi
}

# Replaces KEY=... in .env (first occurrence, later duplicates removed) or appends it.
set_env_value() {
  local key="$1" value="$2" tmp
  tmp="$(mktemp "${ENV_FILE}.XXXXXX")"
  KEY="$key" VALUE="$value" awk '
    BEGIN { k = ENVIRON["KEY"]; v = ENVIRON["VALUE"]; done = 0 }
    {
      line = $0
      sub(/\r$/, "", line)
      if (line ~ "^[[:space:]]*(export[[:space:]]+)?" k "[[:space:]]*=") {
        if (!done) { print k "=" v; done = 1 }
        next
      }
      print $0
    }
    END { if (!done) print k "=" v }
  ' "$ENV_FILE" >"$tmp"
  chmod 600 "$tmp"
  mv "$tmp" "$ENV_FILE"
}

is_placeholder() {
  local value
  value="$(printf '%s' "$1" | tr '[:upper:]' '[:lower:]')"
  [[ -z "$value" ]] && return 0
  [[ "$value" == *change-me* || "$value" == *changeme* ]] && return 0
  return 1
}

random_hex() {
  local bytes="$1"
  if command -v openssl >/dev/null 2>&1; then
    openssl rand -hex "$bytes"
  else
    od -An -N"$bytes" -tx1 /dev/urandom | tr -d ' \n'
  fi
}

generate_value() {
  case "$1" in
    LITELLM_MASTER_KEY) printf 'sk-%s' "$(random_hex 32)" ;;
    LITELLM_SALT_KEY) printf 'sk-salt-%s' "$(random_hex 32)" ;;
    UI_USERNAME) printf 'admin' ;;
    WEBHOOK_SECRET) random_hex 32 ;;
    *) random_hex 24 ;;
  esac
}

confirm() {
  local answer
  [[ -t 0 ]] || return 1
  read -r -p "$1 [y/N] " answer || return 1
  [[ "$answer" =~ ^[Yy]([Ee][Ss])?$ ]]
}

# ---- 1. tools and Docker daemon -----------------------------------------------------------------
COMPOSE=()
detect_compose() {
  if [[ -n "${COMPOSE_CMD:-}" ]]; then
    read -r -a COMPOSE <<<"$COMPOSE_CMD"
    "${COMPOSE[@]}" version >/dev/null 2>&1 ||
      die "COMPOSE_CMD='$COMPOSE_CMD' does not work ('$COMPOSE_CMD version' failed)"
  elif docker compose version >/dev/null 2>&1; then
    COMPOSE=(docker compose)
  elif command -v docker-compose >/dev/null 2>&1 && docker-compose version >/dev/null 2>&1; then
    COMPOSE=(docker-compose)
  else
    die "Docker Compose not found. Install the Compose v2 plugin ('docker compose', package docker-compose-plugin) or docker-compose v1."
  fi
}

check_tools() {
  command -v docker >/dev/null 2>&1 ||
    die "docker not found. Install Docker Engine (https://docs.docker.com/engine/install/) and run this again."
  detect_compose
  ok "compose command: ${COMPOSE[*]} ($("${COMPOSE[@]}" version 2>/dev/null | head -n 1))"
  # Every compose call below (config, up, ps, logs) then sees Prometheus and Grafana too.
  [[ "$MONITORING" == 1 ]] && COMPOSE+=(--profile monitoring)
  if ! docker info >/dev/null 2>&1; then
    die "the Docker daemon does not answer ('docker info' failed). Start it (sudo systemctl start docker) or add your user to the docker group (sudo usermod -aG docker \$USER, then log in again)."
  fi
  ok "Docker daemon answers"
  local file files
  IFS=: read -r -a files <<<"$COMPOSE_FILE"
  for file in "${files[@]}"; do
    [[ -f "$file" ]] || die "$file (COMPOSE_FILE) not found in $SCRIPT_DIR"
  done
}

# ---- 2. .env ------------------------------------------------------------------------------------
ensure_env_file() {
  if [[ -f "$ENV_FILE" ]]; then
    return 0
  fi
  [[ -f "$ENV_EXAMPLE" ]] || die "$ENV_FILE and $ENV_EXAMPLE are both missing in $SCRIPT_DIR"
  if [[ "$GENERATE" == 1 ]] || confirm "$ENV_FILE does not exist. Create it from $ENV_EXAMPLE now?"; then
    cp "$ENV_EXAMPLE" "$ENV_FILE"
    chmod 600 "$ENV_FILE"
    ok "created $ENV_FILE from $ENV_EXAMPLE"
  else
    die "$ENV_FILE not found. Copy the template and fill it in: cp $ENV_EXAMPLE $ENV_FILE (then edit it), or run ./deploy.sh --generate-secrets to create it with random secrets."
  fi
}

# Required variables whose value is missing or a placeholder.
missing_required() {
  local key
  for key in "${REQUIRED_VARS[@]}"; do
    if is_placeholder "$(effective_value "$key")"; then
      printf '%s\n' "$key"
    fi
  done
}

generate_secrets() {
  local -a missing=("$@")
  local key from_env=()
  for key in "${missing[@]}"; do
    [[ -n "${!key+x}" ]] && from_env+=("$key")
  done
  if [[ ${#from_env[@]} -gt 0 ]]; then
    die "these are set to a placeholder in your shell environment, which overrides .env: ${from_env[*]}. Unset them (unset ${from_env[*]}) and run again."
  fi
  for key in "${missing[@]}"; do
    set_env_value "$key" "$(generate_value "$key")"
    [[ "$key" == LITELLM_SALT_KEY ]] && GENERATED_SALT=1
  done
  ok "generated ${missing[*]} in $ENV_FILE"
  if [[ "$GENERATED_SALT" == 1 ]]; then
    warn "LITELLM_SALT_KEY was generated. It encrypts the provider credentials LiteLLM stores in the database: never change it once keys are stored (they become unreadable). Back up .env somewhere safe."
  fi
  for key in "${missing[@]}"; do
    if [[ "$key" == POSTGRES_PASSWORD || "$key" == WEBHOOK_DB_PASSWORD ]]; then
      warn "new database password(s) generated. They take effect only when the PostgreSQL volume is created; if this stack already ran with other passwords, put the old ones back in $ENV_FILE."
      break
    fi
  done
}

check_env() {
  ensure_env_file
  local -a missing=()
  local key value
  while IFS= read -r key; do
    missing+=("$key")
  done < <(missing_required)
  if [[ "$GENERATE" == 1 && "$MONITORING" == 0 ]]; then
    # Not required without --monitoring, but generated with the others so that turning monitoring
    # on later needs no second step.
    for key in "${MONITORING_VARS[@]}"; do
      is_placeholder "$(effective_value "$key")" && [[ -z "${!key+x}" ]] && missing+=("$key")
    done
  fi
  if [[ ${#missing[@]} -gt 0 ]]; then
    if [[ "$GENERATE" == 1 ]] || confirm "Missing or placeholder values in $ENV_FILE: ${missing[*]}. Generate strong random values for them now?"; then
      generate_secrets "${missing[@]}"
    else
      die "required values are missing or still placeholders in $ENV_FILE: ${missing[*]}. Edit $ENV_FILE and set them, or run ./deploy.sh --generate-secrets to fill them with random values."
    fi
  fi

  local errors=()
  value="$(effective_value LITELLM_MASTER_KEY)"
  if [[ "$value" != sk-* ]]; then
    errors+=("LITELLM_MASTER_KEY must start with 'sk-' (LiteLLM rejects other master keys). Set e.g. LITELLM_MASTER_KEY=sk-$(random_hex 16) in $ENV_FILE.")
  fi
  for key in "${URL_SAFE_VARS[@]}"; do
    value="$(effective_value "$key")"
    if [[ ! "$value" =~ ^[A-Za-z0-9._~-]+$ ]]; then
      errors+=("$key contains characters that break the database/Redis URLs; use only letters, digits, '.', '_', '~', '-'.")
    fi
  done
  for key in "${REQUIRED_VARS[@]}"; do
    value="$(effective_value "$key")"
    if [[ "$value" == *'$'* ]]; then
      errors+=("$key contains '\$', which Docker Compose interpolates; remove it or write '\$\$'.")
    fi
  done
  if [[ ${#errors[@]} -gt 0 ]]; then
    for value in "${errors[@]}"; do
      printf '%sERROR:%s %s\n' "$C_RED" "$C_OFF" "$value" >&2
    done
    exit 1
  fi
  local -a long_vars=(LITELLM_MASTER_KEY WEBHOOK_SECRET POSTGRES_PASSWORD WEBHOOK_DB_PASSWORD REDIS_PASSWORD UI_PASSWORD)
  [[ "$MONITORING" == 1 ]] && long_vars+=(GRAFANA_ADMIN_PASSWORD)
  for key in "${long_vars[@]}"; do
    value="$(effective_value "$key")"
    if [[ ${#value} -lt 16 ]]; then
      warn "$key is shorter than 16 characters; use a long random value (openssl rand -hex 24)."
    fi
  done
  ok "required values are set in $ENV_FILE"

  # Optional parts: warn, do not fail.
  local lago_url lago_key
  # The service reads LAGO_API_URL, and the specification's LAGO_WEBHOOK_URL when it is unset.
  lago_url="$(effective_value LAGO_API_URL)"
  [[ -n "$lago_url" ]] || lago_url="$(effective_value LAGO_WEBHOOK_URL)"
  lago_key="$(effective_value LAGO_API_KEY)"
  if [[ -z "$lago_url" || -z "$lago_key" ]]; then
    warn "LAGO_API_URL (or LAGO_WEBHOOK_URL) and/or LAGO_API_KEY is not set: usage is recorded in the ledger but NOT delivered to Lago until both are set in $ENV_FILE (then run ./deploy.sh again)."
  else
    if [[ ! "$lago_url" =~ ^https?:// ]]; then
      warn "LAGO_API_URL (or LAGO_WEBHOOK_URL) should be the Lago API base URL starting with http:// or https:// (got '$lago_url')."
    elif [[ "$lago_url" == */api/v1* ]]; then
      warn "LAGO_API_URL (or LAGO_WEBHOOK_URL) is the Lago API *base* URL (e.g. https://api.getlago.com); the service appends /api/v1/events/batch itself. Remove the /api/v1... part."
    fi
  fi
  local any_provider=0
  for key in "${PROVIDER_VARS[@]}"; do
    [[ -n "$(effective_value "$key")" ]] && any_provider=1
  done
  if [[ "$any_provider" == 0 ]]; then
    warn "no provider API key is set (OPENAI_API_KEY, ANTHROPIC_API_KEY, COHERE_API_KEY, AZURE_API_KEY): the proxy starts, but every model call will fail."
  fi
  if [[ -n "$(effective_value AZURE_API_KEY)" && -z "$(effective_value AZURE_API_BASE)" ]]; then
    warn "AZURE_API_KEY is set but AZURE_API_BASE is empty: the azure-gpt-4o model will fail."
  fi
  local perms
  perms="$(ls -ld -- "$ENV_FILE" 2>/dev/null || true)"
  if [[ "${perms:4:1}" == r || "${perms:7:1}" == r ]]; then
    warn "$ENV_FILE is readable by other users; restrict it: chmod 600 $ENV_FILE"
  fi
}

check_compose_file() {
  local out
  if ! out="$("${COMPOSE[@]}" config -q 2>&1)"; then
    printf '%s\n' "$out" >&2
    die "'${COMPOSE[*]} config' rejected $COMPOSE_FILE with this .env (see above). Fix the file or the variable it names."
  fi
  ok "$COMPOSE_FILE is valid"
}

# ---- 3. start and wait --------------------------------------------------------------------------
# One status word per container of SERVICE: healthy, starting, unhealthy, exited, ...
service_states() {
  local service="$1" id
  while IFS= read -r id; do
    [[ -n "$id" ]] || continue
    docker inspect -f '{{if .State.Health}}{{if eq .State.Status "running"}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}{{else}}{{.State.Status}}{{end}}' "$id" 2>/dev/null || echo missing
  done < <("${COMPOSE[@]}" ps -q "$service" 2>/dev/null)
}

wait_healthy() {
  local deadline=$((SECONDS + TIMEOUT)) start=$SECONDS line service states state healthy total all_ok
  local failing=() last_print=-100
  while true; do
    line=""
    all_ok=1
    failing=()
    for service in "${SERVICES[@]}"; do
      states="$(service_states "$service")"
      total=0
      healthy=0
      for state in $states; do
        total=$((total + 1))
        [[ "$state" == healthy ]] && healthy=$((healthy + 1))
      done
      if [[ $total -eq 0 ]]; then
        line+=" $service:none"
        all_ok=0
        failing+=("$service")
      elif [[ $healthy -eq $total ]]; then
        line+=" $service:ok"
      else
        line+=" $service:$healthy/$total"
        all_ok=0
        failing+=("$service")
      fi
    done
    if [[ -t 1 ]]; then
      printf '\r\033[KWaiting for health (%ss/%ss):%s' "$((SECONDS - start))" "$TIMEOUT" "$line"
    elif ((SECONDS - last_print >= 10)); then
      printf 'Waiting for health (%ss/%ss):%s\n' "$((SECONDS - start))" "$TIMEOUT" "$line"
      last_print=$SECONDS
    fi
    if [[ $all_ok == 1 ]]; then
      [[ -t 1 ]] && printf '\n'
      ok "all services healthy:$line"
      return 0
    fi
    if ((SECONDS >= deadline)); then
      [[ -t 1 ]] && printf '\n'
      printf '%sERROR:%s not healthy after %ss: %s\n' "$C_RED" "$C_OFF" "$TIMEOUT" "${failing[*]}" >&2
      for service in "${failing[@]}"; do
        printf '\n%s---- last logs of %s ----%s\n' "$C_BLD" "$service" "$C_OFF" >&2
        "${COMPOSE[@]}" logs --no-color --tail 40 "$service" >&2 || true
      done
      printf '\nFix the cause shown above, then run ./deploy.sh again (or wait longer: --timeout 600).\n' >&2
      printf 'Status: %s ps    Logs: %s logs -f <service>\n' "${COMPOSE[*]}" "${COMPOSE[*]}" >&2
      exit 1
    fi
    sleep 3
  done
}

start_stack() {
  local -a up=(up -d --remove-orphans)
  [[ "$BUILD" == 1 ]] && up+=(--build)
  local running
  running="$("${COMPOSE[@]}" ps -q litellm 2>/dev/null | grep -c . || true)"
  if [[ "$SCALE" -gt 1 && "$running" -eq 0 ]]; then
    # First start: one replica first, so LiteLLM's database migrations run once, then the others.
    info "Starting the stack with one LiteLLM replica (migrations), then scaling to $SCALE ..."
    "${COMPOSE[@]}" "${up[@]}" --scale litellm=1 || die "'${COMPOSE[*]} ${up[*]}' failed (see above)."
    wait_healthy
    "${COMPOSE[@]}" up -d --scale "litellm=$SCALE" || die "scaling LiteLLM to $SCALE replicas failed (see above)."
  else
    info "Starting the stack ($SCALE LiteLLM replica(s)) ..."
    "${COMPOSE[@]}" "${up[@]}" --scale "litellm=$SCALE" || die "'${COMPOSE[*]} ${up[*]}' failed (see above)."
  fi
  wait_healthy
}

print_summary() {
  local lb_port webhook_port
  lb_port="$(effective_value LB_PORT)"
  webhook_port="$(effective_value WEBHOOK_PORT)"
  lb_port="${lb_port:-4000}" webhook_port="${webhook_port:-3001}"
  cat <<EOF

${C_BLD}LiteLLM + Lago billing is up.${C_OFF} ($SCALE LiteLLM replica(s))

  LiteLLM API       http://localhost:$lb_port            (OpenAI-compatible, Bearer key)
  LiteLLM admin UI  http://localhost:$lb_port/ui         (UI_USERNAME / UI_PASSWORD from .env)
  LiteLLM health    http://localhost:$lb_port/health/liveliness   (/health calls every model; needs the master key)
  Webhook service   http://localhost:$webhook_port
  Webhook health    http://localhost:$webhook_port/health   /health/ready   /health/live
  Webhook metrics   http://localhost:$webhook_port/health/metrics   (Prometheus)
EOF
  if [[ "$MONITORING" == 1 ]]; then
    local grafana_port
    grafana_port="$(effective_value GRAFANA_PORT)"
    cat <<EOF
  Grafana           http://localhost:${grafana_port:-3000}            (GRAFANA_ADMIN_USER / GRAFANA_ADMIN_PASSWORD in .env; dashboard "LiteLLM + Lago billing")
  Prometheus        not published: ${COMPOSE[*]} exec prometheus wget -qO- http://127.0.0.1:9090/api/v1/alerts
EOF
  fi
  cat <<EOF

Next steps:
  1. Create a key for a customer (master key = LITELLM_MASTER_KEY in .env):
       curl -X POST http://localhost:$lb_port/key/generate \\
         -H "Authorization: Bearer \$LITELLM_MASTER_KEY" -H "Content-Type: application/json" \\
         -d '{"models": ["gpt-4o"], "max_budget": 100, "user_id": "customer-123"}'
  2. Lago: set LAGO_API_URL (or LAGO_WEBHOOK_URL; the API base URL) and LAGO_API_KEY in .env and run ./deploy.sh
     again; create the billable metric and plans in Lago; then check the connection:
       curl -H "Authorization: Bearer \$WEBHOOK_SECRET" http://localhost:$webhook_port/webhooks/validate
     Service CLI (migrate, reprocess, stats, ...):
       ${COMPOSE[*]} exec webhook-service node dist/cli.js --help
  3. Back up the database regularly: scripts/backup.sh   (and keep a copy of .env: the salt key!)

Logs: ${COMPOSE[*]} logs -f litellm webhook-service     Status: ${COMPOSE[*]} ps
EOF
}

main() {
  info "${C_BLD}Preflight${C_OFF}"
  check_tools
  check_env
  check_compose_file
  if [[ "$CHECK_ONLY" == 1 ]]; then
    ok "preflight passed (--check: nothing started)"
    return 0
  fi
  start_stack
  print_summary
}

main
