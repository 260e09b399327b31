#!/usr/bin/env bash
# Creates the webhook service's database role. Mounted by docker-compose.yml as
# /docker-entrypoint-initdb.d/10-webhook-role.sh: the postgres image runs it once, when it
# initialises an empty data volume, as POSTGRES_USER (litellm, the cluster's bootstrap superuser
# and owner of database `litellm`).
#
# It is idempotent, so it can also be run by hand on an existing volume (for instance after
# changing WEBHOOK_DB_PASSWORD in .env, or on a volume created before this script existed):
#   docker compose exec -T postgres bash /docker-entrypoint-initdb.d/10-webhook-role.sh
#
# Privileges (least privilege):
#   webhook  LOGIN with WEBHOOK_DB_PASSWORD; CONNECT and TEMPORARY on database litellm; USAGE and
#            CREATE on schema public (its migrations create and own its tables and functions);
#            SELECT on the tables LiteLLM creates (the reconciler reads "LiteLLM_SpendLogs").
#            Not a superuser, cannot create databases or roles, cannot write LiteLLM's tables.
#   litellm  SELECT on the webhook tables and EXECUTE on its functions, so operator queries such
#            as get_usage_by_customer(...) work when connected as litellm. (litellm is already a
#            superuser in this compose stack; the grants matter when LiteLLM runs as an ordinary
#            role, e.g. on a managed PostgreSQL where this script is run by an administrator.)
#
# Roles are cluster-wide and not part of a pg_dump of the database: restoring a backup into a new
# volume relies on this script having created `webhook` first (it runs before any restore).

# Runs in a subshell: the postgres entrypoint *sources* non-executable *.sh files, and our shell
# options must not leak into it.
(
  set -Eeuo pipefail

  if [[ -z "${WEBHOOK_DB_PASSWORD:-}" ]]; then
    echo "init.sh: WEBHOOK_DB_PASSWORD is empty; set it in .env (see .env.example)" >&2
    exit 1
  fi

  db="${POSTGRES_DB:-litellm}"
  owner="${POSTGRES_USER:-litellm}"

  # Values reach SQL only as psql variables (:'x' = quoted literal, :"x" = quoted identifier),
  # never by string splicing, so any password is safe.
  psql -v ON_ERROR_STOP=1 --no-psqlrc -q \
    --username "$owner" --dbname "$db" \
    -v webhook_password="$WEBHOOK_DB_PASSWORD" \
    -v db="$db" \
    -v owner="$owner" <<'SQL'
-- The role (created once; the password is (re)set on every run).
SELECT 'CREATE ROLE webhook LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION'
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'webhook') \gexec
ALTER ROLE webhook WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION PASSWORD :'webhook_password';

-- Only the two application roles connect to this database. TEMPORARY lets the service use
-- temporary tables for bulk loads; it gives no access to other objects.
REVOKE ALL ON DATABASE :"db" FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE :"db" TO webhook;

-- Schema public: nobody but its owner and webhook may create objects in it.
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE, CREATE ON SCHEMA public TO webhook;

-- Objects webhook creates later (its migrations): readable/executable by litellm.
ALTER DEFAULT PRIVILEGES FOR ROLE webhook IN SCHEMA public GRANT SELECT ON TABLES TO :"owner";
ALTER DEFAULT PRIVILEGES FOR ROLE webhook IN SCHEMA public GRANT EXECUTE ON FUNCTIONS TO :"owner";

-- Tables LiteLLM creates later (its Prisma migrations run as litellm): readable by webhook, for
-- the reconciler that reads "LiteLLM_SpendLogs".
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA public GRANT SELECT ON TABLES TO webhook;

-- When run by hand on a database where LiteLLM already created its tables, the default
-- privileges above do not apply to them: grant the one table the reconciler reads.
SELECT 'GRANT SELECT ON TABLE public."LiteLLM_SpendLogs" TO webhook'
WHERE to_regclass('public."LiteLLM_SpendLogs"') IS NOT NULL \gexec
SQL

  echo "init.sh: role webhook ready in database ${db}"
)
