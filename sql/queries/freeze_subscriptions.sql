-- Fills in the subscription id of events about to be sent for the first time; once set it never
-- changes, so a resend goes to the same subscription and Lago's dedupe applies. Runs in the batch's
-- transaction (the rows are locked by it), which commits before the send. $1: JSON array of
-- {id, subscription}.
UPDATE lago_events e
SET external_subscription_id = s.subscription
FROM jsonb_to_recordset($1::text::jsonb) AS s(id bigint, subscription text)
WHERE e.id = s.id AND e.state = 'pending' AND e.external_subscription_id IS NULL
