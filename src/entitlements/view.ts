import type { Service } from "../service.ts";
import type { EntitlementRow } from "./store.ts";

/** One customer in a list: the decision and the main inputs, as stored. */
export function summary(r: EntitlementRow) {
  return {
    customer_id: r.customer_id,
    state: r.state,
    reason: r.reason,
    message: r.message,
    since: r.since.toISOString(),
    override:
      r.override_state === null
        ? null
        : {
            state: r.override_state,
            reason: r.override_reason,
            actor: r.override_actor,
            at: r.override_at?.toISOString() ?? null,
          },
    computed: { state: r.computed_state, reason: r.computed_reason },
    subscription_status: r.subscription_status,
    prepaid: r.wallet_fingerprint !== null,
    available_cents: r.available_cents,
    limit_cents: r.limit_cents,
    usage_cents: r.usage_cents,
    decided_at: r.decided_at?.toISOString() ?? null,
    refreshed_at: r.refreshed_at?.toISOString() ?? null,
    refresh_error: r.refresh_error,
  };
}

export interface ListOptions {
  state?: "allowed" | "blocked" | undefined;
  limit?: number | undefined;
}

/** GET /webhooks/entitlements and `entitlements list`: blocked customers first, then the rest. */
export async function listEntitlements(service: Pick<Service, "sql" | "settings">, opts: ListOptions = {}) {
  const limit = Math.min(Math.max(opts.limit ?? 1000, 1), 10_000);
  const rows = await service.sql<EntitlementRow[]>`
    SELECT * FROM entitlements
    WHERE ${opts.state === undefined ? service.sql`true` : service.sql`state = ${opts.state}`}
    ORDER BY (state = 'blocked') DESC, since DESC
    LIMIT ${limit}`;
  const [counts] = await service.sql<{ allowed: number; blocked: number }[]>`
    SELECT count(*) FILTER (WHERE state = 'allowed')::int AS allowed,
           count(*) FILTER (WHERE state = 'blocked')::int AS blocked
    FROM entitlements`;
  return {
    enforcement: service.settings.entitlements.mode,
    fail_mode: service.settings.entitlements.failMode,
    counts: counts ?? { allowed: 0, blocked: 0 },
    customers: rows.map(summary),
  };
}

/**
 * GET /webhooks/entitlements?customer_id= and `entitlements show`: the decision computed now from
 * PostgreSQL and the ledger (what the engine would publish), its inputs, the wallets and
 * subscriptions we know of, the history and the last webhooks about the customer. null: unknown.
 */
export async function showEntitlement(service: Service, customerId: string) {
  const evals = await service.entitlements.engine.evaluate([customerId]);
  const e = evals.get(customerId);
  if (!e) return null;
  const { sql } = service;
  const [subs, history, webhooks] = await Promise.all([
    sql`SELECT lago_id, external_id, status, plan_code, started_at, terminated_at, source, updated_at
        FROM entitlement_subscriptions WHERE customer_id = ${customerId} ORDER BY updated_at DESC`,
    sql`SELECT at, state, reason, message, previous_state, previous_reason, source, actor, detail
        FROM entitlement_history WHERE customer_id = ${customerId} ORDER BY at DESC, id DESC LIMIT 50`,
    sql`SELECT received_at, webhook_type, outcome, detail, deliveries, unique_key
        FROM lago_webhooks WHERE customer_id = ${customerId} ORDER BY received_at DESC, id DESC LIMIT 20`,
  ]);
  const d = e.decision;
  return {
    ...summary(e.row),
    now: {
      state: d.state,
      reason: d.reason,
      message: d.message,
      available_cents: d.availableCents,
      headroom_cents: d.headroom?.cents ?? null,
      unaccounted_cents: e.ledger?.walletCents ?? null,
      limit_unaccounted_cents: e.ledger?.usageCents ?? null,
      ledger_seen_through: e.ledger?.seenThrough ?? null,
    },
    wallet_counted_until: e.row.wallet_counted_until?.toISOString() ?? null,
    usage_counted_until: e.row.usage_counted_until?.toISOString() ?? null,
    usage_period: {
      start: e.row.usage_period_start?.toISOString() ?? null,
      end: e.row.usage_period_end?.toISOString() ?? null,
    },
    wallets: e.wallets.map((w) => ({
      lago_id: w.lago_id,
      status: w.status,
      currency: w.currency,
      balance_cents: Number(w.balance_cents),
      ongoing_balance_cents: Number(w.ongoing_balance_cents),
      ongoing_usage_balance_cents: Number(w.ongoing_usage_balance_cents),
      last_balance_sync_at: w.last_balance_sync_at?.toISOString() ?? null,
      source: w.source,
      read_at: w.read_at.toISOString(),
    })),
    subscriptions: subs,
    history,
    webhooks,
  };
}
