-- Rows of LiteLLM_SpendLogs in [$1, $2) (UTC wall-clock bounds, see spendlogs_page.sql): the total a
-- backfill's progress bar counts towards. Served by the "startTime" index.
SELECT count(*)::bigint AS n
FROM "LiteLLM_SpendLogs"
WHERE "startTime" >= $1::timestamp AND "startTime" < $2::timestamp
