#!/bin/sh
# The official image runs `litellm "$@"`, with Prisma's engines baked in so that DATABASE_URL gives
# LiteLLM its database (virtual keys, budgets, LiteLLM_SpendLogs). Those engines come from
# binaries.prisma.sh, which this machine cannot reach, so the stand-in runs LiteLLM config-only and
# says so: master key, models, cache, callbacks and billing work; /key/generate does not.
if [ -n "${DATABASE_URL:-}" ] && ! command -v prisma >/dev/null 2>&1; then
  echo "[stand-in] no Prisma engines in this test image: LiteLLM runs without its database (DATABASE_URL ignored)" >&2
  unset DATABASE_URL
fi
exec litellm "$@"
