-- Stores ledger rows and their outgoing Lago events in one statement (so in one transaction).
-- $1: JSON array of ledger rows; $2: JSON array of outgoing events, each naming its request_id.
-- Rows whose request id is already stored are skipped; their events are not inserted.
-- Returns the request ids that were inserted.
WITH input AS (
  SELECT *
  FROM jsonb_to_recordset($1::text::jsonb) AS x(
    request_id text, event_time double precision, customer_id text, user_id text, team_id text,
    org_id text, api_key_hash text, model text, provider text, call_type text, status text,
    tokens_input bigint, tokens_output bigint, tokens_cached bigint, tokens_cache_write bigint,
    tokens_reasoning bigint, total_tokens bigint, cost_usd numeric, cost_source text,
    billable boolean, not_billable_reason text, source text, fingerprint text, metadata jsonb)
),
inserted AS (
  INSERT INTO usage_events (
    request_id, event_time, customer_id, user_id, team_id, org_id, api_key_hash, model, provider,
    call_type, status, tokens_input, tokens_output, tokens_cached, tokens_cache_write,
    tokens_reasoning, total_tokens, cost_usd, cost_source, billable, not_billable_reason, source,
    fingerprint, metadata)
  SELECT
    request_id, to_timestamp(event_time), customer_id, user_id, team_id, org_id, api_key_hash, model,
    provider, call_type, status, tokens_input, tokens_output, tokens_cached, tokens_cache_write,
    tokens_reasoning, total_tokens, cost_usd, cost_source, billable, not_billable_reason, source,
    fingerprint, metadata
  FROM input
  ON CONFLICT (request_id) DO NOTHING
  RETURNING id, request_id
),
outgoing AS (
  INSERT INTO lago_events (
    usage_event_id, transaction_id, customer_id, code, event_timestamp, properties,
    precise_total_amount_cents, external_subscription_id)
  SELECT i.id, o.transaction_id, o.customer_id, o.code, o.event_timestamp, o.properties,
         o.precise_total_amount_cents, o.external_subscription_id
  FROM jsonb_to_recordset($2::text::jsonb) AS o(
    request_id text, transaction_id text, customer_id text, code text, event_timestamp numeric,
    properties jsonb, precise_total_amount_cents numeric, external_subscription_id text)
  JOIN inserted i ON i.request_id = o.request_id
  RETURNING 1
)
SELECT request_id, (SELECT count(*) FROM outgoing)::int AS outgoing FROM inserted
