#!/usr/bin/env bash
# Backs up the `litellm` database (LiteLLM's tables and the webhook service's ledger/outbox, which
# live in the same database) as a gzip-compressed SQL dump:
#   backups/litellm-<UTC timestamp>.sql.gz
#
#   scripts/backup.sh                      dump through the compose `postgres` service
#   scripts/backup.sh --out /srv/backups   write elsewhere
#   scripts/backup.sh --native             dump $DATABASE_URL with the local pg_dump (no Docker)
#
# Restore with scripts/restore.sh. The dump contains DROP ... IF EXISTS statements (--clean), so it
# can be restored over an existing database. Roles (litellm, webhook) are not in it: they come
# from the PostgreSQL container's initialisation (deploy/postgres/init.sh).
# The file holds hashed keys and encrypted credentials: it is written with mode 600.
# Keep .env (LITELLM_SALT_KEY) with your backups: without the salt key, stored credentials are lost.
#
# Environment: COMPOSE_CMD overrides the compose command (default: docker compose, else docker-compose).
set -euo pipefail

ROOT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODE=compose
OUT_DIR=""

die() {
  printf 'backup: ERROR: %s\n' "$*" >&2
  exit 1
}

usage() {
  cat <<'EOF'
Usage: scripts/backup.sh [--native] [--out DIR]

  --out DIR   directory for the dump (default: backups/ at the repository root)
  --native    use DATABASE_URL and the local pg_dump instead of the compose postgres service
EOF
}

while [[ $# -gt 0 ]]; do
  case "$1" in
    --native) MODE=native ;;
    --out)
      [[ $# -ge 2 ]] || die "--out needs a directory"
      OUT_DIR="$2"
      shift
      ;;
    --out=*) OUT_DIR="${1#*=}" ;;
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

OUT_DIR="${OUT_DIR:-$ROOT_DIR/backups}"
mkdir -p "$OUT_DIR"
# Keep dumps out of git when they are written inside the repository.
[[ -e "$OUT_DIR/.gitignore" ]] || printf '*\n' >"$OUT_DIR/.gitignore"

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

# pg_dump options: plain SQL; DROP ... IF EXISTS before each CREATE so a restore replaces objects.
DUMP_OPTS=(--clean --if-exists --no-password)

run_dump() {
  if [[ "$MODE" == native ]]; then
    [[ -n "${DATABASE_URL:-}" ]] || die "--native needs DATABASE_URL (e.g. postgres://litellm:...@127.0.0.1:5432/litellm)"
    command -v pg_dump >/dev/null 2>&1 || die "pg_dump not found; install the PostgreSQL client (apt-get install postgresql-client)"
    pg_dump "${DUMP_OPTS[@]}" --dbname="$DATABASE_URL"
  else
    detect_compose
    (cd "$ROOT_DIR" && "${COMPOSE[@]}" exec -T postgres pg_dump -U litellm "${DUMP_OPTS[@]}" litellm)
  fi
}

stamp="$(date -u +%Y%m%dT%H%M%SZ)"
final="$OUT_DIR/litellm-$stamp.sql.gz"
tmp="$(mktemp "$OUT_DIR/.litellm-$stamp.XXXXXX")"
trap 'rm -f "$tmp"' EXIT
chmod 600 "$tmp"

# Written to a temporary file and renamed only when pg_dump and gzip both succeeded, so a failed
# run never leaves a truncated file that looks like a backup.
if ! run_dump | gzip -9 >"$tmp"; then
  die "pg_dump failed (see above); no backup written"
fi
gzip -t "$tmp" || die "the compressed dump does not verify; no backup written"
mv "$tmp" "$final"
trap - EXIT

size="$(wc -c <"$final" | tr -d ' ')"
printf 'backup: wrote %s (%s bytes)\n' "$final" "$size" >&2
# The path alone on stdout, for scripts: file="$(scripts/backup.sh)"
printf '%s\n' "$final"
