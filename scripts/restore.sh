#!/usr/bin/env bash
# Restores a dump made by scripts/backup.sh into the `litellm` database.
#
#   scripts/restore.sh backups/litellm-20260101T000000Z.sql.gz           asks for confirmation
#   scripts/restore.sh --yes backups/litellm-20260101T000000Z.sql.gz     no question
#   scripts/restore.sh --native --yes FILE                               into $DATABASE_URL, local psql
#
# Compose mode stops `litellm` and `webhook-service` (all replicas) during the restore, so nothing
# writes while the tables are replaced, and starts them again afterwards, also when the restore
# fails. The restore runs in a single transaction with ON_ERROR_STOP: it applies completely or
# not at all. Native mode does not stop anything: stop the writers yourself.
#
# The dump replaces the objects it contains (DROP ... IF EXISTS, then CREATE); rows written after
# the backup are lost. Usage already delivered to Lago after the backup is not lost for billing
# (Lago has it), but the ledger forgets it; take a fresh backup before restoring an older one.
#
# Environment: COMPOSE_CMD overrides the compose command (default: docker compose, else docker-compose).
set -euo pipefail

ROOT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODE=compose
ASSUME_YES=0
FILE=""
STOPPED=0

die() {
  printf 'restore: ERROR: %s\n' "$*" >&2
  exit 1
}

usage() {
  cat <<'EOF'
Usage: scripts/restore.sh [--yes] [--native] FILE

  FILE        a dump from scripts/backup.sh (.sql.gz, or plain .sql)
  --yes, -y   do not ask for confirmation
  --native    restore into DATABASE_URL with the local psql instead of the compose postgres service
EOF
}

while [[ $# -gt 0 ]]; do
  case "$1" in
    --native) MODE=native ;;
    --yes | -y) ASSUME_YES=1 ;;
    -h | --help)
      usage
      exit 0
      ;;
    -*)
      usage >&2
      die "unknown option: $1"
      ;;
    *)
      [[ -z "$FILE" ]] || die "only one dump file can be restored at a time"
      FILE="$1"
      ;;
  esac
  shift
done

[[ -n "$FILE" ]] || {
  usage >&2
  die "no dump file given"
}
[[ -f "$FILE" ]] || die "file not found: $FILE"
case "$FILE" in
  *.gz) gzip -t "$FILE" || die "$FILE is not a valid gzip file (truncated backup?)" ;;
esac

COMPOSE=()
detect_compose() {
  if [[ -n "${COMPOSE_CMD:-}" ]]; then
    read -r -a COMPOSE <<<"$COMPOSE_CMD"
  elif docker compose version >/dev/null 2>&1; then
    COMPOSE=(docker compose)
  elif command -v docker-compose >/dev/null 2>&1; then
    COMPOSE=(docker-compose)
  else
    die "Docker Compose not found (or use --native with DATABASE_URL)"
  fi
}

if [[ "$MODE" == native ]]; then
  [[ -n "${DATABASE_URL:-}" ]] || die "--native needs DATABASE_URL (e.g. postgres://litellm:...@127.0.0.1:5432/litellm)"
  command -v psql >/dev/null 2>&1 || die "psql not found; install the PostgreSQL client (apt-get install postgresql-client)"
  target="the database in DATABASE_URL"
else
  detect_compose
  target="database litellm of the compose stack (litellm and webhook-service are stopped meanwhile)"
fi

if [[ "$ASSUME_YES" != 1 ]]; then
  [[ -t 0 ]] || die "refusing to restore without confirmation; run again with --yes"
  printf 'This REPLACES the contents of %s with %s.\n' "$target" "$FILE"
  read -r -p "Type 'restore' to continue: " answer || answer=""
  [[ "$answer" == restore ]] || die "aborted; nothing changed"
fi

decompress() {
  case "$FILE" in
    *.gz) gzip -dc "$FILE" ;;
    *) cat "$FILE" ;;
  esac
}

PSQL_OPTS=(-v ON_ERROR_STOP=1 --single-transaction --quiet --no-psqlrc --no-password)

restart_services() {
  if [[ "$STOPPED" == 1 ]]; then
    printf 'restore: starting litellm and webhook-service again\n' >&2
    (cd "$ROOT_DIR" && "${COMPOSE[@]}" start webhook-service litellm) ||
      printf 'restore: WARNING: could not start the services; run: %s up -d\n' "${COMPOSE[*]}" >&2
  fi
}

if [[ "$MODE" == native ]]; then
  if ! decompress | psql "${PSQL_OPTS[@]}" --dbname="$DATABASE_URL" >/dev/null; then
    die "restore failed (see above); the transaction was rolled back, the database is unchanged"
  fi
else
  trap restart_services EXIT
  printf 'restore: stopping litellm and webhook-service\n' >&2
  (cd "$ROOT_DIR" && "${COMPOSE[@]}" stop litellm webhook-service) || die "could not stop the services"
  STOPPED=1
  if ! decompress | (cd "$ROOT_DIR" && "${COMPOSE[@]}" exec -T postgres psql -U litellm -d litellm "${PSQL_OPTS[@]}" >/dev/null); then
    die "restore failed (see above); the transaction was rolled back, the database is unchanged"
  fi
fi

printf 'restore: restored %s\n' "$FILE"
