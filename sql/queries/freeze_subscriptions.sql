-- Fills in the subscription id of events about to be sent for the first time; once set it never
-- changes, so a resend goes to the same subscription and Lago's dedupe applies. $1: lease token,
-- $2: JSON array of {id, subscription}.
UPDATE lago_events e
SET external_subscription_id = s.subscription
FROM jsonb_to_recordset($2::text::jsonb) AS s(id bigint, subscription text)
WHERE e.id = s.id AND e.lease_token = $1::uuid AND e.state = 'pending' AND e.external_subscription_id IS NULL
