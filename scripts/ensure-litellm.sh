#!/usr/bin/env bash
# Make sure .venv/litellm holds exactly the LiteLLM proxy pinned in proxy/requirements.txt.
#
# Idempotent and cheap when nothing changed: a stamp (sha256 of the requirement files plus the
# interpreter version) and the installed distribution version are compared, and pip only runs when
# either differs. A fresh install takes about 45-55 s; the no-op path well under a second.
#
# Env overrides: PYTHON (interpreter used to create the venv, default python3),
#                LITELLM_VENV (venv location, default <repo>/.venv/litellm).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
VENV="${LITELLM_VENV:-$ROOT/.venv/litellm}"
REQ_TXT="$ROOT/proxy/requirements.txt"
REQ_LOCK="$ROOT/proxy/requirements.lock"
PIP_LOCK="$ROOT/proxy/pip.lock"
STAMP="$VENV/.requirements.sha256"
PIP_LOG="$VENV/pip-install.log"

# PyPI releases that shipped malware (see shared reference notes). Refuse them even if someone
# edits the pin, and wipe any venv that already has one: uninstalling is not enough, since the
# 1.82.8 payload ran from a .pth file on every interpreter start.
KNOWN_BAD_VERSIONS=(1.82.7 1.82.8 1.107.0)

say() { printf '[ensure-litellm] %s\n' "$*"; }
die() { printf '[ensure-litellm] ERROR: %s\n' "$*" >&2; exit 1; }

is_known_bad() {
  local v="$1" bad
  for bad in "${KNOWN_BAD_VERSIONS[@]}"; do
    [[ "$v" == "$bad" ]] && return 0
  done
  return 1
}

[[ -f "$REQ_TXT" ]] || die "missing $REQ_TXT"

# The single source of truth for the version is the exact pin in requirements.txt.
PIN="$(sed -nE 's/^[[:space:]]*litellm(\[[^]]*\])?[[:space:]]*==[[:space:]]*([^[:space:];#]+).*/\2/p' "$REQ_TXT" | head -n1)"
[[ -n "$PIN" ]] || die "no exact 'litellm[...]==X.Y.Z' pin found in $REQ_TXT"
is_known_bad "$PIN" && die "litellm $PIN is a known-compromised release; pin another version"

# Prefer the hashed lock; it must agree with the top-level pin, or we would silently install
# something other than what requirements.txt claims.
if [[ -f "$REQ_LOCK" ]]; then
  grep -qE "^litellm==${PIN//./\\.}([[:space:]]|$)" "$REQ_LOCK" \
    || die "$REQ_LOCK does not pin litellm==$PIN; regenerate it (command in its header)"
  REQ_INSTALL=(--require-hashes -r "$REQ_LOCK")
  REQ_FILES=("$REQ_TXT" "$PIP_LOCK" "$REQ_LOCK")
else
  REQ_INSTALL=(-r "$REQ_TXT")
  REQ_FILES=("$REQ_TXT")
fi

# Serialise concurrent runs (stack.sh and a test run starting together would otherwise both pip
# into the same venv). The lock lives beside the venv so that wiping the venv does not drop it.
mkdir -p "$(dirname "$VENV")"
exec 9>"$VENV.lock"
flock 9

venv_python_ok() { [[ -x "$VENV/bin/python" ]] && "$VENV/bin/python" -c 'pass' 2>/dev/null; }

# Reading dist metadata is ~0.1 s; `import litellm` alone is ~2-3 s and `litellm --version` ~8 s,
# which is why those are only run right after an install.
installed_version() {
  "$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("litellm"))' 2>/dev/null || true
}

# A venv whose base interpreter vanished (pyenv upgrade, distro change) cannot be repaired in place.
if [[ -d "$VENV" ]] && ! venv_python_ok; then
  say "venv at $VENV is broken (interpreter gone?); recreating"
  rm -rf "$VENV"
fi

if [[ -d "$VENV" ]]; then
  current="$(installed_version)"
  if [[ -n "$current" ]] && is_known_bad "$current"; then
    say "WARNING: venv holds compromised litellm $current; deleting the whole venv"
    rm -rf "$VENV"
  fi
fi

if [[ ! -d "$VENV" ]]; then
  command -v "$PYTHON" >/dev/null || die "$PYTHON not found (set PYTHON=...)"
  "$PYTHON" -c 'import sys; sys.exit(0 if (3, 10) <= sys.version_info[:2] < (3, 15) else 1)' \
    || die "litellm $PIN needs Python >=3.10,<3.15; $("$PYTHON" -V 2>&1) found (set PYTHON=...)"
  say "creating venv $VENV with $("$PYTHON" -V 2>&1)"
  "$PYTHON" -m venv "$VENV"
fi

# The interpreter version is part of the stamp: the same lock on another minor version resolves
# to other wheels, so it must be reinstalled.
py_version="$("$VENV/bin/python" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])')"
want_stamp="$({ sha256sum "${REQ_FILES[@]}" | cut -d' ' -f1; echo "python=$py_version"; } | sha256sum | cut -d' ' -f1)"
have_stamp="$(cat "$STAMP" 2>/dev/null || true)"
current="$(installed_version)"

if [[ "$have_stamp" == "$want_stamp" && "$current" == "$PIN" ]]; then
  say "litellm $PIN already installed in $VENV (up to date)"
  exit 0
fi

say "installing litellm $PIN into $VENV (was: ${current:-none}; from $(basename "${REQ_FILES[-1]}")); log: $PIP_LOG"
rm -f "$STAMP"
start=$SECONDS
# A pinned, hash-checked pip first (see proxy/pip.lock for why the bundled one is not enough).
if [[ -f "$PIP_LOCK" ]] && ! "$VENV/bin/python" -m pip install --disable-pip-version-check --no-input \
  --quiet --require-hashes -r "$PIP_LOCK" >"$PIP_LOG" 2>&1; then
  grep -v 'is ignored: it is neither a file nor a directory' "$PIP_LOG" | tail -n 40 >&2 || true
  die "could not install the pinned pip (full log: $PIP_LOG)"
fi
# pip's own output goes to a log so the normal case stays quiet; it is shown when pip fails.
if ! "$VENV/bin/python" -m pip install --disable-pip-version-check --no-input --quiet \
  "${REQ_INSTALL[@]}" >>"$PIP_LOG" 2>&1; then
  # This machine's pip config lists optional local indexes that are absent; hide that noise.
  grep -v 'is ignored: it is neither a file nor a directory' "$PIP_LOG" | tail -n 40 >&2 || true
  die "pip install failed (full log: $PIP_LOG)"
fi
say "pip finished in $((SECONDS - start)) s"

# Check with the real CLI once: it proves the entry point imports with the installed dependency
# set, not just that the metadata says the right version. LITELLM_LOCAL_MODEL_COST_MAP avoids a
# network fetch (and its retries) of the model price map.
reported="$(LITELLM_LOCAL_MODEL_COST_MAP=True "$VENV/bin/litellm" --version 2>/dev/null || true)"
if [[ "$reported" != *"Current Version = $PIN"* ]]; then
  die "expected 'litellm --version' to report $PIN, got: ${reported:-<nothing>}"
fi
[[ "$(installed_version)" == "$PIN" ]] || die "installed metadata does not say litellm $PIN"

printf '%s\n' "$want_stamp" >"$STAMP"
say "litellm $PIN ready: $VENV/bin/litellm ($((SECONDS - start)) s)"
