import { describe, expect, it } from "vitest";
import type { UsageRecord } from "../../src/ingest/record.ts";
import { fingerprint } from "../../src/ingest/record.ts";
import { staticSubscriptionId, tokenParts, toLagoEvents } from "../../src/lago/mapping.ts";
import { loadSettings } from "../../src/settings.ts";

const record = (over: Partial<UsageRecord> = {}): UsageRecord => ({
  requestId: "req-1",
  timestamp: 1_790_000_000.123,
  customerId: "customer-123",
  userId: null,
  teamId: null,
  orgId: null,
  apiKeyHash: null,
  model: "gpt-4o",
  provider: "openai",
  callType: null,
  status: "success",
  tokensInput: 1000,
  tokensOutput: 200,
  tokensCached: 0,
  tokensCacheWrite: 0,
  tokensReasoning: 0,
  totalTokens: 1200,
  costUsd: "0.008",
  costSource: "reported",
  billable: true,
  notBillableReason: null,
  source: "api",
  metadata: {},
  ...over,
});

describe("mapping a call to Lago events", () => {
  const lago = loadSettings({}).lago;

  it("sends one event per non-zero token type, each token counted once", () => {
    const parts = tokenParts(record({ tokensCached: 600, tokensCacheWrite: 100, tokensReasoning: 50 }));
    expect(parts).toEqual([
      ["input", 300],
      ["cached_input", 600],
      ["cache_write", 100],
      ["output", 150],
      ["reasoning", 50],
    ]);
    const sum = parts.reduce((s, [, n]) => s + n, 0);
    expect(sum).toBe(1200);
  });

  it("has deterministic transaction ids, the call's start time and Lago's LLM template properties", () => {
    const events = toLagoEvents(record(), lago);
    expect(events.map((e) => e.transactionId)).toEqual(["req-1:input", "req-1:output"]);
    expect(events[0]).toMatchObject({
      code: "llm_tokens",
      timestamp: 1_790_000_000.123,
      externalSubscriptionId: "customer-123",
      properties: { tokens: 1000, model: "gpt-4o", type: "input", provider: "openai" },
    });
    expect(toLagoEvents(record(), lago)).toEqual(events);
  });

  it("sends nothing for a call that is not billable", () => {
    expect(toLagoEvents(record({ billable: false }), lago)).toEqual([]);
  });

  it("cost mode: one event with the exact cost in cents plus markup and a non-zero unit", () => {
    const cost = loadSettings({ LAGO_BILLING_MODE: "cost", LAGO_COST_MARKUP_PERCENT: "12.5" }).lago;
    const [e] = toLagoEvents(record({ costUsd: "0.00375" }), cost);
    expect(e).toMatchObject({
      transactionId: "req-1:cost",
      code: "llm_cost",
      preciseTotalAmountCents: "0.421875",
    });
    expect(e?.properties.units).toBe(1);
  });

  it("maps customers to subscriptions by configuration", () => {
    expect(staticSubscriptionId(lago, "c1")).toBe("c1");
    expect(
      staticSubscriptionId(
        loadSettings({
          LAGO_SUBSCRIPTION_MAPPING: "template",
          LAGO_SUBSCRIPTION_TEMPLATE: "sub_{customer_id}",
        }).lago,
        "c1",
      ),
    ).toBe("sub_c1");
    expect(staticSubscriptionId(loadSettings({ LAGO_SUBSCRIPTION_MAPPING: "lookup" }).lago, "c1")).toBeNull();
  });

  it("fingerprints what is billed, not where it came from", () => {
    expect(fingerprint(record({ source: "reconciler", metadata: { x: 1 } }))).toBe(fingerprint(record()));
    expect(fingerprint(record({ tokensOutput: 201 }))).not.toBe(fingerprint(record()));
  });
});
