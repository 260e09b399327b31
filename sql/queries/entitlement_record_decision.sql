-- Records a customer's decision; when its state or reason changes, `since` moves and the change
-- is appended to the history (with the previous state, the source and what it was based on).
-- $1 customer, $2 state, $3 reason, $4 message, $5 computed state, $6 computed reason,
-- $7 available cents, $8 unaccounted cents, $9 source, $10 actor, $11 detail (JSON text).
-- Returns changed = true when the history got a row.
WITH prev AS (
  SELECT state, reason FROM entitlements WHERE customer_id = $1 FOR UPDATE
),
changed AS (
  SELECT prev.* FROM prev
  WHERE (prev.state, coalesce(prev.reason, '')) IS DISTINCT FROM ($2::text, coalesce($3::text, ''))
),
upd AS (
  UPDATE entitlements
  SET state = $2, reason = $3, message = $4, computed_state = $5, computed_reason = $6,
      since = CASE WHEN EXISTS (SELECT 1 FROM changed) THEN now() ELSE since END,
      available_cents = $7::numeric, unaccounted_cents = $8::numeric, decided_at = now(), updated_at = now()
  WHERE customer_id = $1
  RETURNING 1
),
hist AS (
  INSERT INTO entitlement_history (customer_id, state, reason, message, previous_state, previous_reason,
                                   source, actor, detail)
  SELECT $1, $2, $3, $4, changed.state, changed.reason, $9, $10, $11::text::jsonb FROM changed
  RETURNING 1
)
SELECT (SELECT count(*) FROM hist)::int > 0 AS changed, (SELECT count(*) FROM upd)::int AS updated
