-- Delivery attempts of the last $1 minutes (all workers, all replicas) and how many Lago answered
-- with 429: validate's view of rate limiting beyond this process's own sink.
SELECT count(*)::int AS attempts,
       count(*) FILTER (WHERE status_code = 429)::int AS rate_limited,
       max(sent_at) FILTER (WHERE status_code = 429) AS last_rate_limited_at
FROM webhook_logs
WHERE sent_at > now() - make_interval(mins => $1::integer)
