-- Seeds $1 historical calls that were delivered long ago (one delivered outbox event each), so the
-- tables hold what months of traffic leave behind. $2 is a run tag.
WITH calls AS (
  INSERT INTO usage_events (request_id, event_time, customer_id, model, provider, tokens_input, tokens_output,
    total_tokens, cost_usd, source, fingerprint, received_at)
  SELECT $2 || '-' || g, now() - interval '20 days' + g * interval '1 millisecond', 'customer-' || (g % 1000),
    'gpt-4o', 'openai', 100, 150, 250, 0.00275, 'api', 'seed', now() - interval '20 days'
  FROM generate_series(1, $1::int) AS g
  RETURNING id, request_id, customer_id
)
INSERT INTO lago_events (usage_event_id, transaction_id, customer_id, code, event_timestamp, properties,
  external_subscription_id, state, attempts, settled_at, created_at, next_attempt_at)
SELECT c.id, c.request_id || ':input', c.customer_id, 'llm_tokens', extract(epoch FROM now()) - 1728000,
  '{"tokens": 100, "model": "gpt-4o", "type": "input", "provider": "openai"}', c.customer_id, 'delivered', 1,
  now() - interval '20 days', now() - interval '20 days', now() - interval '20 days'
FROM calls c
