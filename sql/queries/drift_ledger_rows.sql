-- Drift report: the ledger rows of a page of SpendLogs calls, to compare call by call.
-- $1: request ids; $2: litellm_call_ids of cache hits (their request id differs between the
-- callback and SpendLogs); $3: request ids SpendLogs could not map (kept as rejections?);
-- $4, $5: the report's window; $6: ledger rows at or after this are recent.
SELECT 'ledger' AS kind, request_id AS key, customer_id, (event_time AT TIME ZONE 'UTC')::date::text AS day,
       event_time >= $4::timestamptz AND event_time < $5::timestamptz AS in_window,
       event_time >= $6::timestamptz AS recent, source, tokens_input, tokens_output, total_tokens,
       cost_usd::text AS cost, cost_source
FROM usage_events WHERE request_id = ANY($1::text[])
UNION ALL
SELECT 'call', metadata ->> 'litellm_call_id', customer_id, (event_time AT TIME ZONE 'UTC')::date::text,
       event_time >= $4::timestamptz AND event_time < $5::timestamptz, event_time >= $6::timestamptz,
       source, tokens_input, tokens_output, total_tokens, cost_usd::text, cost_source
FROM usage_events WHERE metadata ? 'cache_hit' AND metadata ->> 'litellm_call_id' = ANY($2::text[])
UNION ALL
SELECT DISTINCT 'rejection', request_id, NULL::text, NULL::text, NULL::boolean, NULL::boolean, NULL::text,
       NULL::bigint, NULL::bigint, NULL::bigint, NULL::text, NULL::text
FROM ingest_rejections WHERE request_id = ANY($3::text[])
