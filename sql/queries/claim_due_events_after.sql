-- claim_due_events for a dispatcher that has batches in flight: it starts after the last event it
-- claimed ($2, $3 = that event's next_attempt_at and id) instead of stepping over the rows its own
-- batches hold locked, which would cost a lock attempt per row. Rows before that point that became
-- free (a batch rolled back) are taken by the next claim without a cursor.
SELECT id, transaction_id, customer_id, code, event_timestamp::float8 AS event_timestamp, properties::text AS properties,
       trim_scale(precise_total_amount_cents)::text AS precise_total_amount_cents,
       external_subscription_id, attempts, created_at, next_attempt_at::text AS cursor_at
FROM lago_events
WHERE state = 'pending' AND next_attempt_at <= now()
  AND (next_attempt_at, id) > ($2::timestamptz, $3::bigint)
ORDER BY next_attempt_at, id
LIMIT $1
FOR UPDATE SKIP LOCKED
