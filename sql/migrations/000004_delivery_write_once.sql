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
