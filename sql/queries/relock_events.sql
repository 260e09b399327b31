-- Locks again, in a new transaction, the events of a batch whose subscriptions were just frozen
-- (and committed). Any that another worker took in between are skipped: it sends them, to the same
-- frozen subscription, so Lago's dedupe holds either way. $1: event ids.
SELECT id
FROM lago_events
WHERE id = ANY($1::bigint[]) AND state = 'pending'
FOR UPDATE SKIP LOCKED
