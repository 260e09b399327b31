-- While the sink is paused and nothing is due, the probe batch takes the events due soonest (even
-- if their backoff has not run out), so delivery resumes as soon as Lago answers again rather than
-- when the longest backoff ends. Locked like claim_due_events; live leases (an older worker) skipped.
SELECT id, transaction_id, customer_id, code, event_timestamp::float8 AS event_timestamp, properties::text AS properties,
       trim_scale(precise_total_amount_cents)::text AS precise_total_amount_cents,
       external_subscription_id, attempts, created_at, next_attempt_at::text AS cursor_at
FROM lago_events
WHERE state = 'pending' AND (lease_token IS NULL OR next_attempt_at <= now())
ORDER BY next_attempt_at, id
LIMIT $1
FOR UPDATE SKIP LOCKED
