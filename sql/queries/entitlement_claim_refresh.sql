-- Claims up to $1 customers whose refresh from Lago is due and pushes their next refresh $2
-- seconds ahead (the caller sets the real next time once the refresh is done; a crash leaves
-- them due again after $2). SKIP LOCKED: a webhook or a decision holding the row is not waited on.
WITH due AS (
  SELECT customer_id
  FROM entitlements
  WHERE next_refresh_at <= now()
  ORDER BY next_refresh_at
  LIMIT $1
  FOR UPDATE SKIP LOCKED
)
UPDATE entitlements t
SET next_refresh_at = now() + make_interval(secs => $2::float8)
FROM due
WHERE t.customer_id = due.customer_id
RETURNING t.customer_id
