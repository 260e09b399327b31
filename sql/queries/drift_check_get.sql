-- The latest drift check, for /health/metrics (every replica reports the same row).
SELECT extract(epoch FROM checked_at)::float8 AS checked_at,
       duration_ms,
       summary,
       extract(epoch FROM failed_at)::float8 AS failed_at
FROM drift_checks
WHERE name = $1
