-- Customers with ledger rows received since $1, with the newest such row's receive time. Read by
-- the entitlement engine a few times a second (usage_events_received_at); the caller overlaps
-- windows, so a transaction that committed late is still seen.
SELECT customer_id, max(received_at) AS last_usage_at
FROM usage_events
WHERE received_at >= $1::timestamptz
GROUP BY customer_id
