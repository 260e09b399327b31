-- Moves a reader's cursor forward (never back) once the window up to $2 is committed.
INSERT INTO reconcile_cursors AS c (name, cursor, last_result, updated_at)
VALUES ($1, $2::timestamptz, $3::text::jsonb, now())
ON CONFLICT (name) DO UPDATE
SET cursor = GREATEST(c.cursor, EXCLUDED.cursor),
    last_result = EXCLUDED.last_result,
    updated_at = now()
RETURNING cursor
