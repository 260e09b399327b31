-- Records that a drift check failed ($2: the error); the last completed result stays.
UPDATE drift_checks SET last_error = $2, failed_at = now() WHERE name = $1
