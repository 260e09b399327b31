-- Cheap backlog figures for metrics scrapes and readiness.
SELECT
  (SELECT count(*) FROM lago_events WHERE state = 'pending')::bigint AS pending,
  (SELECT count(*) FROM lago_events WHERE state = 'failed')::bigint AS failed,
  (SELECT count(*) FROM lago_events WHERE state = 'unbillable')::bigint AS unbillable,
  (SELECT extract(epoch FROM now() - min(created_at)) FROM lago_events WHERE state = 'pending')::float8 AS oldest_pending_seconds
