import type { Sql } from "../db/pool.ts";
import { query } from "../db/queries.ts";
import type { Settings } from "../settings.ts";
import { staticSubscriptionId } from "./mapping.ts";
import { describeSpan, placeEvent, type SubscriptionView } from "./subscription-span.ts";
import type { MappingKey, SubscriptionResolver } from "./subscriptions.ts";

/** The time span of a customer's usage in the ledger (Unix seconds). */
export interface CustomerUsage {
  customerId: string;
  firstAt: number;
  lastAt: number;
}

export interface SubscriptionFinding {
  customer: string;
  /** The mapping key asked about: a subscription id, or the customer (lookup mapping). */
  subscription: string;
  ok: boolean;
  /** The subscription(s) Lago has for the key, in words ("active since ...", "pending, starts at ..."). */
  lago: string;
  /** Why part of this customer's usage will not be billed, and what to do; null when all of it will. */
  problem: string | null;
}

const iso = (s: number) => new Date(s * 1000).toISOString();

/** The customers to check: those with usage still to be billed, or recent, latest first. */
async function customersToAudit(
  sql: Sql,
  limit: number,
): Promise<{ customers: CustomerUsage[]; total: number }> {
  const rows = await sql.unsafe<
    { customer_id: string; first_at: number; last_at: number; customers: number }[]
  >(query("customer_usage_spans"), [limit]);
  return {
    customers: rows.map((r) => ({ customerId: r.customer_id, firstAt: r.first_at, lastAt: r.last_at })),
    total: rows[0]?.customers ?? 0,
  };
}

function summarise(view: SubscriptionView): string {
  const all = [...view.active, ...view.pending, ...view.terminated];
  if (all.length === 0) return "none";
  return all.map((s) => `"${s.externalId}" ${describeSpan(s)}`).join("; ");
}

/**
 * Compares each customer's usage span with what Lago has for the subscription it maps to: usage
 * before the subscription starts, after it was terminated, a pending or missing subscription, all
 * of which Lago would accept and never bill. Asks Lago fresh (uncached); Lago errors are findings.
 */
export async function auditSubscriptions(
  resolver: SubscriptionResolver,
  settings: Settings["lago"],
  customers: CustomerUsage[],
): Promise<SubscriptionFinding[]> {
  const findings: SubscriptionFinding[] = [];
  for (const c of customers) {
    const staticId = staticSubscriptionId(settings, c.customerId);
    const key: MappingKey =
      staticId === null ? { kind: "customer", id: c.customerId } : { kind: "subscription", id: staticId };
    const label = staticId ?? `(lookup of customer "${c.customerId}")`;
    let view: SubscriptionView;
    try {
      view = await resolver.describe(key);
    } catch (err) {
      findings.push({
        customer: c.customerId,
        subscription: label,
        ok: false,
        lago: "unknown",
        problem: `could not ask Lago: ${(err as Error).message}`,
      });
      continue;
    }
    const first = placeEvent(view, c.firstAt);
    const last = placeEvent(view, c.lastAt);
    const problems: string[] = [];
    for (const [p, at] of [
      [first, c.firstAt],
      [last, c.lastAt],
    ] as const) {
      if (p.kind === "park" || p.kind === "hold") {
        const text = `usage at ${iso(at)}: ${p.reason}`;
        if (!problems.some((q) => q.endsWith(p.reason))) problems.push(text);
      }
    }
    const span =
      c.firstAt === c.lastAt ? `usage at ${iso(c.firstAt)}` : `usage ${iso(c.firstAt)} … ${iso(c.lastAt)}`;
    findings.push({
      customer: c.customerId,
      subscription: label,
      ok: problems.length === 0,
      lago: summarise(view),
      problem: problems.length === 0 ? null : `customer "${c.customerId}" (${span}): ${problems.join("; ")}`,
    });
  }
  return findings;
}

/** Customers compared with their subscriptions in one audit; beyond this the report says how many were not. */
export const MAX_AUDITED_CUSTOMERS = 50;

/**
 * The audit of the ledger's customers with usage to bill or in the last day, at most
 * MAX_AUDITED_CUSTOMERS of them (latest first): for `validate` and `lago setup`.
 */
export async function auditLedger(
  sql: Sql,
  resolver: SubscriptionResolver,
  settings: Settings["lago"],
): Promise<{ findings: SubscriptionFinding[]; unchecked: number }> {
  const { customers, total } = await customersToAudit(sql, MAX_AUDITED_CUSTOMERS);
  const findings = await auditSubscriptions(resolver, settings, customers);
  return { findings, unchecked: Math.max(0, total - customers.length) };
}
