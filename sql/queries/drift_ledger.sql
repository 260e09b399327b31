-- Drift report, ledger side: per customer and UTC day of the call in [$1, $2), what the ledger holds
-- and how far its Lago events got. Sums are numeric, returned as text (exact).
-- $3: pending events created before this are late (not explained by the safety lag);
-- $4: ledger calls at or after this may not be in SpendLogs yet (LiteLLM writes it in batches);
-- $5: token metric code (tokens summed from properties.tokens); $6: cost metric code (cents);
-- $7: the endings of transaction ids after the request id (mapping.ts TRANSACTION_ID_SUFFIXES): a
-- call's events are found by transaction id (its unique index), the outbox has no usage_event_id index.
-- A call counts as delivered when all its events are; failed wins over unbillable over pending.
WITH calls AS (
  SELECT u.id, u.request_id, u.customer_id, (u.event_time AT TIME ZONE 'UTC')::date AS day, u.event_time,
         u.tokens_input, u.tokens_output, u.total_tokens, u.cost_usd, u.cost_source, u.billable, u.source
  FROM usage_events u
  WHERE u.event_time >= $1::timestamptz AND u.event_time < $2::timestamptz
),
outbox AS (
  SELECT e.usage_event_id,
         count(*) AS events,
         count(*) FILTER (WHERE e.state = 'delivered') AS delivered,
         count(*) FILTER (WHERE e.state = 'pending') AS pending,
         count(*) FILTER (WHERE e.state = 'failed') AS failed,
         count(*) FILTER (WHERE e.state = 'unbillable') AS unbillable,
         min(e.created_at) FILTER (WHERE e.state = 'pending') AS pending_since,
         sum((e.properties ->> 'tokens')::numeric) FILTER (WHERE e.state = 'delivered' AND e.code = $5::text)
           AS delivered_tokens,
         sum(e.precise_total_amount_cents) FILTER (WHERE e.state = 'delivered' AND e.code = $6::text)
           AS delivered_cents
  FROM calls c
  CROSS JOIN unnest($7::text[]) AS s(suffix)
  JOIN lago_events e ON e.transaction_id = c.request_id || s.suffix AND e.usage_event_id = c.id
  GROUP BY e.usage_event_id
)
SELECT c.customer_id AS customer,
       c.day::text AS day,
       count(*)::int AS calls,
       sum(c.tokens_input)::text AS input_tokens,
       sum(c.tokens_output)::text AS output_tokens,
       sum(c.total_tokens)::text AS total_tokens,
       sum(c.cost_usd)::text AS cost,
       count(*) FILTER (WHERE c.source = 'api')::int AS api_calls,
       count(*) FILTER (WHERE c.source <> 'api' AND c.event_time >= $4::timestamptz)::int AS recent_calls,
       count(*) FILTER (WHERE NOT c.billable)::int AS not_billable,
       count(*) FILTER (WHERE c.billable AND o.usage_event_id IS NULL)::int AS not_queued,
       count(*) FILTER (WHERE o.failed > 0)::int AS failed,
       count(*) FILTER (WHERE o.failed = 0 AND o.unbillable > 0)::int AS unbillable,
       count(*) FILTER (WHERE o.failed = 0 AND o.unbillable = 0 AND o.pending > 0
                          AND o.pending_since >= $3::timestamptz)::int AS pending_recent,
       count(*) FILTER (WHERE o.failed = 0 AND o.unbillable = 0 AND o.pending > 0
                          AND o.pending_since < $3::timestamptz)::int AS pending_late,
       count(*) FILTER (WHERE o.delivered > 0)::int AS delivered_calls,
       COALESCE(sum(o.delivered_tokens), 0)::text AS delivered_tokens,
       (COALESCE(sum(o.delivered_cents), 0) / 100)::text AS delivered_cost
FROM calls c
LEFT JOIN outbox o ON o.usage_event_id = c.id
GROUP BY c.customer_id, c.day
ORDER BY c.customer_id, c.day
