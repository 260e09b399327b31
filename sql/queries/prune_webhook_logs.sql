-- Deletes delivery attempt rows older than $1 days.
DELETE FROM webhook_logs WHERE sent_at < now() - make_interval(days => $1::integer)
