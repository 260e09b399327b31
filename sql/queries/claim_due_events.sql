-- Claims up to $1 due pending events for one worker: they get the lease token $2 and become due
-- again only after $3 seconds, so a crashed worker's events are retried by someone else then.
-- attempts counts the sends; a claim that ends without a send gives the attempt back (settle).
WITH due AS (
  SELECT id
  FROM lago_events
  WHERE state = 'pending' AND next_attempt_at <= now()
  ORDER BY next_attempt_at, id
  LIMIT $1
  FOR UPDATE SKIP LOCKED
)
UPDATE lago_events e
SET lease_token = $2::uuid,
    attempts = e.attempts + 1,
    next_attempt_at = now() + make_interval(secs => $3::float8)
FROM due
WHERE e.id = due.id
RETURNING e.id, e.transaction_id, e.customer_id, e.code, e.event_timestamp::float8 AS event_timestamp,
          e.properties, trim_scale(e.precise_total_amount_cents)::text AS precise_total_amount_cents,
          e.external_subscription_id, e.attempts, e.created_at
