-- Parked events now, by state and a reason class for /health/metrics (low-cardinality labels; the
-- full text is in last_error, shown by `webhook-service stats` and GET /webhooks/events).
-- The patterns follow the texts written by src/lago/subscription-span.ts, src/delivery/retry-policy.ts
-- and src/delivery/worker.ts.
SELECT state, reason, count(*)::bigint AS events
FROM (
  SELECT state,
         CASE
           WHEN state = 'unbillable' AND last_error LIKE '%active subscriptions in Lago%' THEN 'multiple_subscriptions'
           WHEN state = 'unbillable' AND last_error LIKE '%precedes subscription%' THEN 'before_subscription_start'
           WHEN state = 'unbillable' AND last_error LIKE '%after subscription%terminated%' THEN 'after_subscription_end'
           WHEN state = 'unbillable' AND last_error LIKE '%no subscription%' THEN 'no_subscription'
           WHEN state = 'failed' AND last_error LIKE 'gave up after %' THEN 'max_attempts'
           WHEN state = 'failed' AND last_error LIKE 'gave up: still failing%' THEN 'max_age'
           WHEN state = 'failed' AND last_status BETWEEN 400 AND 499 AND last_status <> 429 THEN 'lago_rejected'
           ELSE 'other'
         END AS reason
  FROM lago_events
  WHERE state IN ('failed', 'unbillable')
) p
GROUP BY state, reason
