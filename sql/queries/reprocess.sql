-- Moves failed and/or unbillable events back to pending. $1 states, $2/$3 call time range [from, to),
-- $4 customer id, $5 request or transaction ids, $6 dry run, $7 subscription template for events
-- that were never sent (unbillable): null re-runs the Lago lookup before their first send.
-- Returns how many events of each state were (or, in a dry run, would be) moved.
WITH target AS (
  SELECT e.id, e.state
  FROM lago_events e
  JOIN usage_events u ON u.id = e.usage_event_id
  WHERE e.state = ANY($1::text[])
    AND ($2::timestamptz IS NULL OR u.event_time >= $2::timestamptz)
    AND ($3::timestamptz IS NULL OR u.event_time < $3::timestamptz)
    AND ($4::text IS NULL OR e.customer_id = $4::text)
    AND ($5::text[] IS NULL OR u.request_id = ANY($5::text[]) OR e.transaction_id = ANY($5::text[]))
  FOR UPDATE OF e
),
moved AS (
  UPDATE lago_events e
  SET state = 'pending',
      attempts = 0,
      next_attempt_at = now(),
      lease_token = NULL,
      settled_at = NULL,
      external_subscription_id = CASE
        WHEN t.state = 'unbillable' THEN
          CASE WHEN $7::text IS NULL THEN NULL ELSE replace($7::text, '{customer_id}', e.customer_id) END
        ELSE e.external_subscription_id END,
      last_error = 'reprocessed after: ' || coalesce(e.last_error, t.state)
  FROM target t
  WHERE e.id = t.id AND NOT $6::boolean
  RETURNING e.id
)
SELECT t.state, count(*)::int AS count, (SELECT count(*) FROM moved)::int AS moved
FROM target t
GROUP BY t.state
