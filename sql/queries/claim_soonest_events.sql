-- While the sink is paused and nothing is due, the probe batch takes the events due soonest (even
-- if their backoff has not run out), so delivery resumes as soon as Lago answers again rather than
-- when the longest backoff ends. Leased events are skipped. Same parameters as claim_due_events.
WITH soonest AS (
  SELECT id
  FROM lago_events
  WHERE state = 'pending' AND (lease_token IS NULL OR next_attempt_at <= now())
  ORDER BY next_attempt_at, id
  LIMIT $1
  FOR UPDATE SKIP LOCKED
)
UPDATE lago_events e
SET lease_token = $2::uuid,
    attempts = e.attempts + 1,
    next_attempt_at = now() + make_interval(secs => $3::float8)
FROM soonest
WHERE e.id = soonest.id
RETURNING e.id, e.transaction_id, e.customer_id, e.code, e.event_timestamp::float8 AS event_timestamp,
          e.properties, trim_scale(e.precise_total_amount_cents)::text AS precise_total_amount_cents,
          e.external_subscription_id, e.attempts, e.created_at
