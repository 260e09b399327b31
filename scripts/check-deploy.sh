#!/usr/bin/env bash
# Static validation of the deployment files; needs no Docker engine. Used by test/deploy and CI.
#
#   scripts/check-deploy.sh
#
# 1. docker-compose.yml passes `docker-compose config -q` (or `docker compose config -q`) with an
#    env file made from .env.example (placeholders replaced), and every variable the compose file
#    needs is in .env.example (no "variable is not set" warning).
# 2. shellcheck passes on every *.sh at the repository root, in scripts/ and in deploy/.
#    The same with the `monitoring` profile enabled (Prometheus and Grafana).
# 3. deploy/nginx/nginx.conf passes `nginx -t` when an nginx binary is installed.
# 4. Structural rules of docker-compose.yml: no container_name; postgres and redis publish no
#    ports; every service has a health check, `restart: unless-stopped` and `init: true`; every
#    image (and the Dockerfile's base images) is pinned to an exact version: no latest,
#    main-latest, main-stable, lts, no variable, and no known-compromised LiteLLM release.
# 5. deploy/prometheus/: `promtool check config` (prometheus.yml and its rule files), `promtool check
#    rules` and `promtool test rules` (alerts.test.yml) when promtool is installed; every Grafana
#    provisioning file and dashboard JSON parses (test/deploy/monitoring.test.ts checks their queries).
# Tools that are not installed are skipped with a message; any failure makes the exit status 1.
set -euo pipefail

ROOT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT_DIR"

COMPOSE_FILE="docker-compose.yml"
FAILURES=0
TMP_DIR="$(mktemp -d)"
trap 'rm -rf "$TMP_DIR"' EXIT

fail() {
  printf 'FAIL  %s\n' "$*" >&2
  FAILURES=$((FAILURES + 1))
}
pass() { printf 'ok    %s\n' "$*"; }
skip() { printf 'skip  %s\n' "$*"; }

# ---- 0. files ---------------------------------------------------------------------------------------
for f in "$COMPOSE_FILE" .env.example Dockerfile .dockerignore config.yaml deploy.sh \
  deploy/nginx/nginx.conf deploy/postgres/init.sh scripts/backup.sh scripts/restore.sh \
  deploy/prometheus/prometheus.yml deploy/prometheus/rules.yml deploy/prometheus/alerts.yml \
  deploy/prometheus/alerts.test.yml deploy/grafana/dashboards/lago-billing.json; do
  [[ -f "$f" ]] || fail "missing file: $f"
done
[[ -f "$COMPOSE_FILE" ]] || {
  printf '%s failure(s)\n' "$FAILURES" >&2
  exit 1
}

# ---- 1. compose config ------------------------------------------------------------------------------
env_file="$TMP_DIR/env"
sed -e 's/^LITELLM_MASTER_KEY=.*/LITELLM_MASTER_KEY=sk-check-deploy-0123456789abcdef/' \
  -e 's/change-me/check-deploy-0123456789abcdef/g' .env.example >"$env_file"

compose_cmd=()
if command -v docker-compose >/dev/null 2>&1; then
  compose_cmd=(docker-compose)
elif command -v docker >/dev/null 2>&1 && docker compose version >/dev/null 2>&1; then
  compose_cmd=(docker compose)
fi
if [[ ${#compose_cmd[@]} -eq 0 ]]; then
  skip "compose config: neither docker-compose nor the docker compose plugin is installed (apt-get install docker-compose)"
else
  # A clean environment, so only the env file provides variables (a variable missing from
  # .env.example must show up as a warning here).
  if out="$(env -i PATH="$PATH" HOME="$TMP_DIR" "${compose_cmd[@]}" --env-file "$env_file" -f "$COMPOSE_FILE" config -q 2>&1)"; then
    if grep -qi 'is not set' <<<"$out"; then
      fail "compose config: variables used by $COMPOSE_FILE are missing from .env.example:"
      grep -i 'is not set' <<<"$out" >&2
    else
      pass "compose config -q (${compose_cmd[*]}) with .env.example"
    fi
  else
    fail "compose config (${compose_cmd[*]}) rejected $COMPOSE_FILE:"
    printf '%s\n' "$out" >&2
  fi
  if out="$(env -i PATH="$PATH" HOME="$TMP_DIR" "${compose_cmd[@]}" --env-file "$env_file" -f "$COMPOSE_FILE" --profile monitoring config -q 2>&1)"; then
    if grep -qi 'is not set' <<<"$out"; then
      fail "compose config --profile monitoring: variables missing from .env.example:"
      grep -i 'is not set' <<<"$out" >&2
    else
      pass "compose config -q --profile monitoring (${compose_cmd[*]}) with .env.example"
    fi
  else
    fail "compose config --profile monitoring (${compose_cmd[*]}) rejected $COMPOSE_FILE:"
    printf '%s\n' "$out" >&2
  fi
fi

# ---- 2. shellcheck ----------------------------------------------------------------------------------
scripts=()
while IFS= read -r f; do
  scripts+=("$f")
done < <(
  {
    find . -maxdepth 1 -type f -name '*.sh'
    [[ -d scripts ]] && find scripts -type f -name '*.sh'
    [[ -d deploy ]] && find deploy -type f -name '*.sh'
  } | sed 's|^\./||' | sort
)
# The deployment scripts are held to every shellcheck level (style and info included); other
# scripts of the repository to warnings and errors.
strict_scripts=(deploy.sh scripts/backup.sh scripts/restore.sh scripts/check-deploy.sh deploy/postgres/init.sh)
other_scripts=()
for f in "${scripts[@]}"; do
  printf '%s\n' "${strict_scripts[@]}" | grep -qxF "$f" || other_scripts+=("$f")
done
if ! command -v shellcheck >/dev/null 2>&1; then
  skip "shellcheck: not installed (apt-get install shellcheck)"
else
  if shellcheck --severity=style "${strict_scripts[@]}" >&2; then
    pass "shellcheck (all levels): ${strict_scripts[*]}"
  else
    fail "shellcheck reported problems in the deployment scripts (above)"
  fi
  if [[ ${#other_scripts[@]} -eq 0 ]]; then
    :
  elif shellcheck --severity=warning "${other_scripts[@]}" >&2; then
    pass "shellcheck (warnings and errors): ${other_scripts[*]}"
  else
    fail "shellcheck reported warnings or errors (above)"
  fi
fi

# ---- 3. nginx -t --------------------------------------------------------------------------------------
if command -v nginx >/dev/null 2>&1; then
  nginx_version="$(nginx -v 2>&1 | sed -n 's|.*nginx/\([0-9.]*\).*|\1|p')"
  conf="$TMP_DIR/nginx.conf"
  # The `litellm` name only resolves on the compose network: test against 127.0.0.1 instead.
  sed -e 's/server litellm:4000/server 127.0.0.1:4000/' deploy/nginx/nginx.conf >"$conf"
  note=""
  if [[ "$(printf '%s\n1.27.3\n' "$nginx_version" | sort -V | head -n 1)" != 1.27.3 ]]; then
    # `server ... resolve` in an upstream needs nginx >= 1.27.3 (the image has 1.30.x).
    sed -i -e 's/ resolve / /' "$conf"
    note=" (local nginx $nginx_version < 1.27.3: checked without the upstream 'resolve' parameter)"
  fi
  mkdir -p "$TMP_DIR/nginx-prefix/logs"
  if out="$(nginx -t -q -p "$TMP_DIR/nginx-prefix" -e /dev/stderr -c "$conf" -g "pid $TMP_DIR/nginx.pid;" 2>&1)"; then
    pass "nginx -t deploy/nginx/nginx.conf$note"
  else
    fail "nginx -t rejected deploy/nginx/nginx.conf$note:"
    printf '%s\n' "$out" >&2
  fi
else
  skip "nginx -t: nginx is not installed (optional)"
fi

# ---- 4. structural rules ------------------------------------------------------------------------------
if grep -nE '^[^#]*container_name:' "$COMPOSE_FILE" >&2; then
  fail "container_name is set (it prevents --scale); remove it"
else
  pass "no container_name"
fi

# Service-level keys of docker-compose.yml as "service<TAB>key<TAB>value" (2-space indentation).
service_keys="$(awk '
  /^services:[[:space:]]*$/ { in_services = 1; next }
  /^[^[:space:]#]/ { in_services = 0; service = "" }
  in_services && /^  [A-Za-z0-9._-]+:[[:space:]]*$/ {
    service = $1; sub(/:$/, "", service); print service "\t__service__\t"; next
  }
  in_services && service != "" && /^    [A-Za-z_]+:/ {
    key = $1; sub(/:.*/, "", key)
    value = $0; sub(/^    [A-Za-z_]+:[[:space:]]*/, "", value); sub(/[[:space:]]+#.*$/, "", value)
    print service "\t" key "\t" value
  }
' "$COMPOSE_FILE")"

services=()
while IFS=$'\t' read -r service key _; do
  [[ "$key" == __service__ ]] && services+=("$service")
done <<<"$service_keys"
[[ ${#services[@]} -gt 0 ]] || fail "no services found in $COMPOSE_FILE"

has_key() { awk -F'\t' -v s="$1" -v k="$2" '$1 == s && $2 == k { found = 1 } END { exit !found }' <<<"$service_keys"; }
key_value() { awk -F'\t' -v s="$1" -v k="$2" '$1 == s && $2 == k { print $3; exit }' <<<"$service_keys"; }

for service in postgres redis litellm litellm-lb webhook-service; do
  printf '%s\n' "${services[@]}" | grep -qx "$service" || fail "service '$service' is missing"
done

# Exact version: a tag with at least major.minor, no rolling name, no variable.
check_image() {
  local where="$1" image="$2" ref tag
  image="${image%\"}"
  image="${image#\"}"
  image="${image%\'}"
  image="${image#\'}"
  if [[ "$image" == *'$'* ]]; then
    fail "$where: image '$image' uses a variable; pin an exact version"
    return
  fi
  ref="${image%%@*}"
  tag=""
  [[ "${ref##*/}" == *:* ]] && tag="${ref##*:}"
  if [[ -z "$tag" ]]; then
    fail "$where: image '$image' has no tag (means latest); pin an exact version"
  elif [[ "$tag" =~ (^|[-_.])(latest|stable|lts|nightly|edge)$ ]] || [[ "$tag" =~ ^(main|main-latest|main-stable)$ ]]; then
    fail "$where: image '$image' uses the rolling tag '$tag'; pin an exact version"
  elif [[ ! "$tag" =~ [0-9]+\.[0-9]+ ]]; then
    fail "$where: image '$image' tag '$tag' is not an exact version"
  elif [[ "$image" == *litellm* ]] && [[ "$tag" =~ (^|[^0-9.])(1\.82\.7|1\.82\.8|1\.107\.0)([^0-9.]|$) ]]; then
    fail "$where: image '$image' is a known-compromised LiteLLM release; use 1.106.12"
  else
    pass "$where: image $image pinned"
  fi
}

for service in "${services[@]}"; do
  if has_key "$service" healthcheck; then
    pass "$service: healthcheck"
  else
    fail "$service: no healthcheck"
  fi
  if [[ "$(key_value "$service" restart)" == unless-stopped ]]; then
    pass "$service: restart unless-stopped"
  else
    fail "$service: restart is not 'unless-stopped'"
  fi
  if [[ "$(key_value "$service" init)" == true ]]; then
    pass "$service: init true"
  else
    fail "$service: init is not true"
  fi
  if has_key "$service" container_name; then
    fail "$service: container_name set"
  fi
  case "$service" in
    postgres | redis | litellm | prometheus)
      if has_key "$service" ports; then
        fail "$service: publishes ports; it must only be reachable on the compose network"
      else
        pass "$service: no published ports"
      fi
      ;;
  esac
  if has_key "$service" image; then
    check_image "$service" "$(key_value "$service" image)"
  elif ! has_key "$service" build; then
    fail "$service: neither image nor build"
  fi
done

# Base images of the Dockerfile (FROM <image>, FROM ${ARG} with the ARG's default, stage names skipped).
if [[ -f Dockerfile ]]; then
  declare -A arg_default=() stages=()
  while read -r instr rest; do
    case "${instr^^}" in
      ARG)
        if [[ "$rest" == *=* ]]; then
          arg_default["${rest%%=*}"]="${rest#*=}"
        fi
        ;;
      FROM)
        read -r -a words <<<"$rest"
        image=""
        for w in "${words[@]}"; do
          [[ "$w" == --* ]] && continue
          image="$w"
          break
        done
        if [[ ${#words[@]} -ge 3 && "${words[-2]^^}" == AS ]]; then
          stages["${words[-1]}"]=1
        fi
        if [[ "$image" =~ ^\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?$ ]]; then
          image="${arg_default[${BASH_REMATCH[1]}]:-}"
          [[ -n "$image" ]] || fail "Dockerfile: FROM $rest uses an ARG without a pinned default"
        fi
        if [[ -n "$image" && -z "${stages[$image]:-}" ]]; then
          check_image "Dockerfile FROM" "$image"
        fi
        ;;
    esac
  done < <(grep -E '^[[:space:]]*(ARG|FROM)[[:space:]]' Dockerfile)
fi

# ---- 5. Prometheus rules and Grafana files -------------------------------------------------------------
if command -v promtool >/dev/null 2>&1; then
  if out="$(promtool check config deploy/prometheus/prometheus.yml 2>&1)"; then
    pass "promtool check config deploy/prometheus/prometheus.yml (and its rule files)"
  else
    fail "promtool check config rejected deploy/prometheus/prometheus.yml:"
    printf '%s\n' "$out" >&2
  fi
  if out="$(promtool check rules deploy/prometheus/rules.yml deploy/prometheus/alerts.yml 2>&1)"; then
    pass "promtool check rules deploy/prometheus/{rules,alerts}.yml"
  else
    fail "promtool check rules:"
    printf '%s\n' "$out" >&2
  fi
  if out="$(promtool test rules deploy/prometheus/alerts.test.yml 2>&1)"; then
    pass "promtool test rules deploy/prometheus/alerts.test.yml"
  else
    fail "promtool test rules deploy/prometheus/alerts.test.yml:"
    printf '%s\n' "$out" >&2
  fi
else
  skip "promtool: not installed (apt-get install prometheus)"
fi
command -v node >/dev/null 2>&1 || skip "Grafana JSON: node is not installed"
command -v node >/dev/null 2>&1 && while IFS= read -r f; do
  if node -e 'JSON.parse(require("node:fs").readFileSync(process.argv[1], "utf8"))' "$f" 2>/dev/null; then
    pass "$f parses"
  else
    fail "$f is not valid JSON"
  fi
done < <(find deploy/grafana -type f -name '*.json' | sort)

echo
if [[ "$FAILURES" -gt 0 ]]; then
  printf 'check-deploy: %s failure(s)\n' "$FAILURES" >&2
  exit 1
fi
echo "check-deploy: all checks passed"
