-- Entitlements: whether the proxy serves a customer, decided from Lago (outbound webhooks and its
-- API) and from our own ledger, with the history of every decision.
--
-- lago_webhooks:  every webhook Lago sent us with a valid signature, once per X-Lago-Unique-Key (a
--                 retry of the same webhook counts a delivery), with what it changed (outcome).
-- entitlements:   one row per customer the service has seen (in the ledger or in a webhook): the
--                 inputs of its decision (Lago readings and their times, a manual override) and the
--                 decision itself.
-- entitlement_wallets, entitlement_subscriptions: the last state of each Lago wallet and
--                 subscription we know of, with the ordering data that keeps an older webhook from
--                 overriding a newer reading.
-- entitlement_history: one row per change of decision (allowed <-> blocked, or another reason) and
--                 per override set or cleared: when, why, from what source, by whom.
--
-- Decision states (README "Prepaid credits and limits"):
--
--   allowed ──wallet_exhausted──────────► blocked   remaining credit (Lago's ongoing balance minus
--      ▲                                     │       our ledger's usage Lago has not counted yet)
--      │      subscription_terminated        │       at or below ENTITLEMENT_MIN_BALANCE_CENTS
--      │      subscription_missing           │
--      │      spending_limit                 │
--      │      manual (override)              │
--      └────── top-up, new subscription, ────┘
--              new billing period, override cleared
--
-- A manual override (allowed or blocked, with a reason) wins over every computed reason until it
-- is cleared; the computed decision is still kept (computed_state/computed_reason) for the operator.

CREATE TABLE lago_webhooks (
  id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  -- X-Lago-Unique-Key (Lago's webhook id, the same on each of its retries); "sha256:<body hash>"
  -- when a Lago old enough not to send it.
  unique_key       text        NOT NULL,
  webhook_type     text        NOT NULL,
  object_type      text,
  algorithm        text        NOT NULL CHECK (algorithm IN ('hmac', 'jwt')),
  customer_id      text,
  payload          jsonb       NOT NULL,
  -- applied: it changed what we know; stale: older than what we know (kept, not applied);
  -- refresh: it only made us read Lago again; ignored: a known type with no bearing on access;
  -- unknown: a type this service does not know; unmatched: no customer could be found for it.
  outcome          text        NOT NULL
                     CHECK (outcome IN ('applied', 'stale', 'refresh', 'ignored', 'unknown', 'unmatched')),
  detail           text,
  deliveries       integer     NOT NULL DEFAULT 1,
  received_at      timestamptz NOT NULL DEFAULT now(),
  last_received_at timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT lago_webhooks_unique_key UNIQUE (unique_key)
);
CREATE INDEX lago_webhooks_customer ON lago_webhooks (customer_id, received_at);
CREATE INDEX lago_webhooks_received_at ON lago_webhooks (received_at);

CREATE TABLE entitlements (
  customer_id          text        PRIMARY KEY,
  -- The decision in force (override applied).
  state                text        NOT NULL DEFAULT 'allowed' CHECK (state IN ('allowed', 'blocked')),
  reason               text,
  message              text,                 -- what the customer is told (402 body)
  since                timestamptz NOT NULL DEFAULT now(),   -- when state or reason last changed
  -- The decision from Lago and the ledger alone.
  computed_state       text        NOT NULL DEFAULT 'allowed' CHECK (computed_state IN ('allowed', 'blocked')),
  computed_reason      text,
  override_state       text        CHECK (override_state IN ('allowed', 'blocked')),
  override_reason      text,
  override_actor       text,
  override_at          timestamptz,
  -- Subscriptions: active | pending | terminated | missing; NULL until Lago was asked.
  subscription_status  text        CHECK (subscription_status IN ('active', 'pending', 'terminated', 'missing')),
  subscription_ended_at timestamptz,
  subscriptions_read_at timestamptz,
  -- Start of the current billing period of the subscription usage is billed to (Lago's
  -- current_billing_period_started_at): our usage before it is in an invoice, not in the balance.
  period_start         timestamptz,
  -- Prepaid wallets (entitlement_wallets holds each). wallet_counted_until: our ledger's usage
  -- delivered to Lago before this time is taken as counted in Lago's ongoing balance; usage after
  -- it is subtracted. It moves only when Lago's numbers change (src/entitlements/store.ts
  -- nextCountedUntil, README "How the ledger and Lago's balance meet").
  wallet_fingerprint   text,
  wallet_counted_until timestamptz,
  wallets_read_at      timestamptz,
  -- Spending limit: the hard-limit threshold of a current_usage_amount alert, and Lago's current
  -- usage of the period (amount_cents), with the same counted-until rule as wallets.
  limit_cents          numeric,
  usage_cents          numeric,
  usage_fingerprint    text,
  usage_counted_until  timestamptz,
  usage_period_start   timestamptz,
  usage_period_end     timestamptz,
  usage_read_at        timestamptz,
  limit_alert_at       timestamptz,          -- Lago time of the last alert webhook applied
  -- The last computation (for operators; the proxy gets it through Redis).
  unaccounted_cents    numeric,
  available_cents      numeric,
  decided_at           timestamptz,
  -- Refresh from Lago's API.
  last_usage_at        timestamptz,          -- newest ledger row seen for the customer
  refreshed_at         timestamptz,          -- last complete refresh
  refresh_error        text,
  next_refresh_at      timestamptz NOT NULL DEFAULT now(),
  created_at           timestamptz NOT NULL DEFAULT now(),
  updated_at           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX entitlements_due ON entitlements (next_refresh_at);
CREATE INDEX entitlements_blocked ON entitlements (since) WHERE state = 'blocked';

CREATE TABLE entitlement_wallets (
  lago_id                     text        PRIMARY KEY,
  customer_id                 text        NOT NULL,
  status                      text        NOT NULL,     -- active | terminated
  currency                    text,
  balance_cents               bigint      NOT NULL DEFAULT 0,
  ongoing_balance_cents       bigint      NOT NULL DEFAULT 0,
  ongoing_usage_balance_cents bigint      NOT NULL DEFAULT 0,
  credits_ongoing_balance     numeric,
  rate_amount                 numeric,
  -- Ordering (Lago serialises no updated_at): terminated is final; a newer balance has a later
  -- last_balance_sync_at; within one, Lago's ongoing usage only grows (app/serializers/v1/wallet_serializer.rb).
  last_balance_sync_at        timestamptz,
  source                      text        NOT NULL CHECK (source IN ('api', 'webhook')),
  read_at                     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX entitlement_wallets_customer ON entitlement_wallets (customer_id);

CREATE TABLE entitlement_subscriptions (
  lago_id       text        PRIMARY KEY,
  customer_id   text        NOT NULL,
  external_id   text        NOT NULL,
  status        text        NOT NULL,   -- pending | active | terminated | canceled; never moves back
  plan_code     text,
  started_at    timestamptz,
  terminated_at timestamptz,
  source        text        NOT NULL CHECK (source IN ('api', 'webhook')),
  updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX entitlement_subscriptions_customer ON entitlement_subscriptions (customer_id);

CREATE TABLE entitlement_history (
  id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  customer_id     text        NOT NULL,
  at              timestamptz NOT NULL DEFAULT now(),
  state           text        NOT NULL,
  reason          text,
  message         text,
  previous_state  text,
  previous_reason text,
  -- ledger | refresh | webhook | manual (override set or cleared) | engine (first decision)
  source          text        NOT NULL,
  actor           text,
  detail          jsonb       NOT NULL DEFAULT '{}'
);
CREATE INDEX entitlement_history_customer ON entitlement_history (customer_id, at);
