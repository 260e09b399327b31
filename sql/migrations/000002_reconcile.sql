-- Completeness: the reconciler's position in LiteLLM_SpendLogs, and the lookups it and the drift
-- report need.
--
-- reconcile_cursors: one row per reader of an external source ("spendlogs"). `cursor` is the upper
-- bound of the last window read and committed; the next run starts a little before it (an overlap)
-- so rows written late by LiteLLM's batched spend-log writer are still seen. Advanced only after
-- the ledger commit of the window, so a crash re-reads (harmless: the ledger deduplicates).

CREATE TABLE reconcile_cursors (
  name        text        PRIMARY KEY,
  cursor      timestamptz NOT NULL,
  last_result jsonb       NOT NULL DEFAULT '{}',
  updated_at  timestamptz NOT NULL DEFAULT now()
);

-- The reconciler and backfill store a rejected SpendLogs row once, however often they re-read it.
CREATE INDEX ingest_rejections_request_id ON ingest_rejections (request_id);

-- LiteLLM gives a cache hit a different request id in the callback and in SpendLogs
-- ("<id>_cache_hit<time.time()>", taken at two moments): such calls are matched on litellm_call_id.
CREATE INDEX usage_events_cache_hit_call_id ON usage_events ((metadata ->> 'litellm_call_id'))
  WHERE metadata ? 'cache_hit';

-- Rows recovered from SpendLogs, for the operator's "how much did the callbacks lose" question.
CREATE INDEX usage_events_recovered ON usage_events (received_at)
  WHERE source IN ('reconciler', 'backfill');
