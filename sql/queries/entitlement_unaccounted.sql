-- Our ledger's usage that Lago has not counted yet, per customer, priced as billed, in cents:
-- sum(cost_usd) × (100 + markup %) — exactly what cost mode sends as precise_total_amount_cents
-- (src/entitlements/decide.ts billedCents). Two independent "counted until" times per customer:
-- one for its prepaid wallets ($2), one for its usage reading against a spending limit ($3); NULL
-- when the customer has none.
--
-- A billable ledger row is counted by Lago when it was received before the counted-until time AND
-- each of its outgoing events was delivered before it; any other row is not counted yet (received
-- after, still pending, delivered after, or parked: it may still be billed once reprocessed).
-- Rows whose call started before the billing period (invoiced, not in the balance) or more
-- than an hour before the counted-until time are taken as counted (the customer/time index bounds
-- the scan; backfills of older history are not subtracted).
--
-- seen_through: the start time of the newest billable row of the customer in the ledger (Unix
-- seconds); the proxy stops spending its own finished calls against the credit once they are in.
-- $1 customer ids, $2 wallet counted-until, $3 usage counted-until, $5 and $6 the billing period
-- starts of the wallet and usage readings (parallel arrays), $4 markup %, $7 the endings of
-- transaction ids after the request id (mapping.ts TRANSACTION_ID_SUFFIXES): a call's outbox events
-- are found by transaction id (its unique index; the outbox has no usage_event_id index).
WITH input AS (
  SELECT *
  FROM unnest($1::text[], $2::timestamptz[], $3::timestamptz[], $5::timestamptz[], $6::timestamptz[])
    AS i(customer_id, wallet_cu, usage_cu, period_start, usage_period_start)
)
SELECT
  i.customer_id,
  (SELECT coalesce(sum(u.cost_usd), 0) * (100 + $4::numeric)
   FROM usage_events u
   WHERE i.wallet_cu IS NOT NULL AND u.customer_id = i.customer_id AND u.billable
     AND u.event_time >= i.wallet_cu - interval '1 hour'
     AND (i.period_start IS NULL OR u.event_time >= i.period_start)
     AND (u.received_at >= i.wallet_cu
          OR EXISTS (SELECT 1 FROM unnest($7::text[]) AS s(suffix)
                     JOIN lago_events e ON e.transaction_id = u.request_id || s.suffix AND e.usage_event_id = u.id
                     WHERE e.state <> 'delivered' OR e.settled_at >= i.wallet_cu)))::text AS wallet_cents,
  (SELECT coalesce(sum(u.cost_usd), 0) * (100 + $4::numeric)
   FROM usage_events u
   WHERE i.usage_cu IS NOT NULL AND u.customer_id = i.customer_id AND u.billable
     AND u.event_time >= i.usage_cu - interval '1 hour'
     AND (i.usage_period_start IS NULL OR u.event_time >= i.usage_period_start)
     AND (u.received_at >= i.usage_cu
          OR EXISTS (SELECT 1 FROM unnest($7::text[]) AS s(suffix)
                     JOIN lago_events e ON e.transaction_id = u.request_id || s.suffix AND e.usage_event_id = u.id
                     WHERE e.state <> 'delivered' OR e.settled_at >= i.usage_cu)))::text AS usage_cents,
  (SELECT extract(epoch FROM u.event_time)::float8
   FROM usage_events u
   WHERE u.customer_id = i.customer_id AND u.billable
   ORDER BY u.event_time DESC
   LIMIT 1) AS seen_through
FROM input i
