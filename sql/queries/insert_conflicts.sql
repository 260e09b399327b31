-- Keeps the rejected version of a request id that was already stored with other content.
INSERT INTO usage_conflicts (request_id, source, existing_fingerprint, incoming_fingerprint, incoming)
SELECT request_id, source, existing_fingerprint, incoming_fingerprint, incoming
FROM jsonb_to_recordset($1::text::jsonb) AS x(
  request_id text, source text, existing_fingerprint text, incoming_fingerprint text, incoming jsonb)
