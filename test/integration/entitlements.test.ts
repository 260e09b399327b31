/**
 * The entitlement engine in a real service against the Lago double, PostgreSQL and Redis: a prepaid
 * customer is blocked by our ledger alone (no webhook, Lago's balance untouched), a top-up webhook
 * unblocks it without counting its usage twice once Lago recomputes, subscriptions and spending
 * limits block and unblock, overrides win, Lago's rate limit is respected, and everything shows in
 * Redis (what the proxies read), the API, the history and the metrics.
 */
import { randomUUID } from "node:crypto";
import { Redis } from "ioredis";
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { setOverride } from "../../src/entitlements/store.ts";
import { createTestDatabase, type TestDatabase } from "../support/db.ts";
import { REDIS_URL } from "../support/env.ts";
import { LagoDouble } from "../support/lago-double.ts";
import type { WebhookEndpoint } from "../support/lago-prepaid.ts";
import {
  AUTH,
  eventually,
  ingestBatches,
  startService,
  type TestService,
  usageEvent,
} from "../support/service.ts";

let lago: LagoDouble;
let db: TestDatabase;
let t: TestService;
let redis: Redis;
let prefix: string;
let endpoint: WebhookEndpoint;

beforeAll(async () => {
  lago = await LagoDouble.start({ apiKey: "lago-key" });
  redis = new Redis(REDIS_URL);
});
afterAll(async () => {
  await lago.close();
  redis.disconnect();
});

async function start(env: Record<string, string> = {}) {
  t = await startService(
    db.url,
    {
      LAGO_API_URL: lago.url,
      LAGO_API_KEY: "lago-key",
      LAGO_BILLING_MODE: "cost",
      LAGO_WEBHOOK_HMAC_KEY: lago.prepaid.hmacKey,
      REDIS_URL,
      ENFORCEMENT: "enforce",
      ENTITLEMENT_REDIS_PREFIX: prefix,
      ...env,
    },
    { worker: true },
  );
  endpoint = {
    url: `${await t.app.listen({ host: "127.0.0.1", port: 0 })}/webhooks/lago`,
    algorithm: "hmac",
  };
  await t.service.entitlements.engine.start();
}

beforeEach(async () => {
  lago.reset({ entities: true });
  lago.prepaid.readRateLimitPerSecond = null;
  lago.addMetric("llm_cost", { fieldName: "units" });
  prefix = `test-ent:${randomUUID()}:`;
  db = await createTestDatabase();
});
afterEach(async () => {
  await t?.close();
  await db.drop();
  for (const k of await redis.keys(`${prefix}*`)) await redis.del(k);
});

/** A call costing `cents` US cents (cost mode: the amount Lago bills is on the event). */
const call = (customer: string, cents: number) =>
  usageEvent({ customer_id: customer, cost_usd: cents / 100, timestamp: Math.floor(Date.now() / 1000) - 1 });

const entry = async (customer: string) => {
  const text = await redis.hget(`${prefix}entries`, customer);
  return text === null
    ? null
    : (JSON.parse(text) as { s: string; r?: string; m?: string; h?: string; t?: number });
};

const show = async (customer: string) => {
  const res = await t.app.inject({
    method: "GET",
    url: `/webhooks/entitlements?customer_id=${customer}`,
    headers: AUTH,
  });
  return res.json() as Record<string, unknown> & {
    state: string;
    reason: string | null;
    now: Record<string, unknown>;
  };
};

const refreshed = (customer: string) =>
  eventually(
    async () =>
      (await db.sql`SELECT 1 FROM entitlements WHERE customer_id = ${customer} AND refreshed_at IS NOT NULL`)
        .length > 0,
    `${customer} refreshed from Lago`,
  );

describe("entitlements from our ledger and Lago", () => {
  it("blocks a prepaid customer once its calls spend the credit, with no webhook and Lago's balance unchanged", async () => {
    lago.addSubscription("cust-pre", "cust-pre");
    lago.addSubscription("cust-other", "cust-other");
    const wallet = lago.prepaid.createWallet("cust-pre", 10);
    await start();
    await ingestBatches(t, [call("cust-pre", 1), call("cust-other", 1)]);
    await refreshed("cust-pre");
    await eventually(async () => (await entry("cust-pre"))?.h !== undefined, "a headroom published");
    // 1 cent spent of 10: 9 left, before and after Lago is asked again.
    expect(await entry("cust-pre")).toMatchObject({ s: "allowed", r: "wallet_exhausted" });
    expect(Number((await entry("cust-pre"))?.h)).toBeCloseTo(9, 9);
    await ingestBatches(t, [call("cust-pre", 3), call("cust-pre", 3), call("cust-pre", 3)]);
    await eventually(async () => (await entry("cust-pre"))?.s === "blocked", "cust-pre blocked");
    const e = await entry("cust-pre");
    expect(e?.r).toBe("wallet_exhausted");
    expect(e?.m).toMatch(/prepaid credit is used up \(remaining: 0\.00 USD\).*Top up/);
    expect(lago.prepaid.walletJson(wallet).ongoing_balance_cents).toBe(10); // Lago never recomputed
    expect(lago.prepaid.sent).toHaveLength(0); // and sent no webhook
    expect(await entry("cust-other")).toBeNull(); // no wallet, subscription active: nothing to say
    const s = await show("cust-pre");
    expect(s).toMatchObject({ state: "blocked", reason: "wallet_exhausted", prepaid: true });
    expect(s.now.available_cents).toBe("0");
    const history = s.history as { state: string; reason: string; source: string }[];
    expect(history[0]).toMatchObject({ state: "blocked", reason: "wallet_exhausted", source: "ledger" });
  });

  it("unblocks on a top-up webhook, and does not count usage twice once Lago recomputes the balance", async () => {
    lago.addSubscription("cust-pre", "cust-pre");
    const wallet = lago.prepaid.createWallet("cust-pre", 10);
    await start();
    await ingestBatches(t, [call("cust-pre", 6), call("cust-pre", 6)]);
    await eventually(async () => (await entry("cust-pre"))?.s === "blocked", "blocked at -2 cents");
    await eventually(() => lago.events.length === 2, "both calls delivered to Lago");
    const topUp = lago.prepaid.topUp(wallet.lago_id, 100);
    const [hook] = await lago.prepaid.sendTransactionWebhook("wallet_transaction.created", topUp, {
      to: [endpoint],
    });
    expect(hook?.response).toMatchObject({ outcome: "refresh" });
    await eventually(async () => (await entry("cust-pre"))?.s === "allowed", "unblocked by the top-up");
    expect(Number((await entry("cust-pre"))?.h)).toBeCloseTo(98, 9);
    // Lago's clock now counts the 12 cents in its ongoing balance: 110 - 12 = 98, still 98 for us.
    lago.prepaid.refreshOngoingBalances();
    expect(lago.prepaid.walletJson(wallet).ongoing_balance_cents).toBe(98);
    await new Promise((r) => setTimeout(r, 50));
    await t.service.entitlements.engine.refresh("cust-pre");
    await t.service.entitlements.engine.settle();
    expect(Number((await entry("cust-pre"))?.h)).toBeCloseTo(98, 9);
    const s = await show("cust-pre");
    expect(s.now.unaccounted_cents).toBe("0");
    const history = s.history as { state: string; reason: string | null; source: string }[];
    expect(history.map((h) => h.state).slice(0, 2)).toEqual(["allowed", "blocked"]);
    // Blocked by the ledger, or by the first reading of the wallet if both calls came before it.
    expect(history[1]).toMatchObject({ reason: "wallet_exhausted" });
    expect(["ledger", "refresh"]).toContain(history[1]?.source);
    // Unblocked by what the webhook made the service read (the refresh; or the next ledger tick
    // that ran first after it committed).
    expect(["refresh", "ledger"]).toContain(history[0]?.source);
  });

  it("blocks on subscription.terminated and unblocks when a new subscription starts", async () => {
    lago.addSubscription("cust-sub", "cust-sub");
    await start();
    await ingestBatches(t, [call("cust-sub", 1)]);
    await refreshed("cust-sub");
    const sub = lago.terminateSubscription("cust-sub");
    if (!sub) throw new Error("no subscription");
    await lago.prepaid.sendSubscriptionWebhook("subscription.terminated", sub, { to: [endpoint] });
    await eventually(async () => (await entry("cust-sub"))?.r === "subscription_terminated", "blocked");
    expect((await entry("cust-sub"))?.m).toMatch(/Your subscription ended on \d{4}-\d{2}-\d{2}\. Renew/);
    const next = lago.addSubscription("cust-sub", "cust-sub", "default-plan", {
      subscriptionAt: new Date(Date.now() - 1000),
    });
    await lago.prepaid.sendSubscriptionWebhook("subscription.started", next, { to: [endpoint] });
    await eventually(async () => (await entry("cust-sub")) === null, "unblocked");
    expect((await show("cust-sub")).state).toBe("allowed");
  });

  it("blocks a customer that has no subscription in Lago once its first calls are seen", async () => {
    await start();
    await ingestBatches(t, [call("cust-nosub", 1)]);
    await eventually(async () => (await entry("cust-nosub"))?.r === "subscription_missing", "blocked");
    expect((await entry("cust-nosub"))?.m).toMatch(/no active subscription/);
  });

  it("blocks at a spending limit (a current_usage_amount alert's hard_limit threshold, in cents)", async () => {
    lago.addSubscription("cust-lim", "cust-lim");
    lago.prepaid.addAlert("cust-lim", {
      thresholds: [
        { code: "soft", value: "2" },
        { code: "hard_limit", value: "5" },
      ],
    });
    await start();
    await ingestBatches(t, [call("cust-lim", 2)]);
    await refreshed("cust-lim");
    await eventually(async () => (await entry("cust-lim"))?.r === "spending_limit", "limit watched");
    expect((await entry("cust-lim"))?.s).toBe("allowed");
    await ingestBatches(t, [call("cust-lim", 2), call("cust-lim", 2)]);
    await eventually(async () => (await entry("cust-lim"))?.s === "blocked", "blocked at the limit");
    expect((await entry("cust-lim"))?.m).toMatch(
      /spending limit of 0\.05 USD for this billing period\. It resets on/,
    );
  });

  it("applies an alert.triggered on the limit at once, before any refresh", async () => {
    lago.addSubscription("cust-alert", "cust-alert");
    const alert = lago.prepaid.addAlert("cust-alert", { thresholds: [{ code: "hard_limit", value: "500" }] });
    await start({ ENTITLEMENT_REFRESH_INTERVAL_SECONDS: "3600" });
    await ingestBatches(t, [call("cust-alert", 1)]);
    await refreshed("cust-alert");
    lago.prepaid.readRateLimitPerSecond = 0; // Lago's API now refuses every read: only the webhook can tell
    await lago.prepaid.sendAlertTriggered(
      alert,
      "cust-alert",
      650,
      [{ code: "hard_limit", value: "500", recurring: false }],
      {
        to: [endpoint],
      },
    );
    await eventually(async () => (await entry("cust-alert"))?.s === "blocked", "blocked by the alert");
    expect((await entry("cust-alert"))?.r).toBe("spending_limit");
  });

  it("lets an operator override either way, with the reason in the history", async () => {
    lago.addSubscription("cust-ovr", "cust-ovr");
    await start();
    await ingestBatches(t, [call("cust-ovr", 1)]);
    await refreshed("cust-ovr");
    await setOverride(t.service.sql, "cust-ovr", "blocked", "chargeback under review", "ops-anna");
    await eventually(async () => (await entry("cust-ovr"))?.r === "manual", "manually blocked");
    expect((await entry("cust-ovr"))?.m).toBe(
      "Access to this account is suspended: chargeback under review. Contact support to restore it.",
    );
    await setOverride(t.service.sql, "cust-ovr", null, "resolved", "ops-anna");
    await eventually(async () => (await entry("cust-ovr")) === null, "override cleared");
    const history = (await show("cust-ovr")).history as {
      source: string;
      actor: string | null;
      message: string;
    }[];
    expect(history.filter((h) => h.source === "manual").map((h) => [h.actor, h.message])).toEqual([
      ["ops-anna", "resolved"],
      ["ops-anna", "chargeback under review"],
    ]);
  });

  it("respects Lago's rate limit on the refresh reads (429 pauses them, every customer still gets read)", async () => {
    for (const c of ["r1", "r2", "r3", "r4"]) lago.addSubscription(c, c);
    lago.prepaid.readRateLimitPerSecond = 2;
    await start({ ENTITLEMENT_REFRESH_RPS: "50" });
    await ingestBatches(
      t,
      ["r1", "r2", "r3", "r4"].map((c) => call(c, 1)),
    );
    for (const c of ["r1", "r2", "r3", "r4"]) await refreshed(c);
    expect(lago.prepaid.read429).toBeGreaterThan(0);
    const metrics = (await t.app.inject({ method: "GET", url: "/health/metrics" })).body;
    expect(metrics).toMatch(/lago_billing_entitlement_lago_rate_limited_total [1-9]/);
    expect(metrics).toMatch(/lago_billing_entitlement_customers\{state="allowed"\} 4/);
  });

  it("reports blocked customers and the proxies' rejections in the metrics", async () => {
    await start();
    await ingestBatches(t, [call("cust-m", 1)]);
    await eventually(async () => (await entry("cust-m"))?.s === "blocked", "blocked (no subscription)");
    await redis.hincrby(`${prefix}rejections`, "enforce:subscription_missing", 7);
    await redis.hset(
      `${prefix}proxies`,
      "host:1",
      JSON.stringify({ at: Date.now() / 1000, age: 0.3, v: 3, unavailable: false }),
    );
    const metrics = (await t.app.inject({ method: "GET", url: "/health/metrics" })).body;
    expect(metrics).toMatch(/lago_billing_entitlement_blocked_customers\{reason="subscription_missing"\} 1/);
    expect(metrics).toMatch(
      /lago_billing_entitlement_proxy_rejections\{mode="enforce",reason="subscription_missing"\} 7/,
    );
    expect(metrics).toMatch(/lago_billing_entitlement_proxy_cache_age_seconds 0\.3/);
    expect(metrics).toMatch(
      /lago_billing_entitlement_decisions_total\{state="blocked",reason="subscription_missing",source="[a-z]+"\} 1/,
    );
    const list = await t.app.inject({
      method: "GET",
      url: "/webhooks/entitlements?state=blocked",
      headers: AUTH,
    });
    expect(list.json()).toMatchObject({
      enforcement: "enforce",
      counts: { blocked: 1 },
      customers: [{ customer_id: "cust-m" }],
    });
  });

  it("in observe mode decides and publishes but says so", async () => {
    await start({ ENFORCEMENT: "observe" });
    await ingestBatches(t, [call("cust-obs", 1)]);
    await eventually(async () => (await entry("cust-obs"))?.s === "blocked", "decided");
    const meta = JSON.parse((await redis.get(`${prefix}meta`)) ?? "{}") as { mode: string };
    expect(meta.mode).toBe("observe");
  });
});
