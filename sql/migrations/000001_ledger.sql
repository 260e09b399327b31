-- The usage ledger, its outbox of Lago events, delivery attempts and the operator function.
--
-- usage_events: one immutable row per LLM call, keyed by the call's request id.
-- lago_events:  the outbox. Rows are derived from a ledger row in the same transaction, so an
--               acknowledged call always has its outgoing events. Their payload is frozen at insert;
--               only the subscription id is filled in once, before the first send, and then frozen.
--
-- Outbox states (every event ends in exactly one of them, none is ever deleted):
--
--   pending ──200/value_already_exist──► delivered
--      │ ▲
--      │ └── reprocess ◄── failed      (Lago rejected it, or retries/age exhausted; last_error says why)
--      │ └── reprocess ◄── unbillable  (no Lago subscription for the customer; last_error says why)
--      ├──────────────────► failed
--      └──────────────────► unbillable
--
-- A pending row is claimed by a worker with a lease (lease_token, next_attempt_at pushed past the
-- lease): a crashed worker's rows simply become due again when the lease runs out, and a late worker
-- cannot settle a row another worker has claimed since, because settling checks the lease token.

CREATE TABLE usage_events (
  id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  request_id         text        NOT NULL,
  event_time         timestamptz NOT NULL,          -- the call's start time
  customer_id        text        NOT NULL,
  user_id            text,
  team_id            text,
  org_id             text,
  api_key_hash       text,                          -- a hash, never a raw key
  model              text        NOT NULL,
  provider           text,
  call_type          text,
  status             text        NOT NULL DEFAULT 'success' CHECK (status IN ('success', 'failure')),
  tokens_input       bigint      NOT NULL CHECK (tokens_input >= 0),
  tokens_output      bigint      NOT NULL CHECK (tokens_output >= 0),
  tokens_cached      bigint      NOT NULL DEFAULT 0 CHECK (tokens_cached >= 0),
  tokens_cache_write bigint      NOT NULL DEFAULT 0 CHECK (tokens_cache_write >= 0),
  tokens_reasoning   bigint      NOT NULL DEFAULT 0 CHECK (tokens_reasoning >= 0),
  total_tokens       bigint      NOT NULL CHECK (total_tokens >= 0),
  cost_usd           numeric(24, 12) NOT NULL CHECK (cost_usd >= 0),
  cost_source        text        NOT NULL DEFAULT 'reported' CHECK (cost_source IN ('reported', 'priced')),
  billable           boolean     NOT NULL DEFAULT true,
  not_billable_reason text,
  source             text        NOT NULL CHECK (source IN ('api', 'litellm', 'reconciler', 'backfill')),
  fingerprint        text        NOT NULL,          -- hash of the billing-relevant content (conflicts)
  metadata           jsonb       NOT NULL DEFAULT '{}',
  received_at        timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT usage_events_request_id_key UNIQUE (request_id)
);
CREATE INDEX usage_events_customer_time ON usage_events (customer_id, event_time);
CREATE INDEX usage_events_event_time ON usage_events (event_time);
CREATE INDEX usage_events_received_at ON usage_events (received_at);

CREATE TABLE lago_events (
  id                       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  usage_event_id           bigint      NOT NULL REFERENCES usage_events (id),
  transaction_id           text        NOT NULL,    -- <request id>:<token type> or <request id>:cost
  customer_id              text        NOT NULL,
  code                     text        NOT NULL,
  event_timestamp          numeric(16, 3) NOT NULL, -- Unix seconds, the call's start time, frozen
  properties               jsonb       NOT NULL,
  precise_total_amount_cents numeric(30, 12),
  external_subscription_id text,                    -- resolved before the first send, then frozen
  state                    text        NOT NULL DEFAULT 'pending'
                             CHECK (state IN ('pending', 'delivered', 'failed', 'unbillable')),
  attempts                 integer     NOT NULL DEFAULT 0,
  next_attempt_at          timestamptz NOT NULL DEFAULT now(),
  lease_token              uuid,
  last_error               text,
  last_status              integer,
  lago_duplicate           boolean     NOT NULL DEFAULT false, -- Lago said value_already_exist
  created_at               timestamptz NOT NULL DEFAULT now(),
  settled_at               timestamptz,
  CONSTRAINT lago_events_transaction_id_key UNIQUE (transaction_id)
);
-- The only index the delivery hot path reads: it holds pending rows only, so it stays small however
-- many delivered rows accumulate.
CREATE INDEX lago_events_due ON lago_events (next_attempt_at, id) WHERE state = 'pending';
CREATE INDEX lago_events_usage ON lago_events (usage_event_id);
CREATE INDEX lago_events_parked ON lago_events (state, created_at) WHERE state IN ('failed', 'unbillable');
CREATE INDEX lago_events_settled_at ON lago_events (settled_at) WHERE state = 'delivered';

-- One row per HTTP attempt to Lago (pruned by WEBHOOK_LOG_RETENTION_DAYS).
CREATE TABLE webhook_logs (
  id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  sent_at      timestamptz NOT NULL DEFAULT now(),
  success      boolean     NOT NULL,
  status_code  integer,
  event_count  integer     NOT NULL,
  duration_ms  integer     NOT NULL,
  error        text,
  worker_id    text
);
CREATE INDEX webhook_logs_sent_at ON webhook_logs (sent_at);

-- Same request id, materially different content: the first version stays, the conflict is kept here.
CREATE TABLE usage_conflicts (
  id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  request_id     text        NOT NULL,
  received_at    timestamptz NOT NULL DEFAULT now(),
  source         text        NOT NULL,
  existing_fingerprint text  NOT NULL,
  incoming_fingerprint text  NOT NULL,
  incoming       jsonb       NOT NULL
);
CREATE INDEX usage_conflicts_request_id ON usage_conflicts (request_id);

-- LiteLLM payloads that could not become a ledger row (e.g. no resolvable customer). Kept so that
-- nothing the proxy sent is silently dropped; prompts and completions are never stored.
CREATE TABLE ingest_rejections (
  id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  received_at  timestamptz NOT NULL DEFAULT now(),
  source       text        NOT NULL,
  request_id   text,
  reason       text        NOT NULL,
  payload      jsonb       NOT NULL
);
CREATE INDEX ingest_rejections_received_at ON ingest_rejections (received_at);

-- Per-model requests, tokens and cost of one customer in [from, to).
CREATE FUNCTION get_usage_by_customer(p_customer_id text, p_from timestamptz, p_to timestamptz)
RETURNS TABLE (
  model text, requests bigint, input_tokens numeric, output_tokens numeric, cached_tokens numeric,
  reasoning_tokens numeric, total_tokens numeric, total_cost numeric
)
LANGUAGE sql STABLE AS $$
  SELECT u.model, count(*), sum(u.tokens_input), sum(u.tokens_output), sum(u.tokens_cached),
         sum(u.tokens_reasoning), sum(u.total_tokens), sum(u.cost_usd)
  FROM usage_events u
  WHERE u.customer_id = p_customer_id AND u.event_time >= p_from AND u.event_time < p_to
  GROUP BY u.model
  ORDER BY u.model
$$;
