-- Cheaper writes on the hot paths, each measured (BENCHMARKS.md, issue 12).
--
-- Delivery now writes an outbox row once (its settle; the claim is a row lock). Every such UPDATE
-- changes the row's state, so it is never HOT and inserts a new entry into each of the table's
-- indexes. lago_events_usage (usage_event_id) was the costliest of them: a non-unique index whose
-- posting lists are rewritten for each new row version. Nothing on a hot path reads it; the drift
-- report finds a call's events by transaction id instead (drift_ledger.sql), through the unique
-- index every row has anyway. Measured: a 100-event claim + settle cost 2.08 ms of PostgreSQL with
-- it, 1.55 ms without.
DROP INDEX IF EXISTS lago_events_usage;

-- Ingest: what PostgreSQL does per row, each removal measured with 1,000-call batches (PostgreSQL CPU
-- seconds per 10,000 calls; BENCHMARKS.md):
--
-- The outbox's foreign key (0.63 -> 0.46). Each outgoing event ran a referential-integrity check
-- that locks its ledger row (SELECT ... FOR KEY SHARE), two per call. It guarded against nothing
-- that can happen: outbox rows are inserted only by insert_usage.sql, joined to the ledger rows the
-- same statement inserted, and ledger rows are never updated or deleted. It also caused the one
-- pathological slowdown seen (a cached sequential-scan plan for the check, README: Performance).
ALTER TABLE lago_events DROP CONSTRAINT IF EXISTS lago_events_usage_event_id_fkey;

-- The two time indexes serve only operator range queries (drift windows, stats' last hour/day) on
-- columns that grow with insertion order in a table whose rows never move: a BRIN index answers
-- those ranges and costs next to nothing per insert, where a B-tree costs an insert per row.
DROP INDEX IF EXISTS usage_events_event_time;
CREATE INDEX usage_events_event_time ON usage_events USING brin (event_time) WITH (autosummarize = on);
DROP INDEX IF EXISTS usage_events_received_at;
CREATE INDEX usage_events_received_at ON usage_events USING brin (received_at) WITH (autosummarize = on);
