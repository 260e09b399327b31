-- Records the outcome of one attempt for events claimed with lease $1, and the attempt itself in
-- webhook_logs, in one round trip. $2: JSON array of {id, state, delay_s, error, status, duplicate,
-- uncount}; rows no longer holding the lease (rescued by another worker) are left alone.
-- $3..$8: the webhook_logs row (null $3 = no HTTP attempt was made).
WITH log AS (
  INSERT INTO webhook_logs (success, status_code, event_count, duration_ms, error, worker_id)
  SELECT $3::boolean, $4::integer, $5::integer, $6::integer, $7::text, $8::text
  WHERE $3::boolean IS NOT NULL
),
outcome AS (
  SELECT *
  FROM jsonb_to_recordset($2::text::jsonb) AS s(
    id bigint, state text, delay_s float8, error text, status integer, duplicate boolean, uncount integer)
)
UPDATE lago_events e
SET state = o.state,
    lease_token = NULL,
    attempts = e.attempts - coalesce(o.uncount, 0),
    next_attempt_at = CASE WHEN o.state = 'pending'
                           THEN now() + make_interval(secs => coalesce(o.delay_s, 0))
                           ELSE e.next_attempt_at END,
    last_error = coalesce(o.error, CASE WHEN o.state = 'delivered' THEN NULL ELSE e.last_error END),
    last_status = coalesce(o.status, e.last_status),
    lago_duplicate = e.lago_duplicate OR coalesce(o.duplicate, false),
    settled_at = CASE WHEN o.state = 'pending' THEN NULL ELSE now() END
FROM outcome o
WHERE e.id = o.id AND e.lease_token = $1::uuid AND e.state = 'pending'
RETURNING e.id
