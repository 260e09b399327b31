-- Fingerprints of already stored calls, to tell duplicates from conflicts.
SELECT request_id, fingerprint FROM usage_events WHERE request_id = ANY($1::text[])
