-- Takes the periodic drift check for this interval: true for one replica, false for the others
-- (and for the same replica until $2 seconds have passed since the last take).
-- $1: check name; $2: interval in seconds.
INSERT INTO drift_checks AS d (name, started_at)
VALUES ($1, now())
ON CONFLICT (name) DO UPDATE
SET started_at = now()
WHERE d.started_at <= now() - make_interval(secs => $2::float8)
RETURNING true AS taken
