-- Stores the result of a completed drift check. $1: name; $2, $3: window; $4: duration (ms);
-- $5: summary (JSON text).
UPDATE drift_checks
SET checked_at = now(),
    window_since = $2::timestamptz,
    window_until = $3::timestamptz,
    duration_ms = $4::integer,
    summary = $5::text::jsonb,
    last_error = NULL,
    failed_at = NULL
WHERE name = $1
