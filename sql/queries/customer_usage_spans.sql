-- Customers whose usage is still to be billed (pending or unbillable outgoing events) or who called
-- in the last day, with the time span of that usage: validate and `lago setup` compare it with each
-- customer's Lago subscription. Both parts read indexed rows only (lago_events_due,
-- lago_events_parked, usage_events_received_at). $1: at most this many customers, latest first;
-- `customers` is how many there are in all.
WITH open_events AS (
  SELECT customer_id, event_timestamp::float8 AS at
  FROM lago_events
  WHERE state IN ('pending', 'unbillable')
),
recent_calls AS (
  SELECT customer_id, extract(epoch FROM event_time)::float8 AS at
  FROM usage_events
  WHERE billable AND received_at > now() - interval '1 day'
)
SELECT customer_id, min(at) AS first_at, max(at) AS last_at, count(*) OVER ()::int AS customers
FROM (SELECT * FROM open_events UNION ALL SELECT * FROM recent_calls) u
GROUP BY customer_id
ORDER BY max(at) DESC
LIMIT $1
