-- Where Lago's counted usage ends in our ledger: Lago's numbers say it counted $3 cents of the
-- customer's usage in the billing period that started at $2 (Σ ongoing_usage_balance_cents of its
-- wallets, or the current usage's amount_cents). Our billable rows of that period, in the order
-- Lago received them (the delivery of their last outgoing event), priced as billed ($4 markup %):
-- the first row that takes the running total above $3 is the first Lago had not counted, and its
-- delivery time is the counted-until time. NULL when every delivered row fits (Lago counted at
-- least all of them: other charges or taxes); the caller clamps the answer to the window, starting
-- at $6, in which Lago must have recomputed.
-- Only rows received from ten minutes before the window are looked up in the outbox; older ones of
-- the period are summed as delivered before it (a scan of the customer's period, no lookups).
-- $1 customer; $5 the endings of transaction ids after the request id (mapping.ts
-- TRANSACTION_ID_SUFFIXES: events are found through the unique transaction_id index).
WITH period AS (
  SELECT u.id, u.request_id, u.received_at, u.cost_usd * (100 + $4::numeric) AS cents
  FROM usage_events u
  WHERE u.customer_id = $1 AND u.billable AND u.event_time >= $2::timestamptz
),
base AS (
  SELECT coalesce(sum(cents), 0) AS cents FROM period
  WHERE received_at < $6::timestamptz - interval '10 minutes'
),
recent AS (
  SELECT p.id, p.cents,
         (SELECT CASE WHEN bool_and(e.state = 'delivered') THEN max(e.settled_at) END
          FROM unnest($5::text[]) AS s(suffix)
          JOIN lago_events e ON e.transaction_id = p.request_id || s.suffix AND e.usage_event_id = p.id)
         AS delivered_at
  FROM period p
  WHERE p.received_at >= $6::timestamptz - interval '10 minutes'
),
ordered AS (
  SELECT delivered_at, (SELECT cents FROM base) + sum(cents) OVER (ORDER BY delivered_at, id) AS running
  FROM recent
  WHERE delivered_at IS NOT NULL
)
SELECT CASE WHEN (SELECT cents FROM base) > $3::numeric THEN $6::timestamptz
            ELSE (SELECT min(delivered_at) FROM ordered WHERE running > $3::numeric) END AS counted_until
