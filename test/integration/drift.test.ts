import { spawnSync } from "node:child_process";
import { randomUUID } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Difference, type DriftReport, drift } from "../../src/completeness/drift.ts";
import { reconcile } from "../../src/completeness/reconciler.ts";
import { createTestDatabase, type TestDatabase } from "../support/db.ts";
import { LagoDouble } from "../support/lago-double.ts";
import { litellmPayload } from "../support/payloads.ts";
import { CLI } from "../support/process.ts";
import { AUTH, settleAllPending, startService, type TestService, usageEvent } from "../support/service.ts";
import { applyLiteLLMMigrations, insertSpendLogs, type SpendLogRow } from "../support/spendlogs.ts";

const DAY = 86_400_000;
const midnight = (daysAgo: number) => {
  const d = new Date(Date.now() - daysAgo * DAY);
  return new Date(Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), d.getUTCDate()));
};
/** A time `hours` after midnight `daysAgo` days ago, on a whole second + 0.25 (exact in both sources). */
const atDay = (daysAgo: number, hours: number) =>
  new Date(midnight(daysAgo).getTime() + hours * 3_600_000 + 250);

let db: TestDatabase;
let lago: LagoDouble;
let t: TestService;
const env = () => ({ LAGO_WEBHOOK_URL: lago.url, LAGO_API_KEY: "lago-key" });

const row = (customer: string, time: Date, over: Partial<SpendLogRow> = {}): SpendLogRow => ({
  request_id: `chatcmpl-${customer}-${randomUUID()}`,
  startTime: time,
  end_user: customer,
  ...over,
});

const callbackOf = (r: SpendLogRow, over: Record<string, unknown> = {}) =>
  litellmPayload({
    id: r.request_id,
    end_user: r.end_user,
    startTime: r.startTime.getTime() / 1000,
    ...over,
  });

async function post(url: string, payload: unknown) {
  const res = await t.app.inject({ method: "POST", url, payload: payload as object, headers: AUTH });
  expect(res.statusCode, res.body).toBe(202);
}

const deliverAll = () => settleAllPending(db.url, env());

beforeAll(async () => {
  lago = await LagoDouble.start({ apiKey: "lago-key" });
  lago.addMetric("llm_tokens");
  for (const c of [
    "alpha",
    "beta",
    "missing",
    "extra",
    "api-user",
    "orph",
    "tok",
    "cost",
    "priced",
    "cache",
    "late",
    "unq",
  ]) {
    lago.addSubscription(c, c);
  }
  db = await createTestDatabase();
  await applyLiteLLMMigrations(db.sql);
  t = await startService(db.url, env());
});
afterAll(async () => {
  await t?.close();
  await db?.drop();
  await lago?.close();
});

const find = (r: DriftReport, customer: string | null, kind: Difference["kind"]) =>
  r.differences.filter((d) => d.customer === customer && d.kind === kind);

describe("drift report", () => {
  const consistent = { since: midnight(12), until: midnight(9) };
  const seeded = { since: midnight(4), until: new Date(Date.now() + 60_000) };

  it("finds no difference on a consistent data set", async () => {
    const rows = [
      row("alpha", atDay(11, 9), { prompt_tokens: 100, completion_tokens: 50, spend: 0.00125 }),
      row("alpha", atDay(11, 15), { spend: 0.1 + 0.2 }),
      row("alpha", atDay(10, 1)),
      row("beta", atDay(10, 23.5), {
        prompt_tokens: 1000,
        completion_tokens: 1,
        cached_tokens: 400,
        spend: 1e-7,
      }),
    ];
    await insertSpendLogs(db.sql, rows);
    // Half through the callback, half recovered by the reconciler: the same ledger either way.
    await post("/webhooks/litellm", [
      callbackOf(rows[0] as SpendLogRow, {
        prompt_tokens: 100,
        completion_tokens: 50,
        total_tokens: 150,
        response_cost: 0.00125,
      }),
      callbackOf(rows[1] as SpendLogRow, { response_cost: 0.1 + 0.2 }),
    ]);
    await reconcile(t.service, consistent);
    await deliverAll();

    const r = await drift(t.service, consistent);
    expect(r.differences).toEqual([]);
    expect(r.unexplained).toBe(false);
    expect(r.days).toHaveLength(3);
    const alpha11 = r.days.find(
      (d) => d.customer === "alpha" && d.day === atDay(11, 0).toISOString().slice(0, 10),
    );
    expect(alpha11).toEqual({
      customer: "alpha",
      day: atDay(11, 0).toISOString().slice(0, 10),
      spendlogs: { calls: 2, input_tokens: "112", output_tokens: "58", total_tokens: "170", cost: "0.30125" },
      ledger: { calls: 2, input_tokens: "112", output_tokens: "58", total_tokens: "170", cost: "0.30125" },
      delivered: { calls: 2, tokens: "170", cost: "0" },
    });
    const beta = r.days.find((d) => d.customer === "beta");
    expect(beta?.spendlogs?.cost).toBe("0.0000001");
    expect(beta?.ledger).toEqual(beta?.spendlogs);
    expect(beta?.delivered?.tokens).toBe("1001");
  });

  it("detects and classifies each kind of difference", async () => {
    const old = (h: number) => atDay(2, h);
    const tok = row("tok", old(1));
    const cost = row("cost", old(2));
    const priced = row("priced", old(3), { spend: 0, prompt_tokens: 1000, completion_tokens: 200 });
    const cache = row("cache", old(4), { cache_hit: "True", spend: 0, litellm_call_id: randomUUID() });
    const orphan = row("orph", old(5), { end_user: "", user: "", team_id: "" });
    const late = row("late", old(6));
    const unqueued = row("unq", old(7));
    await insertSpendLogs(db.sql, [tok, cost, priced, cache, orphan, late, unqueued, row("parked", old(8))]);
    await post("/webhooks/litellm", [
      callbackOf(tok, { prompt_tokens: 999, total_tokens: 1007 }),
      callbackOf(cost, { response_cost: 0.5 }),
      // in the ledger, never in SpendLogs
      callbackOf(row("extra", old(9))),
    ]);
    await post(
      "/webhooks/usage",
      usageEvent({ customer_id: "api-user", timestamp: old(10).getTime() / 1000 }),
    );
    await reconcile(t.service, { since: seeded.since, until: new Date(Date.now() - 60_000) });
    await deliverAll();
    // A call whose events have been pending for an hour (worker down), and one without events.
    await db.sql`
      UPDATE lago_events SET state = 'pending', created_at = now() - interval '1 hour',
             next_attempt_at = now() + interval '1 day', settled_at = NULL
      WHERE customer_id = 'late'`;
    await db.sql`DELETE FROM lago_events WHERE customer_id = 'unq'`;
    // Rows LiteLLM wrote that the ledger never got: one old, one just now (the reconciler is not there yet).
    await insertSpendLogs(db.sql, [
      row("missing", old(11)),
      row("missing", new Date(Math.floor(Date.now() / 1000) * 1000 - 30_000 + 250)),
    ]);

    const r = await drift(t.service, seeded);
    const one = (customer: string | null, kind: Difference["kind"], unexplained: boolean) => {
      const found = find(r, customer, kind).filter((d) => d.unexplained === unexplained);
      expect(
        found,
        `${customer} ${kind} unexplained=${unexplained}: ${JSON.stringify(r.differences)}`,
      ).toHaveLength(1);
      return found[0] as Difference;
    };
    expect(one("missing", "missing_in_ledger", true)).toMatchObject({
      calls: 1,
      spendlogs: "1",
      ledger: "0",
    });
    expect(one("missing", "missing_in_ledger", false)).toMatchObject({ calls: 1 });
    expect(one("extra", "extra_in_ledger", true)).toMatchObject({ calls: 1, spendlogs: "0", ledger: "1" });
    expect(one("api-user", "extra_in_ledger", false).explanation).toMatch(/usage API/);
    expect(one(null, "rejected", false).explanation).toMatch(/no customer/);
    expect(one("tok", "tokens_mismatch", true)).toMatchObject({ calls: 1, spendlogs: "20", ledger: "1007" });
    expect(one("cost", "cost_mismatch", true)).toMatchObject({
      calls: 1,
      spendlogs: "0.00046",
      ledger: "0.5",
    });
    expect(one("priced", "priced_by_service", false)).toMatchObject({
      calls: 1,
      spendlogs: "0",
      ledger: "0.008",
    });
    expect(one("cache", "not_billable", false)).toMatchObject({ calls: 1 });
    expect(one("parked", "not_delivered", false)).toMatchObject({
      calls: 1,
      states: { pending: 0, failed: 0, unbillable: 1 },
    });
    expect(one("late", "not_delivered", true)).toMatchObject({ calls: 1, states: { pending: 1 } });
    expect(one("unq", "not_queued", true)).toMatchObject({ calls: 1 });
    // Nothing else: every difference is one of the seeded ones.
    expect(r.differences).toHaveLength(12);
    expect(r.unexplained).toBe(true);
    expect(r.unexplained_count).toBe(6);
    const tokDay = r.days.find((d) => d.customer === "tok");
    expect(tokDay?.spendlogs?.total_tokens).toBe("20");
    expect(tokDay?.ledger?.total_tokens).toBe("1007");
    expect(tokDay?.delivered?.tokens).toBe("1007");
  });

  it("serves GET /webhooks/drift", async () => {
    const { driftRoutes } = await import("../../src/http/routes/drift.ts");
    const Fastify = (await import("fastify")).default;
    const app = Fastify();
    await app.register(driftRoutes, { service: t.service, prefix: "/webhooks" });
    try {
      const q = `since=${consistent.since.toISOString()}&until=${consistent.until.toISOString()}`;
      const ok = await app.inject({ method: "GET", url: `/webhooks/drift?${q}` });
      expect(ok.statusCode, ok.body).toBe(200);
      expect(ok.json()).toMatchObject({ unexplained: false, differences: [] });
      const bad = await app.inject({ method: "GET", url: "/webhooks/drift?since=yesterday" });
      expect(bad.statusCode).toBe(422);
    } finally {
      await app.close();
    }
  });

  it("exits non-zero from `webhook-service report drift` only when a difference is unexplained", () => {
    const cli = (range: { since: Date; until: Date }) =>
      spawnSync(
        process.execPath,
        [
          CLI,
          "report",
          "drift",
          "--since",
          range.since.toISOString(),
          "--until",
          range.until.toISOString(),
          "--json",
        ],
        {
          encoding: "utf8",
          env: {
            ...process.env,
            DATABASE_URL: db.url,
            LITELLM_CONFIG_PATH: "config.yaml",
            LOG_LEVEL: "silent",
          },
          timeout: 30_000,
        },
      );
    const clean = cli(consistent);
    expect(clean.status, clean.stderr).toBe(0);
    expect(JSON.parse(clean.stdout)).toMatchObject({ unexplained: false });
    const drifted = cli(seeded);
    expect(drifted.status, drifted.stderr).toBe(3);
    expect(JSON.parse(drifted.stdout)).toMatchObject({ unexplained: true, unexplained_count: 6 });
  });
});
