/**
 * The service against the Lago double in each of Lago's real modes: where Lago answers 200 and
 * bills nothing (usage outside a subscription's span, pending or terminated subscriptions), where it
 * refuses a batch for its length, the rate-limit headers of Lago Cloud, self-hosted Lago and proxies,
 * and the ClickHouse event store's query-time dedupe.
 */
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { addCustomer, lagoSetup } from "../../src/completeness/lago-setup.ts";
import { createTestDatabase, type TestDatabase } from "../support/db.ts";
import { LagoDouble } from "../support/lago-double.ts";
import { runCli } from "../support/process.ts";
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

const MIN = 60_000;
const now = () => Date.now();
const secondsAgo = (ms: number) => Math.floor((now() - ms) / 1000);
const iso = (unixSeconds: number) => new Date(unixSeconds * 1000).toISOString();

beforeAll(async () => {
  lago = await LagoDouble.start({ apiKey: "lago-key" });
});
afterAll(async () => {
  await lago.close();
});
beforeEach(async () => {
  lago.reset({ entities: true });
  lago.setRateLimit(null);
  lago.eventStore = "postgres";
  lago.batchMax = 100;
  lago.rateLimitHeaderStyle = "cloud";
  lago.addMetric("llm_tokens");
  lago.addSubscription("customer-123", "customer-123");
  db = await createTestDatabase();
});
afterEach(async () => {
  await t?.close();
  t = undefined;
  await db.drop();
});

const env = (over: Record<string, string> = {}) => ({
  LAGO_API_URL: lago.url,
  LAGO_API_KEY: "lago-key",
  LITELLM_CONFIG_PATH: "config.yaml",
  ...over,
});

const ingest = ingestBatches;

async function outbox(requestId: string) {
  return db.sql<
    { state: string; last_error: string | null; attempts: number; external_subscription_id: string }[]
  >`
    SELECT e.state, e.last_error, e.attempts, e.external_subscription_id
    FROM lago_events e JOIN usage_events u ON u.id = e.usage_event_id
    WHERE u.request_id = ${requestId} ORDER BY e.transaction_id`;
}

const states = () => outboxStates(db.sql);
const settled = async () => (await states()).pending === undefined;

async function checks(svc: TestService) {
  const res = await svc.app.inject({ method: "GET", url: "/webhooks/validate", headers: AUTH });
  return Object.fromEntries(
    (res.json().checks as { name: string; ok: boolean; detail: string; fix?: string }[]).map((c) => [
      c.name,
      c,
    ]),
  );
}

/** Records every distinct sink error while `fn` runs (the sink's states pass quickly). */
async function watchSink<T>(
  svc: TestService,
  fn: () => Promise<T>,
): Promise<{ result: T; errors: string[] }> {
  const errors = new Set<string>();
  const timer = setInterval(() => {
    const e = svc.service.sink.snapshot().error;
    if (e) errors.add(e);
  }, 2);
  try {
    const result = await fn();
    return { result, errors: [...errors] };
  } finally {
    clearInterval(timer);
  }
}

describe("usage outside a subscription's span (app/models/event.rb#subscription)", () => {
  it("parks calls before the start and after the termination with both dates, sends the rest, never blind", async () => {
    lago.addSubscription("late", "late", "p", { subscriptionAt: new Date(now() - 60 * MIN) });
    lago.addSubscription("gone", "gone", "p");
    lago.terminateSubscription("gone", new Date(now() - 30 * MIN));
    // An external id reused: terminated two hours ago, a new subscription since an hour ago.
    lago.addSubscription("moved", "moved", "p");
    lago.terminateSubscription("moved", new Date(now() - 120 * MIN));
    lago.addSubscription("moved", "moved", "p", { subscriptionAt: new Date(now() - 60 * MIN) });
    t = await startService(db.url, env(), { worker: true });
    const calls = {
      lateBefore: usageEvent({ customer_id: "late", timestamp: secondsAgo(120 * MIN) }),
      lateIn: usageEvent({ customer_id: "late", timestamp: secondsAgo(10 * MIN) }),
      goneIn: usageEvent({ customer_id: "gone", timestamp: secondsAgo(45 * MIN) }),
      goneAfter: usageEvent({ customer_id: "gone", timestamp: secondsAgo(10 * MIN) }),
      movedOld: usageEvent({ customer_id: "moved", timestamp: secondsAgo(180 * MIN) }),
      movedGap: usageEvent({ customer_id: "moved", timestamp: secondsAgo(90 * MIN) }),
      movedNew: usageEvent({ customer_id: "moved", timestamp: secondsAgo(10 * MIN) }),
    };
    await ingest(t, Object.values(calls));
    await eventually(settled, "every event settled");
    expect(await states()).toEqual({ delivered: 8, unbillable: 6 });
    // Nothing Lago would store without billing was sent.
    expect(lago.unbilledEvents()).toEqual([]);
    expect(lago.billedEvents()).toHaveLength(8);

    const lateStart = lago.findSubscription("late", ["active"])?.started_at as string;
    const [before] = await outbox(calls.lateBefore.request_id as string);
    expect(before?.state).toBe("unbillable");
    expect(before?.last_error).toContain(
      `call at ${iso(calls.lateBefore.timestamp as number)} precedes subscription "late" start at ${new Date(lateStart).toISOString()}`,
    );
    expect(before?.last_error).toMatch(/reprocess --state unbillable/);
    const [after] = await outbox(calls.goneAfter.request_id as string);
    expect(after?.last_error).toMatch(/is after subscription "gone" was terminated at/);
    const [gap] = await outbox(calls.movedGap.request_id as string);
    expect(gap?.last_error).toMatch(/precedes subscription "moved" start/);
    expect((await outbox(calls.movedOld.request_id as string)).map((r) => r.state)).toEqual([
      "delivered",
      "delivered",
    ]);

    // validate and lago setup say so, with the dates.
    const c = await checks(t);
    expect(c.subscriptions?.ok).toBe(false);
    expect(c.subscriptions?.detail).toContain(`customer "late"`);
    expect(c.subscriptions?.detail).toContain(
      `precedes subscription "late" start at ${new Date(lateStart).toISOString()}`,
    );
    expect(c.subscriptions?.detail).toMatch(/customer "gone".*terminated at/);
    const setup = await lagoSetup(t.service);
    expect(
      setup.warnings.some((w) => w.includes(`call at ${iso(calls.lateBefore.timestamp as number)} precedes`)),
    ).toBe(true);

    // The operator's fix: "late" gets a subscription that starts early enough; reprocess delivers.
    lago.terminateSubscription("late", new Date(now() - 60 * MIN));
    lago.addSubscription("late", "late", "p", { subscriptionAt: new Date(now() - 24 * 60 * MIN) });
    const res = await t.app.inject({
      method: "POST",
      url: "/webhooks/reprocess",
      payload: { customer_id: "late" },
      headers: AUTH,
    });
    expect(res.json()).toMatchObject({ moved: 2 });
    await eventually(async () => (await states()).delivered === 10, "late's early call delivered");
    expect(lago.unbilledEvents()).toEqual([]);
  });
});

describe("pending subscriptions (subscriptions_controller.rb#show finds active ones only)", () => {
  it("says a subscription is pending and when it starts; holds calls Lago has not activated it for yet", async () => {
    const startsAt = new Date(now() + 24 * 60 * MIN);
    lago.addSubscription("soon", "soon", "p", { subscriptionAt: startsAt });
    // Its start has passed but Lago's clock has not activated it yet.
    const waiting = lago.addSubscription("waiting", "waiting", "p", {
      subscriptionAt: new Date(now() - 10 * MIN),
    });
    waiting.status = "pending";
    waiting.started_at = null;
    t = await startService(db.url, env(), { worker: true });
    const soon = usageEvent({ customer_id: "soon" });
    const held = usageEvent({ customer_id: "waiting" });
    await ingest(t, [soon, held]);
    await eventually(async () => (await states()).unbillable === 2, "soon parked");
    const [parked] = await outbox(soon.request_id as string);
    expect(parked?.last_error).toMatch(
      new RegExp(
        `subscription "soon", which is pending and starts at ${startsAt.toISOString().slice(0, 19)}`,
      ),
    );
    await eventually(async () => (await outbox(held.request_id as string))[0]?.last_error, "held");
    const [h] = await outbox(held.request_id as string);
    expect(h).toMatchObject({ state: "pending", attempts: 0 });
    expect(h?.last_error).toMatch(/"waiting" is pending .* Lago has not activated it yet/);
    expect(lago.eventCount).toBe(0);

    // lago customer add tells the truth instead of creating it again.
    const add = await addCustomer(t.service, { externalId: "soon", plan: "p" });
    expect(add.steps.at(-1)).toMatchObject({ resource: "subscription", action: "unchanged" });
    expect(add.warnings.join("\n")).toMatch(/"soon" is pending, starts at/);
    expect(lago.allSubscriptions.filter((s) => s.external_id === "soon")).toHaveLength(1);
    expect((await checks(t)).subscriptions?.detail).toMatch(/"soon" pending, starts at/);

    // Lago activates it; the held calls go on their next try (the test moves the clock).
    lago.activateSubscription("waiting", new Date(now() - 5 * MIN));
    await db.sql`UPDATE lago_events SET next_attempt_at = now() WHERE state = 'pending'`;
    t.service.worker?.wake();
    await eventually(async () => (await states()).delivered === 2, "held calls delivered");
    expect(lago.unbilledEvents()).toEqual([]);
  });
});

describe("429s: Lago Cloud's headers, self-hosted Lago's bare 429, a proxy's headers", () => {
  const rateEnv = () => env({ LAGO_RATE_LIMIT_MAX_PAUSE_SECONDS: "2" });

  it("reads an epoch X-RateLimit-Reset as a time, not decades to wait", async () => {
    lago.rateLimitHeaderStyle = "epoch";
    lago.setRateLimit(2);
    t = await startService(db.url, rateEnv(), { worker: true });
    await ingest(
      t,
      Array.from({ length: 300 }, () => usageEvent()),
    );
    await eventually(async () => (await states()).delivered === 600, "600 delivered", 30_000);
    expect(lago.count429).toBeGreaterThan(0);
    expect(lago.billedEvents()).toHaveLength(600);
  });

  it("clamps a huge wait to LAGO_RATE_LIMIT_MAX_PAUSE_SECONDS", async () => {
    t = await startService(db.url, rateEnv(), { worker: true });
    lago.failNext(1, 429, { "x-ratelimit-reset": "86400" });
    const { errors } = await watchSink(t, async () => {
      await ingest(t as TestService, [usageEvent()]);
      await eventually(async () => (await states()).delivered === 2, "delivered after the capped pause");
    });
    expect(
      errors.some((e) => /asked for 86400 s, capped at 2 s \(LAGO_RATE_LIMIT_MAX_PAUSE_SECONDS\)/.test(e)),
    ).toBe(true);
  });

  it("honours Retry-After, and backs off on a bare 429", async () => {
    t = await startService(db.url, rateEnv(), { worker: true });
    lago.failNext(1, 429, { "retry-after": "1" });
    const first = await watchSink(t, async () => {
      await ingest(t as TestService, [usageEvent()]);
      await eventually(async () => (await states()).delivered === 2, "delivered after Retry-After");
    });
    expect(first.errors.some((e) => /waiting 1 s \(retry-after\)/.test(e))).toBe(true);
    // Self-hosted Lago sends no rate-limit headers at all.
    lago.rateLimitHeaderStyle = "none";
    lago.failNext(2, 429);
    const bare = await watchSink(t, async () => {
      await ingest(t as TestService, [usageEvent()]);
      await eventually(async () => (await states()).delivered === 4, "delivered after backing off");
    });
    expect(bare.errors.some((e) => /without Retry-After or X-RateLimit-Reset: backing off 1 s/.test(e))).toBe(
      true,
    );
    expect(bare.errors.some((e) => /backing off 2 s/.test(e))).toBe(true);
    const [logs] = await db.sql<
      { n: number }[]
    >`SELECT count(*)::int AS n FROM webhook_logs WHERE status_code = 429`;
    expect(logs?.n).toBe(3);
    const rl = (await checks(t)).rate_limit;
    expect(rl?.detail).toMatch(/3 of \d+ delivery requests in the last 15 min answered 429/);
    expect(rl?.detail).toMatch(/capped at 2 s/);
  });
});

describe("a self-hosted Lago with LAGO_EVENTS_BATCH_MAX_LENGTH below 100", () => {
  it("halves the batch on too_many_events, remembers it, parks nothing, and validate says so", async () => {
    lago.batchMax = 30;
    t = await startService(db.url, env(), { worker: true });
    await ingest(
      t,
      Array.from({ length: 300 }, () => usageEvent()),
    );
    await eventually(async () => (await states()).delivered === 600, "600 delivered", 30_000);
    expect(await states()).toEqual({ delivered: 600 });
    expect(lago.billedEvents()).toHaveLength(600);
    const accepted = lago.requests.filter((r) => r.path === "/api/v1/events/batch" && r.status === 200);
    expect(Math.max(...accepted.map((r) => r.eventCount))).toBe(25);
    expect(t.service.worker?.batchSize).toMatchObject({ effective: 25, configured: 100 });
    const metrics = await t.app.inject({ method: "GET", url: "/health/metrics" });
    expect(metrics.body).toMatch(/^lago_billing_lago_batch_size 25$/m);
    const c = (await checks(t)).batch_size;
    expect(c).toMatchObject({ ok: false, fix: expect.stringMatching(/LAGO_BATCH_SIZE=30 /) });
    expect(c?.detail).toMatch(/refuses batches of 100 \(too_many_events\) and accepts 30/);
    expect(c?.detail).toMatch(/already sends 25/);
    // The probe stored nothing.
    expect(lago.eventCount).toBe(600);
  });
});

describe("the ClickHouse event store (duplicates answer 200, deduped at query time)", () => {
  it("never changes a resent event's timestamp, so a lost answer is never billed twice", async () => {
    lago.eventStore = "clickhouse";
    lago.loseResponses(3);
    t = await startService(db.url, env(), { worker: true });
    const calls = Array.from({ length: 150 }, () => usageEvent());
    await ingest(t, calls);
    await eventually(async () => (await states()).delivered === 300, "300 delivered", 30_000);
    expect(lago.stats().responsesLost).toBe(3);
    // The resends were stored again (no value_already_exist in this store)...
    expect(lago.stats().acceptedTwice).toBeGreaterThan(0);
    expect(lago.rejected422).toBe(0);
    // ...with the same timestamp, so Lago bills each event once.
    const byTx = new Map<string, Set<number>>();
    for (const e of lago.events)
      byTx.set(e.transaction_id, (byTx.get(e.transaction_id) ?? new Set()).add(e.timestamp));
    expect([...byTx.values()].every((ts) => ts.size === 1)).toBe(true);
    expect(lago.billedEvents()).toHaveLength(300);
  });
});

describe("webhook-service validate", () => {
  it("prints the named checks as JSON and exits 1 while one fails, 0 once all pass", async () => {
    lago.batchMax = 40;
    t = await startService(db.url, env(), { worker: false });
    await ingest(t, [usageEvent({ customer_id: "nobody" })]);
    const cliEnv = { DATABASE_URL: db.url, ...env() };
    const bad = runCli(["validate"], cliEnv);
    expect(await bad.exited, bad.output()).toBe(1);
    const report = JSON.parse(bad.output()) as {
      ok: boolean;
      checks: { name: string; ok: boolean; detail: string }[];
    };
    const byName = Object.fromEntries(report.checks.map((c) => [c.name, c]));
    expect(byName.batch_size?.detail).toMatch(/accepts 40/);
    expect(byName.subscriptions?.detail).toMatch(/Lago has no subscription "nobody"/);
    expect(lago.eventCount).toBe(0);
    lago.batchMax = 100;
    lago.addSubscription("nobody", "nobody");
    await lagoSetup(t.service); // the metric's model and type filters
    const good = runCli(["validate"], cliEnv);
    expect(await good.exited, good.output()).toBe(0);
    expect(JSON.parse(good.output()).ok).toBe(true);
  });
});
