-- Seeds $1 calls as ledger rows with two pending outbox events each (input and output), spread over
-- 100 customers; $2 is a run tag that keeps request ids unique.
WITH calls AS (
  INSERT INTO usage_events (request_id, event_time, customer_id, model, provider, tokens_input, tokens_output,
    total_tokens, cost_usd, source, fingerprint)
  SELECT $2 || '-' || g, now() - interval '1 minute', 'customer-' || (g % 100), 'gpt-4o', 'openai', 100, 150, 250,
    0.00275, 'api', 'seed'
  FROM generate_series(1, $1::int) AS g
  RETURNING id, request_id, customer_id
)
INSERT INTO lago_events (usage_event_id, transaction_id, customer_id, code, event_timestamp, properties,
  external_subscription_id)
SELECT c.id, c.request_id || ':' || k.type, c.customer_id, 'llm_tokens', extract(epoch FROM now()) - 60,
  jsonb_build_object('tokens', k.tokens, 'model', 'gpt-4o', 'type', k.type, 'provider', 'openai'), c.customer_id
FROM calls c CROSS JOIN (VALUES ('input', 100), ('output', 150)) AS k(type, tokens)
