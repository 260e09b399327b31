-- After Lago comes back: events waiting out a long backoff are made due now. Events a batch in
-- flight holds are skipped (not waited for): their batch settles them.
WITH waiting AS (
  SELECT id
  FROM lago_events
  WHERE state = 'pending' AND lease_token IS NULL AND next_attempt_at > now()
  FOR UPDATE SKIP LOCKED
)
UPDATE lago_events e
SET next_attempt_at = now()
FROM waiting
WHERE e.id = waiting.id
