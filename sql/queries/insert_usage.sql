-- Stores ledger rows and their outgoing Lago events in one statement (so in one transaction).
-- Rows come as one array per column ($1..$24, unnested together) and outgoing events likewise
-- ($25..$32, each naming its request id): PostgreSQL reads typed arrays faster than it converts
-- JSON documents into records (measured, BENCHMARKS.md); each array comes as one array literal
-- (src/db/array-literal.ts). JSON and boolean columns come as text. Rows whose request id is already stored
-- are skipped; their events are not inserted. Returns the request ids that were inserted.
WITH inserted AS (
  INSERT INTO usage_events (
    request_id, event_time, customer_id, user_id, team_id, org_id, api_key_hash, model, provider,
    call_type, status, tokens_input, tokens_output, tokens_cached, tokens_cache_write,
    tokens_reasoning, total_tokens, cost_usd, cost_source, billable, not_billable_reason, source,
    fingerprint, metadata)
  SELECT
    request_id, to_timestamp(event_time), customer_id, user_id, team_id, org_id, api_key_hash, model,
    provider, call_type, status, tokens_input, tokens_output, tokens_cached, tokens_cache_write,
    tokens_reasoning, total_tokens, cost_usd, cost_source, billable::boolean, not_billable_reason, source,
    fingerprint, metadata::jsonb
  FROM unnest(
    $1::text[], $2::float8[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[],
    $9::text[], $10::text[], $11::text[], $12::bigint[], $13::bigint[], $14::bigint[], $15::bigint[],
    $16::bigint[], $17::bigint[], $18::numeric[], $19::text[], $20::text[], $21::text[], $22::text[],
    $23::text[], $24::text[]
  ) AS x(
    request_id, event_time, customer_id, user_id, team_id, org_id, api_key_hash, model, provider,
    call_type, status, tokens_input, tokens_output, tokens_cached, tokens_cache_write,
    tokens_reasoning, total_tokens, cost_usd, cost_source, billable, not_billable_reason, source,
    fingerprint, metadata)
  ON CONFLICT (request_id) DO NOTHING
  RETURNING id, request_id
),
outgoing AS (
  INSERT INTO lago_events (
    usage_event_id, transaction_id, customer_id, code, event_timestamp, properties,
    precise_total_amount_cents, external_subscription_id)
  SELECT i.id, o.transaction_id, o.customer_id, o.code, o.event_timestamp, o.properties::jsonb,
         o.precise_total_amount_cents, o.external_subscription_id
  FROM unnest($25::text[], $26::text[], $27::text[], $28::text[], $29::numeric[], $30::text[],
              $31::numeric[], $32::text[]) AS o(
    request_id, transaction_id, customer_id, code, event_timestamp, properties,
    precise_total_amount_cents, external_subscription_id)
  JOIN inserted i ON i.request_id = o.request_id
  RETURNING 1
)
SELECT request_id, (SELECT count(*) FROM outgoing)::int AS outgoing FROM inserted
