-- Keeps payloads that could not become ledger rows, with the reason (never prompts or completions).
INSERT INTO ingest_rejections (source, request_id, reason, payload)
SELECT source, request_id, reason, payload
FROM jsonb_to_recordset($1::text::jsonb) AS x(source text, request_id text, reason text, payload jsonb)
