-- Figures for GET /webhooks/stats. Each sub-select reads a small index where it can.
SELECT
  (SELECT count(*) FROM lago_events WHERE state = 'pending')::bigint AS pending,
  (SELECT count(*) FROM lago_events WHERE state = 'delivered')::bigint AS delivered,
  (SELECT count(*) FROM lago_events WHERE state = 'failed')::bigint AS failed,
  (SELECT count(*) FROM lago_events WHERE state = 'unbillable')::bigint AS unbillable,
  (SELECT count(*) FROM lago_events WHERE state = 'delivered' AND lago_duplicate)::bigint AS lago_duplicates,
  (SELECT count(*) FROM usage_events WHERE received_at > now() - interval '1 hour')::bigint AS received_1h,
  (SELECT count(*) FROM usage_events WHERE received_at > now() - interval '1 day')::bigint AS received_24h,
  (SELECT count(*) FROM lago_events WHERE state = 'delivered' AND settled_at > now() - interval '1 hour')::bigint AS delivered_1h,
  (SELECT count(*) FROM lago_events WHERE state = 'delivered' AND settled_at > now() - interval '1 day')::bigint AS delivered_24h,
  (SELECT extract(epoch FROM now() - min(created_at)) FROM lago_events WHERE state = 'pending')::float8 AS oldest_pending_seconds,
  (SELECT count(*) FROM usage_conflicts)::bigint AS conflicts,
  (SELECT count(*) FROM ingest_rejections)::bigint AS rejections,
  (SELECT count(*) FROM usage_events WHERE NOT billable)::bigint AS not_billable,
  (SELECT percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP (ORDER BY extract(epoch FROM settled_at) - event_timestamp)
     FROM lago_events WHERE state = 'delivered' AND settled_at > now() - interval '1 hour')::float8[] AS lag_1h,
  (SELECT max(sent_at) FROM webhook_logs WHERE success) AS last_success_at,
  (SELECT row_to_json(l) FROM (SELECT sent_at, status_code, error FROM webhook_logs WHERE NOT success
     ORDER BY sent_at DESC LIMIT 1) l) AS last_failure
