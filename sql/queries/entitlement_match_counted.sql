-- Where Lago's counted usage ends in our ledger: Lago's numbers say it counted $3 cents of the
-- customer's usage in the billing period that started at $2 (Σ ongoing_usage_balance_cents of its
-- wallets, or the current usage's amount_cents). Our billable rows of that period, in the order
-- Lago received them (the delivery of their last outgoing event), priced as billed ($4 markup %):
-- the first row that takes the running total above $3 is the first Lago had not counted, and its
-- delivery time is the counted-until time. NULL when every delivered row fits (Lago counted at
-- least all of them: other charges or taxes); the caller clamps the answer to the window in which
-- Lago must have recomputed. $1 customer.
WITH period AS (
  SELECT u.id, u.cost_usd * (100 + $4::numeric) AS cents,
         (SELECT CASE WHEN bool_and(e.state = 'delivered') THEN max(e.settled_at) END
          FROM lago_events e WHERE e.usage_event_id = u.id) AS delivered_at
  FROM usage_events u
  WHERE u.customer_id = $1 AND u.billable AND u.event_time >= $2::timestamptz
),
ordered AS (
  SELECT delivered_at, sum(cents) OVER (ORDER BY delivered_at, id) AS running
  FROM period
  WHERE delivered_at IS NOT NULL
)
SELECT min(delivered_at) AS counted_until FROM ordered WHERE running > $3::numeric
