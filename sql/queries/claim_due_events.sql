-- Claims up to $1 due pending events for one batch by locking their rows (FOR UPDATE, inside the
-- batch's transaction, held while the batch is sent): nothing is written to claim them, and no
-- other worker can take them until that transaction ends. A worker that dies releases them at
-- once (its connection closes); one that hangs, after idle_in_transaction_session_timeout.
-- Rows another worker holds are skipped. Leased rows (a worker of an older version) are not due.
SELECT id, transaction_id, customer_id, code, event_timestamp::float8 AS event_timestamp, properties::text AS properties,
       trim_scale(precise_total_amount_cents)::text AS precise_total_amount_cents,
       external_subscription_id, attempts, created_at, next_attempt_at::text AS cursor_at
FROM lago_events
WHERE state = 'pending' AND next_attempt_at <= now()
ORDER BY next_attempt_at, id
LIMIT $1
FOR UPDATE SKIP LOCKED
