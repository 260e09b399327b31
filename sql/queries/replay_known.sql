-- What the ledger already knows about a page of SpendLogs rows, so re-reading a window changes
-- nothing: stored calls (by request id, and cache hits by litellm_call_id, since LiteLLM gives a
-- cache hit another request id in SpendLogs than in the callback), conflicts already kept, and
-- rejections already kept.
-- $1: request ids of mapped rows; $2: litellm_call_ids of cache hits; $3: request ids of rejected rows.
SELECT 'ledger' AS kind, request_id AS key, fingerprint, customer_id
FROM usage_events WHERE request_id = ANY($1::text[])
UNION ALL
SELECT 'call', metadata ->> 'litellm_call_id', fingerprint, customer_id
FROM usage_events WHERE metadata ? 'cache_hit' AND metadata ->> 'litellm_call_id' = ANY($2::text[])
UNION ALL
SELECT DISTINCT 'conflict', request_id, incoming_fingerprint, NULL::text
FROM usage_conflicts WHERE request_id = ANY($1::text[])
UNION ALL
SELECT DISTINCT 'rejection', request_id, NULL::text, NULL::text
FROM ingest_rejections WHERE request_id = ANY($3::text[])
