-- The periodic drift check (src/completeness/drift-check.ts): one row holding the latest result, so
-- every replica's /health/metrics reports the same figures whichever replica ran the check.
CREATE TABLE IF NOT EXISTS drift_checks (
  name text PRIMARY KEY,
  -- When a replica last took the check (only one takes it per interval).
  started_at timestamptz NOT NULL,
  -- When the last check that completed completed, and what it found (null before the first one).
  checked_at timestamptz,
  window_since timestamptz,
  window_until timestamptz,
  duration_ms integer,
  -- {unexplained_calls, spendlogs_available, calls: {spendlogs, ledger, delivered},
  --  differences: [{kind, explained, calls}]}
  summary jsonb,
  -- The error of the last attempt, if it failed (cleared by the next success).
  last_error text,
  failed_at timestamptz
);
