import { fromUnits, toUnits, UNIT } from "../decimal.ts";
import type { UsageRecord } from "../ingest/record.ts";
import type { Settings } from "../settings.ts";

/** An outgoing Lago event as the outbox freezes it. */
export interface OutgoingEvent {
  transactionId: string;
  code: string;
  /** Unix seconds, the call's start time. */
  timestamp: number;
  properties: Record<string, string | number>;
  preciseTotalAmountCents: string | null;
  /** Known at ingest for `same` and `template` mapping; null for `lookup` (resolved before the first send). */
  externalSubscriptionId: string | null;
}

export const TOKEN_TYPES = ["input", "output", "cached_input", "cache_write", "reasoning"] as const;
export type TokenType = (typeof TOKEN_TYPES)[number];

/**
 * Every ending a Lago transaction id can have after its call's request id (`<request id>:<ending>`):
 * one per token type, and `cost`. Queries find a call's outbox events by these (drift_ledger.sql)
 * through the unique transaction_id index, so none is needed on usage_event_id.
 */
export const TRANSACTION_ID_SUFFIXES: readonly string[] = [...TOKEN_TYPES.map((t) => `:${t}`), ":cost"];

/**
 * Splits a call's tokens into disjoint billable parts: uncached input, cache reads, cache writes,
 * output without reasoning, reasoning. Every input and output token lands in exactly one part, so
 * a plan pricing each part sums to the call's real usage whatever the provider's convention.
 */
export function tokenParts(r: UsageRecord): [TokenType, number][] {
  const cached = Math.min(r.tokensCached, r.tokensInput);
  const cacheWrite = Math.min(r.tokensCacheWrite, r.tokensInput - cached);
  const reasoning = Math.min(r.tokensReasoning, r.tokensOutput);
  const parts: [TokenType, number][] = [
    ["input", r.tokensInput - cached - cacheWrite],
    ["cached_input", cached],
    ["cache_write", cacheWrite],
    ["output", r.tokensOutput - reasoning],
    ["reasoning", reasoning],
  ];
  return parts.filter(([, n]) => n > 0);
}

/** The subscription id a customer maps to without asking Lago, or null when it must be looked up. */
export function staticSubscriptionId(settings: Settings["lago"], customerId: string): string | null {
  switch (settings.subscriptionMapping) {
    case "same":
      return customerId;
    case "template":
      return settings.subscriptionTemplate.replaceAll("{customer_id}", customerId);
    case "lookup":
      return null;
  }
}

/** Lago events for one billable ledger row, by the configured billing mode. */
export function toLagoEvents(r: UsageRecord, settings: Settings["lago"]): OutgoingEvent[] {
  if (!r.billable) return [];
  const subscription = staticSubscriptionId(settings, r.customerId);
  const base = { model: r.model, provider: r.provider ?? "unknown" };
  if (settings.billingMode === "cost") {
    const cents =
      (toUnits(r.costUsd) * 100n * (UNIT * 100n + toUnits(settings.costMarkupPercent))) / (UNIT * 100n);
    return [
      {
        transactionId: `${r.requestId}:cost`, // TRANSACTION_ID_SUFFIXES
        code: settings.costMetricCode,
        timestamp: r.timestamp,
        // Lago's dynamic charge bills nothing when the aggregated field sums to 0: send one unit per call.
        properties: { ...base, units: 1, tokens: r.totalTokens },
        preciseTotalAmountCents: fromUnits(cents, 12),
        externalSubscriptionId: subscription,
      },
    ];
  }
  return tokenParts(r).map(([type, tokens]) => ({
    transactionId: `${r.requestId}:${type}`,
    code: settings.metricCode,
    timestamp: r.timestamp,
    properties: { ...base, type, tokens },
    preciseTotalAmountCents: null,
    externalSubscriptionId: subscription,
  }));
}
