-- After Lago comes back: events waiting out a long backoff are made due now.
UPDATE lago_events
SET next_attempt_at = now()
WHERE state = 'pending' AND lease_token IS NULL AND next_attempt_at > now()
