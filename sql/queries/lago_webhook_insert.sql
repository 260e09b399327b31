-- Stores a verified Lago webhook once per unique key. A second delivery of the same webhook
-- (Lago retries with the same X-Lago-Unique-Key) counts a delivery and changes nothing else.
-- Returns inserted = true for the first delivery.
INSERT INTO lago_webhooks (unique_key, webhook_type, object_type, algorithm, customer_id, payload, outcome, detail)
VALUES ($1, $2, $3, $4, $5, $6::text::jsonb, $7, $8)
ON CONFLICT (unique_key) DO UPDATE
  SET deliveries = lago_webhooks.deliveries + 1, last_received_at = now()
RETURNING id, (xmax = 0) AS inserted, outcome
