import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { createTestDatabase, type TestDatabase } from "../support/db.ts";
import { LagoDouble } from "../support/lago-double.ts";
import {
  AUTH,
  eventually,
  ingestBatches,
  outboxStates,
  startService,
  type TestService,
  usageEvent,
} from "../support/service.ts";

let lago: LagoDouble;
let db: TestDatabase;
let t: TestService | undefined;

beforeAll(async () => {
  lago = await LagoDouble.start({ apiKey: "lago-key" });
});
afterAll(async () => {
  await lago.close();
});
beforeEach(async () => {
  lago.reset({ entities: true });
  lago.setRateLimit(null);
  lago.setApiKey("lago-key");
  lago.latencyMs = 0;
  lago.addMetric("llm_tokens");
  lago.addMetric("llm_cost");
  lago.addSubscription("customer-123", "customer-123");
  db = await createTestDatabase();
});
afterEach(async () => {
  await t?.close();
  t = undefined;
  await db.drop();
});

const env = (over: Record<string, string> = {}) => ({
  LAGO_WEBHOOK_URL: lago.url,
  LAGO_API_KEY: "lago-key",
  ...over,
});

const ingest = ingestBatches;

const states = () => outboxStates(db.sql);

const allDelivered = (n: number) => async () => (await states()).delivered === n;

const eventRequests = () => lago.requests.filter((r) => r.path.includes("/events")).map((r) => r.eventCount);

function exactlyOnce() {
  const counts = lago.countByTransaction();
  for (const [id, c] of counts) if (c !== 1) throw new Error(`${id} stored ${c} times`);
  return counts.size;
}

describe("delivery to Lago", () => {
  it("delivers every event exactly once, 100 per batch, with explicit timestamps", async () => {
    t = await startService(db.url, env(), { worker: true });
    const events = Array.from({ length: 1200 }, () => usageEvent());
    await ingest(t, events);
    await eventually(allDelivered(2400), "2400 delivered");
    expect(exactlyOnce()).toBe(2400);
    expect(lago.requests.every((r) => r.eventCount <= 100)).toBe(true);
    const first = lago.events.find((e) => e.transaction_id === `${events[0]?.request_id}:input`);
    expect(first).toMatchObject({
      timestamp: events[0]?.timestamp,
      external_subscription_id: "customer-123",
      code: "llm_tokens",
    });
    expect(first?.properties).toEqual({ tokens: 100, model: "gpt-4o", type: "input", provider: "openai" });
    const [log] =
      await db.sql`SELECT count(*)::int AS n, sum(event_count)::int AS events, bool_and(success) AS ok FROM webhook_logs`;
    expect(log).toMatchObject({ events: 2400, ok: true });
    const stats = (await t.app.inject({ method: "GET", url: "/webhooks/stats", headers: AUTH })).json();
    expect(stats.events).toMatchObject({ delivered: 2400, pending: 0 });
    expect(stats.delivery_lag_seconds.p50).toBeGreaterThan(0);
    expect(stats.last_success_at).not.toBeNull();
  });

  it("treats value_already_exist as delivered, parks other 422s with Lago's reason and resends the rest", async () => {
    t = await startService(db.url, env(), { worker: false });
    // 50 calls = one batch of 100 events: one poisoned, one Lago already has.
    const events = Array.from({ length: 50 }, () => usageEvent());
    await ingest(t, events);
    // Lago already has event 0's input (e.g. sent by a worker that crashed before settling).
    lago.addSubscription("other", "other");
    await fetch(`${lago.url}/api/v1/events/batch`, {
      method: "POST",
      headers: { authorization: "Bearer lago-key", "content-type": "application/json" },
      body: JSON.stringify({
        events: [
          {
            transaction_id: `${events[0]?.request_id}:input`,
            external_subscription_id: "customer-123",
            code: "llm_tokens",
            timestamp: events[0]?.timestamp,
            properties: { tokens: 100 },
          },
        ],
      }),
    });
    // One event Lago will refuse (blank transaction id: value_is_mandatory).
    const badId = `${events[1]?.request_id}:output`;
    await db.sql`UPDATE lago_events SET transaction_id = '' WHERE transaction_id = ${badId}`;
    const worker = await startService(db.url, env(), { worker: true });
    try {
      await eventually(async () => (await states()).pending === undefined, "nothing pending");
      const s = await states();
      expect(s).toEqual({ delivered: 99, failed: 1 });
      const [failed] = await db.sql`SELECT last_error, last_status FROM lago_events WHERE state = 'failed'`;
      expect(failed?.last_error).toMatch(/value_is_mandatory/);
      expect(failed?.last_status).toBe(422);
      const [dup] =
        await db.sql`SELECT lago_duplicate FROM lago_events WHERE transaction_id = ${`${events[0]?.request_id}:input`}`;
      expect(dup?.lago_duplicate).toBe(true);
      expect(lago.rejected422).toBeGreaterThanOrEqual(1);
      // The operator fixes the cause and reprocesses: it is delivered, once.
      await db.sql`UPDATE lago_events SET transaction_id = ${badId} WHERE transaction_id = ''`;
      const res = await worker.app.inject({
        method: "POST",
        url: "/webhooks/reprocess",
        payload: { states: ["failed"] },
        headers: AUTH,
      });
      expect(res.json()).toMatchObject({ moved: 1 });
      await eventually(allDelivered(100), "100 delivered");
    } finally {
      await worker.close();
    }
    expect(exactlyOnce()).toBe(100);
    expect(lago.requests.filter((r) => r.path.includes("/events/batch"))[1]?.eventCount).toBe(100);
  });

  it("pauses everything on 429 until X-RateLimit-Reset and loses nothing", async () => {
    lago.setRateLimit(2);
    t = await startService(db.url, env({ LAGO_BATCH_SIZE: "10" }), { worker: true });
    await ingest(
      t,
      Array.from({ length: 50 }, () => usageEvent()),
    );
    await eventually(allDelivered(100), "100 delivered", 30_000);
    expect(lago.count429).toBeGreaterThan(0);
    expect(exactlyOnce()).toBe(100);
    // After a 429 the whole sink waits: no storm of 429s.
    expect(lago.count429).toBeLessThan(20);
  });

  it("keeps under LAGO_RATE_LIMIT_RPS on its own", async () => {
    lago.setRateLimit(5);
    t = await startService(db.url, env({ LAGO_BATCH_SIZE: "10", LAGO_RATE_LIMIT_RPS: "4" }), {
      worker: true,
    });
    await ingest(
      t,
      Array.from({ length: 60 }, () => usageEvent()),
    );
    await eventually(allDelivered(120), "120 delivered", 30_000);
    expect(lago.count429).toBe(0);
  });

  it("retries 5xx and connection resets with backoff, then delivers", async () => {
    t = await startService(db.url, env(), { worker: true });
    lago.failNext(3, 503);
    await ingest(
      t,
      Array.from({ length: 5 }, () => usageEvent()),
    );
    await eventually(allDelivered(10), "10 delivered");
    lago.setMode("reset");
    await ingest(
      t,
      Array.from({ length: 5 }, () => usageEvent()),
    );
    await eventually(
      async () => (await db.sql`SELECT count(*)::int AS n FROM webhook_logs WHERE NOT success`)[0]?.n >= 5,
      "failures logged",
    );
    lago.setMode("ok");
    await eventually(allDelivered(20), "20 delivered");
    expect(exactlyOnce()).toBe(20);
    const [f] = await db.sql`SELECT error FROM webhook_logs WHERE NOT success ORDER BY id LIMIT 1`;
    expect(f?.error).toMatch(/503/);
  });

  it("rides out Lago being down (connection refused, then 503s) with backoff, not a hot loop", async () => {
    const port = lago.port;
    t = await startService(db.url, env({ LAGO_RETRY_BASE_MS: "100", LAGO_RETRY_MAX_MS: "1000" }), {
      worker: true,
    });
    const events = Array.from({ length: 20 }, () => usageEvent());
    await lago.close();
    await ingest(t, events);
    await new Promise((r) => setTimeout(r, 2000)); // connection refused
    lago = await LagoDouble.start({ apiKey: "lago-key", port });
    lago.addMetric("llm_tokens");
    lago.addSubscription("customer-123", "customer-123");
    lago.setMode("error500");
    await new Promise((r) => setTimeout(r, 2000)); // 503s
    const during = lago.requests.length;
    expect(during).toBeGreaterThan(0);
    expect(during).toBeLessThan(40); // backoff and the sink's pause, not a hot loop
    lago.setMode("ok");
    await eventually(allDelivered(40), "40 delivered after Lago is back");
    expect((await states()).failed).toBeUndefined();
    expect(exactlyOnce()).toBe(40);
    // The timestamp is the call's own, frozen at ingest: identical whichever attempt got through.
    for (const e of events) {
      expect(lago.events.find((x) => x.transaction_id === `${e.request_id}:input`)?.timestamp).toBe(
        e.timestamp,
      );
    }
  });

  it("gives up after LAGO_MAX_ATTEMPTS as failed, and reprocess delivers them later", async () => {
    t = await startService(db.url, env({ LAGO_MAX_ATTEMPTS: "2" }), { worker: true });
    lago.setMode("error500");
    const events = Array.from({ length: 4 }, () => usageEvent());
    await ingest(t, events);
    await eventually(async () => (await states()).failed === 8, "8 failed");
    const [row] = await db.sql`SELECT last_error, attempts FROM lago_events LIMIT 1`;
    expect(row?.last_error).toMatch(/gave up after 2 attempts/);
    lago.setMode("ok");
    const dry = await t.app.inject({
      method: "POST",
      url: "/webhooks/reprocess",
      payload: { dry_run: true },
      headers: AUTH,
    });
    expect(dry.json()).toMatchObject({ dry_run: true, matched: { failed: 8 }, moved: 0 });
    const res = await t.app.inject({
      method: "POST",
      url: "/webhooks/reprocess",
      payload: { states: ["failed"], ids: [events[0]?.request_id] },
      headers: AUTH,
    });
    expect(res.json()).toMatchObject({ moved: 2 });
    await eventually(allDelivered(2), "2 delivered");
    const all = await t.app.inject({
      method: "POST",
      url: "/webhooks/reprocess",
      payload: {},
      headers: AUTH,
    });
    expect(all.json()).toMatchObject({ moved: 6 });
    await eventually(allDelivered(8), "8 delivered");
    expect(exactlyOnce()).toBe(8);
  });

  it("stops on 401, keeps everything pending, says so, and resumes when the key works", async () => {
    lago.setApiKey("rotated");
    t = await startService(db.url, env(), { worker: true });
    await ingest(
      t,
      Array.from({ length: 5 }, () => usageEvent()),
    );
    await eventually(() => t?.service.sink.snapshot().state === "auth_failing", "auth_failing");
    const s = await states();
    expect(s.pending).toBe(10);
    const stats = (await t.app.inject({ method: "GET", url: "/webhooks/stats", headers: AUTH })).json();
    expect(stats.sink.state).toBe("auth_failing");
    expect(stats.sink.error).toMatch(/LAGO_API_KEY/);
    const health = (await t.app.inject({ method: "GET", url: "/health" })).json();
    expect(health.lago).toBe("auth_failing");
    const metrics = (await t.app.inject({ method: "GET", url: "/health/metrics" })).body;
    expect(metrics).toContain('lago_billing_sink_state{state="auth_failing"} 1');
    const validate = await t.app.inject({ method: "GET", url: "/webhooks/validate", headers: AUTH });
    expect(validate.statusCode).toBe(503);
    const apiKey = validate.json().checks.find((c: { name: string }) => c.name === "api_key");
    expect(apiKey).toMatchObject({ ok: false, fix: expect.stringMatching(/LAGO_API_KEY/) });
    expect(validate.body).not.toContain("rotated");
    expect(validate.body).not.toContain("lago-key");
    const [row] = await db.sql`SELECT attempts FROM lago_events LIMIT 1`;
    expect(row?.attempts).toBe(0);
    lago.setApiKey("lago-key");
    await eventually(allDelivered(10), "10 delivered after the key works again");
    expect(exactlyOnce()).toBe(10);
  });

  it("never sends blind: unknown subscriptions are unbillable until reprocessed", async () => {
    t = await startService(db.url, env(), { worker: true });
    await ingest(t, [usageEvent({ customer_id: "nobody" }), usageEvent()]);
    await eventually(
      async () => (await states()).unbillable === 2 && (await states()).delivered === 2,
      "parked",
    );
    expect(lago.eventsWithUnknownSubscription()).toHaveLength(0);
    const [row] = await db.sql`SELECT last_error FROM lago_events WHERE state = 'unbillable' LIMIT 1`;
    expect(row?.last_error).toMatch(/no subscription "nobody"/);
    lago.addSubscription("nobody", "nobody");
    const res = await t.app.inject({
      method: "POST",
      url: "/webhooks/reprocess",
      payload: { customer_id: "nobody" },
      headers: AUTH,
    });
    expect(res.json()).toMatchObject({ moved: 2, matched: { unbillable: 2 } });
    await eventually(allDelivered(4), "4 delivered");
  });

  it("looks the subscription up in Lago and freezes it (lookup mapping, Redis cache)", async () => {
    lago.addSubscription("sub_acme_2026", "acme");
    t = await startService(
      db.url,
      env({
        LAGO_SUBSCRIPTION_MAPPING: "lookup",
        REDIS_URL: process.env.TEST_REDIS_URL ?? "redis://127.0.0.1:6379/15",
      }),
      {
        worker: true,
      },
    );
    await ingest(t, [usageEvent({ customer_id: "acme" }), usageEvent({ customer_id: "acme" })]);
    await eventually(allDelivered(4), "4 delivered");
    const subs = await db.sql`SELECT DISTINCT external_subscription_id FROM lago_events`;
    expect(subs.map((s) => s.external_subscription_id)).toEqual(["sub_acme_2026"]);
    expect(lago.events.every((e) => e.external_subscription_id === "sub_acme_2026")).toBe(true);
  });

  it("template mapping and cost mode send one event per call with precise_total_amount_cents and markup", async () => {
    lago.addSubscription("sub_customer-123", "customer-123");
    t = await startService(
      db.url,
      env({
        LAGO_SUBSCRIPTION_MAPPING: "template",
        LAGO_SUBSCRIPTION_TEMPLATE: "sub_{customer_id}",
        LAGO_BILLING_MODE: "cost",
        LAGO_COST_MARKUP_PERCENT: "20",
      }),
      { worker: true },
    );
    const e = usageEvent({ cost_usd: 0.00375 });
    await ingest(t, [e]);
    await eventually(allDelivered(1), "1 delivered");
    expect(lago.events[0]).toMatchObject({
      transaction_id: `${e.request_id}:cost`,
      code: "llm_cost",
      external_subscription_id: "sub_customer-123",
      precise_total_amount_cents: "0.45",
    });
    expect(lago.events[0]?.properties).toMatchObject({ units: 1, model: "gpt-4o" });
  });

  it("two workers on one outbox never send an event twice", async () => {
    lago.latencyMs = 20;
    t = await startService(db.url, env(), { worker: false });
    await ingest(
      t,
      Array.from({ length: 2000 }, () => usageEvent()),
    );
    const a = await startService(db.url, env({ LAGO_WORKER_CONCURRENCY: "4" }), { worker: true });
    const b = await startService(db.url, env({ LAGO_WORKER_CONCURRENCY: "4" }), { worker: true });
    try {
      await eventually(allDelivered(4000), "4000 delivered", 30_000);
    } finally {
      await Promise.all([a.close(), b.close()]);
    }
    expect(exactlyOnce()).toBe(4000);
    expect(lago.rejected422).toBe(0);
    const workers = await db.sql`SELECT DISTINCT worker_id FROM webhook_logs`;
    expect(workers.length).toBe(2);
  });

  it("an idle worker sends a call's events at once; LAGO_WORKER_LINGER_MS gathers calls within it", async () => {
    t = await startService(db.url, env(), { worker: true });
    await ingest(t, [usageEvent()]);
    await eventually(allDelivered(2), "first call delivered");
    await ingest(t, [usageEvent()]);
    await eventually(allDelivered(4), "second call delivered");
    expect(eventRequests()).toEqual([2, 2]);
    await t.close();

    lago.reset();
    t = await startService(db.url, env({ LAGO_WORKER_LINGER_MS: "1500" }), { worker: true });
    // A worker's first claim at start is a recovery and does not linger: let it find nothing first.
    await new Promise((r) => setTimeout(r, 500));
    const started = Date.now();
    await ingest(t, [usageEvent()]);
    await new Promise((r) => setTimeout(r, 300));
    expect((await states()).delivered).toBe(4); // the new call lingers
    await ingest(t, [usageEvent()]);
    await eventually(allDelivered(8), "both lingering calls delivered");
    expect(Date.now() - started).toBeGreaterThanOrEqual(1400);
    expect(eventRequests()).toEqual([4]);
    expect(exactlyOnce()).toBe(4);
  });

  it("validate names each check: key, metric and its filters, the subscriptions of customers with usage", async () => {
    lago.reset({ entities: true });
    lago.addMetric("llm_tokens", { filters: [{ key: "model", values: ["gpt-4o"] }] });
    lago.addSubscription("sub-a", "customer-a");
    t = await startService(db.url, env({ LAGO_SUBSCRIPTION_MAPPING: "lookup" }), { worker: false });
    await ingest(t, [usageEvent({ customer_id: "customer-a" }), usageEvent({ customer_id: "customer-b" })]);
    const res = await t.app.inject({ method: "GET", url: "/webhooks/validate", headers: AUTH });
    expect(res.statusCode).toBe(503);
    const checks = Object.fromEntries(
      (res.json().checks as { name: string; ok: boolean; detail: string }[]).map((c) => [c.name, c]),
    );
    expect(checks.api_key?.ok).toBe(true);
    expect(checks.billable_metric).toMatchObject({
      ok: false,
      detail: expect.stringMatching(/lacks the filter\(s\) type/),
    });
    expect(checks.subscriptions).toMatchObject({
      ok: false,
      detail: expect.stringMatching(/customer "customer-b" has no subscription in Lago/),
    });
    expect(checks.batch_size).toMatchObject({
      ok: true,
      detail: expect.stringMatching(/accepts batches of 100/),
    });
    expect(checks.rate_limit).toMatchObject({
      ok: true,
      detail: expect.stringMatching(/not rate limited now/),
    });
    lago.billableMetrics.delete("llm_tokens");
    lago.addMetric("llm_tokens", {
      filters: [
        { key: "model", values: ["gpt-4o"] },
        { key: "type", values: ["input"] },
      ],
    });
    lago.addSubscription("sub-b", "customer-b");
    const ok = await t.app.inject({ method: "GET", url: "/webhooks/validate", headers: AUTH });
    expect(ok.json().checks.filter((c: { ok: boolean }) => !c.ok)).toEqual([]);
    expect(ok.statusCode).toBe(200);
  });

  it("holds everything while the billable metric is missing, and says how to fix it", async () => {
    lago.reset({ entities: true });
    lago.addSubscription("customer-123", "customer-123");
    t = await startService(db.url, env(), { worker: true });
    await ingest(t, [usageEvent()]);
    await eventually(() => t?.service.sink.snapshot().state === "metric_missing", "metric_missing");
    expect(t.service.sink.snapshot().error).toMatch(/lago setup/);
    expect((await states()).pending).toBe(2);
    expect(lago.eventCount).toBe(0);
  });
});
