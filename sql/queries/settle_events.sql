-- Writes the outcome of a claim, inside the claim's transaction (its rows are locked by it), in
-- one round trip: the only write to these rows since ingest.
-- $1, $2: ids and HTTP statuses of delivered events (the common case, as arrays);
-- $3: JSON array of other outcomes {id, state, delay_s, error, status, duplicate, uncount} (attempts
--     grows by one per send, so uncount 1 says the event was not sent this time);
-- $4: JSON array of the HTTP attempts {at, success, status, count, ms, error} for webhook_logs;
-- $5: worker id. No id is in both $1 and $3.
-- Times are statement_timestamp(): the claim's transaction began before the sends.
WITH log AS (
  INSERT INTO webhook_logs (sent_at, success, status_code, event_count, duration_ms, error, worker_id)
  SELECT coalesce(to_timestamp(a.at), statement_timestamp()), a.success, a.status, a.count, a.ms, a.error, $5::text
  FROM jsonb_to_recordset($4::text::jsonb) AS a(at float8, success boolean, status integer, count integer,
                                                  ms integer, error text)
),
delivered AS (
  UPDATE lago_events e
  SET state = 'delivered',
      lease_token = NULL,
      attempts = e.attempts + 1,
      last_error = NULL,
      last_status = d.status,
      settled_at = statement_timestamp()
  FROM unnest($1::bigint[], $2::integer[]) AS d(id, status)
  WHERE e.id = d.id AND e.state = 'pending'
),
outcome AS (
  SELECT *
  FROM jsonb_to_recordset($3::text::jsonb) AS s(
    id bigint, state text, delay_s float8, error text, status integer, duplicate boolean, uncount integer)
)
UPDATE lago_events e
SET state = o.state,
    lease_token = NULL,
    attempts = e.attempts + 1 - coalesce(o.uncount, 0),
    next_attempt_at = CASE WHEN o.state = 'pending'
                           THEN statement_timestamp() + make_interval(secs => coalesce(o.delay_s, 0))
                           ELSE e.next_attempt_at END,
    last_error = coalesce(o.error, CASE WHEN o.state = 'delivered' THEN NULL ELSE e.last_error END),
    last_status = coalesce(o.status, e.last_status),
    lago_duplicate = e.lago_duplicate OR coalesce(o.duplicate, false),
    settled_at = CASE WHEN o.state = 'pending' THEN NULL ELSE statement_timestamp() END
FROM outcome o
WHERE e.id = o.id AND e.state = 'pending'
