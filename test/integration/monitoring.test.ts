import { randomUUID } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { runDriftCheck } from "../../src/completeness/drift-check.ts";
import { createTestDatabase, type TestDatabase } from "../support/db.ts";
import { LagoDouble } from "../support/lago-double.ts";
import { litellmPayload } from "../support/payloads.ts";
import { AUTH, settleAllPending, startService, type TestService } from "../support/service.ts";
import { applyLiteLLMMigrations, insertSpendLogs } from "../support/spendlogs.ts";

let db: TestDatabase;
let lago: LagoDouble;
let t: TestService;
const env = () => ({ LAGO_WEBHOOK_URL: lago.url, LAGO_API_KEY: "lago-key", LAGO_MAX_ATTEMPTS: "1" });

/** The value of one series in a Prometheus text exposition (undefined when absent). */
function sample(text: string, name: string, labels: Record<string, string> = {}): number | undefined {
  for (const line of text.split("\n")) {
    if (line.startsWith("#")) continue;
    const m = /^([a-zA-Z_:][\w:]*)(\{(.*)\})? (\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const got = Object.fromEntries([...(m[3] ?? "").matchAll(/(\w+)="([^"]*)"/g)].map((x) => [x[1], x[2]]));
    if (
      Object.entries(labels).every(([k, v]) => got[k] === v) &&
      Object.keys(got).length === Object.keys(labels).length
    )
      return Number(m[4]);
  }
  return undefined;
}

async function scrape(svc: TestService = t): Promise<string> {
  const res = await svc.app.inject({ method: "GET", url: "/health/metrics" });
  expect(res.statusCode).toBe(200);
  return res.body;
}

async function post(payload: unknown) {
  const res = await t.app.inject({
    method: "POST",
    url: "/webhooks/litellm",
    payload: payload as object,
    headers: AUTH,
  });
  expect(res.statusCode, res.body).toBe(202);
}

const settleAll = () => settleAllPending(db.url, env());

beforeAll(async () => {
  lago = await LagoDouble.start({ apiKey: "lago-key" });
  lago.addMetric("llm_tokens");
  lago.addSubscription("paying", "paying");
  db = await createTestDatabase();
  await applyLiteLLMMigrations(db.sql);
  t = await startService(db.url, env());
});
afterAll(async () => {
  await t?.close();
  await db?.drop();
  await lago?.close();
});

describe("monitoring gauges", () => {
  it("exports parked events by reason, from the texts the worker writes", async () => {
    const before = await scrape();
    expect(
      sample(before, "lago_billing_lago_events_parked", { state: "unbillable", reason: "no_subscription" }),
    ).toBe(0);
    expect(
      sample(before, "lago_billing_lago_events_parked", { state: "failed", reason: "max_attempts" }),
    ).toBe(0);

    // No subscription in Lago: parked as unbillable by the worker's own check.
    await post([litellmPayload({ id: `chatcmpl-${randomUUID()}`, end_user: "nobody" })]);
    await settleAll();
    // Lago failing with LAGO_MAX_ATTEMPTS=1: the worker gives up after its one attempt.
    lago.failNext(1000, 500);
    await post([litellmPayload({ id: `chatcmpl-${randomUUID()}`, end_user: "paying" })]);
    await settleAll();
    lago.failNext(0);
    const states = await db.sql<{ state: string; last_error: string }[]>`
      SELECT state, last_error FROM lago_events WHERE state IN ('failed', 'unbillable') ORDER BY id`;
    // Two events per call (the token and the cost metric).
    expect(states.map((s) => s.state)).toEqual(["unbillable", "unbillable", "failed", "failed"]);

    // A fresh service (the gauges are cached 10 s per process).
    const fresh = await startService(db.url, env());
    try {
      const text = await scrape(fresh);
      expect(
        sample(text, "lago_billing_lago_events_parked", { state: "unbillable", reason: "no_subscription" }),
      ).toBe(2);
      expect(
        sample(text, "lago_billing_lago_events_parked", { state: "failed", reason: "max_attempts" }),
      ).toBe(2);
      expect(sample(text, "lago_billing_lago_events_parked", { state: "failed", reason: "other" })).toBe(0);
    } finally {
      await fresh.close();
    }
    // The next test starts from an empty ledger.
    await db.sql`DELETE FROM lago_events`;
    await db.sql`DELETE FROM usage_events`;
  });

  it("a periodic drift check stores its summary once per interval, and every replica exports it", async () => {
    const old = new Date(Date.now() - 3 * 3_600_000);
    const billed = `chatcmpl-${randomUUID()}`;
    const lost = `chatcmpl-${randomUUID()}`;
    await insertSpendLogs(db.sql, [
      { request_id: billed, startTime: old, end_user: "paying" },
      // In SpendLogs, never in the ledger: the reconciler did not run, nothing explains it.
      { request_id: lost, startTime: old, end_user: "paying" },
    ]);
    await post([litellmPayload({ id: billed, end_user: "paying", startTime: old.getTime() / 1000 })]);
    await settleAll();

    const first = await runDriftCheck(t.service);
    expect(first.ran).toBe(true);
    expect(first.summary).toMatchObject({
      unexplained_calls: 1,
      spendlogs_available: true,
      calls: { spendlogs: 2, ledger: 1, delivered: 1 },
    });
    expect(first.summary?.differences).toContainEqual({
      kind: "missing_in_ledger",
      explained: false,
      calls: 1,
    });
    // Another replica in the same interval does not run it again.
    const replica = await startService(db.url, env());
    try {
      expect((await runDriftCheck(replica.service)).ran).toBe(false);
      const text = await scrape(replica);
      expect(sample(text, "lago_billing_drift_unexplained_calls")).toBe(1);
      expect(sample(text, "lago_billing_drift_window_calls", { source: "spendlogs" })).toBe(2);
      expect(sample(text, "lago_billing_drift_window_calls", { source: "ledger" })).toBe(1);
      expect(sample(text, "lago_billing_drift_window_calls", { source: "delivered" })).toBe(1);
      expect(
        sample(text, "lago_billing_drift_calls", { kind: "missing_in_ledger", explained: "false" }),
      ).toBe(1);
      expect(sample(text, "lago_billing_drift_spendlogs_available")).toBe(1);
      expect(sample(text, "lago_billing_drift_check_interval_seconds")).toBe(900);
      const at = sample(text, "lago_billing_drift_last_check_timestamp_seconds") ?? 0;
      expect(Math.abs(at - Date.now() / 1000)).toBeLessThan(60);
    } finally {
      await replica.close();
    }
    const text = await scrape(await freshService());
    expect(sample(text, "lago_billing_drift_checks_total", { outcome: "ok" })).toBeUndefined();
    expect(sample(await scrape(), "lago_billing_drift_checks_total", { outcome: "ok" })).toBe(1);
  });
});

const extra: TestService[] = [];
afterAll(async () => {
  for (const s of extra) await s.close();
});
async function freshService(): Promise<TestService> {
  const s = await startService(db.url, env());
  extra.push(s);
  return s;
}
