import { randomUUID } from "node:crypto";
import postgres from "postgres";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { EXIT_SPENDLOGS_UNAVAILABLE } from "../../src/completeness/cli.ts";
import { reconcile, startReconciler } from "../../src/completeness/reconciler.ts";
import { createTestDatabase, type TestDatabase } from "../support/db.ts";
import { litellmPayload } from "../support/payloads.ts";
import { runCli } from "../support/process.ts";
import { AUTH, eventually, startService, type TestService } from "../support/service.ts";
import { applyLiteLLMMigrations, insertSpendLogs, type SpendLogRow } from "../support/spendlogs.ts";

const LAG = 120;
let db: TestDatabase;
let t: TestService;
// Whole seconds + 0.25: the callback's float startTime and SpendLogs' milliseconds agree exactly.
const base = Math.floor(Date.now() / 1000) + 0.25;
const at = (secondsAgo: number) => new Date((base - secondsAgo) * 1000);

beforeAll(async () => {
  db = await createTestDatabase();
  await applyLiteLLMMigrations(db.sql);
  t = await startService(db.url, { RECONCILE_SAFETY_LAG_SECONDS: String(LAG) });
});
afterAll(async () => {
  await t?.close();
  await db?.drop();
});

/** The callback's view of a SpendLogs row: same id, time, tokens, cost and customer. */
function callbackOf(row: SpendLogRow, over: Record<string, unknown> = {}) {
  return litellmPayload({
    id: row.request_id,
    startTime: row.startTime.getTime() / 1000,
    prompt_tokens: row.prompt_tokens ?? 12,
    completion_tokens: row.completion_tokens ?? 8,
    total_tokens: (row.prompt_tokens ?? 12) + (row.completion_tokens ?? 8),
    response_cost: row.spend ?? 0.00046,
    ...over,
  });
}

async function sendCallbacks(payloads: Record<string, unknown>[]) {
  const res = await t.app.inject({
    method: "POST",
    url: "/webhooks/litellm",
    payload: payloads,
    headers: AUTH,
  });
  expect(res.statusCode, res.body).toBe(202);
}

interface Counts {
  usage: number;
  reconciled: number;
  outbox: number;
  rejections: number;
  conflicts: number;
}

const counts = async (): Promise<Counts> => {
  const [r] = await db.sql<Counts[]>`
    SELECT (SELECT count(*) FROM usage_events)::int AS usage,
           (SELECT count(*) FROM usage_events WHERE source = 'reconciler')::int AS reconciled,
           (SELECT count(*) FROM lago_events)::int AS outbox,
           (SELECT count(*) FROM ingest_rejections)::int AS rejections,
           (SELECT count(*) FROM usage_conflicts)::int AS conflicts`;
  return r as Counts;
};

const row = (id: string, secondsAgo: number, over: Partial<SpendLogRow> = {}): SpendLogRow => ({
  request_id: id,
  startTime: at(secondsAgo),
  ...over,
});

describe("reconcile with LiteLLM_SpendLogs", () => {
  const ids = Array.from({ length: 10 }, (_, i) => `chatcmpl-rec-${i}-${randomUUID()}`);
  const callId = randomUUID();
  const conflictId = `chatcmpl-conflict-${randomUUID()}`;
  let firstCursor: string | null = null;

  it("ingests exactly the calls the ledger lacks", async () => {
    const rows = ids.map((id, i) =>
      row(id, 1800 - i * 60, { prompt_tokens: 100 + i, completion_tokens: 10 }),
    );
    const orphan = row(`chatcmpl-nobody-${randomUUID()}`, 900, { end_user: "", user: "", team_id: "" });
    // LiteLLM names a cache hit differently in the callback and in SpendLogs: same litellm_call_id.
    const cacheHit = row(`chatcmpl-x_cache_hit${Date.now() / 1000}`, 700, {
      cache_hit: "True",
      spend: 0,
      litellm_call_id: callId,
    });
    const conflicting = row(conflictId, 650);
    await insertSpendLogs(db.sql, [...rows, orphan, cacheHit, conflicting]);
    // The callback delivered 4 of the 10, the cache hit (its own id) and the conflicting call with other tokens.
    await sendCallbacks([
      ...rows.slice(0, 4).map((r) => callbackOf(r)),
      callbackOf(cacheHit, {
        id: `chatcmpl-x_cache_hit${Date.now() / 1000 + 0.5}`,
        cache_hit: true,
        litellm_call_id: callId,
        response_cost: 0,
      }),
      callbackOf(conflicting, { prompt_tokens: 999, total_tokens: 1007 }),
    ]);
    const before = await counts();
    expect(before.usage).toBe(6);

    const r = await reconcile(t.service, { now: at(0) });
    expect(r).toMatchObject({
      available: true,
      scanned: 13,
      inserted: 6,
      duplicates: 5,
      conflicts: 1,
      rejected: 1,
      rejections_stored: 1,
      until: at(LAG).toISOString(),
    });
    firstCursor = r.cursor;
    expect(firstCursor).toBe(at(LAG).toISOString());

    const after = await counts();
    expect(after.usage).toBe(12);
    expect(after.reconciled).toBe(6);
    expect(after.rejections).toBe(1);
    expect(after.conflicts).toBe(1);
    // tokens mode: an input and an output event per new call
    expect(after.outbox - before.outbox).toBe(12);

    const recovered = await db.sql<{ request_id: string }[]>`
      SELECT request_id FROM usage_events WHERE source = 'reconciler' ORDER BY request_id`;
    expect(recovered.map((x) => x.request_id)).toEqual(ids.slice(4).sort());
    const [one] = await db.sql`SELECT * FROM usage_events WHERE request_id = ${ids[9] as string}`;
    expect(one).toMatchObject({
      customer_id: "customer-123",
      user_id: "user-789",
      team_id: "team-456",
      model: "gpt-4o",
      tokens_input: "109",
      tokens_output: "10",
      cost_usd: "0.000460000000",
      source: "reconciler",
    });
    expect(JSON.stringify(one)).not.toContain("secret");
    const [rej] = await db.sql`SELECT source, reason, payload FROM ingest_rejections`;
    expect(rej?.source).toBe("reconciler");
    expect(rej?.reason).toMatch(/no customer/);
    expect(JSON.stringify(rej?.payload)).not.toContain("secret");
    // The first version (the callback's) is kept.
    const [kept] =
      await db.sql`SELECT tokens_input, source FROM usage_events WHERE request_id = ${conflictId}`;
    expect(kept).toMatchObject({ tokens_input: "999", source: "litellm" });
  });

  it("changes nothing when run twice", async () => {
    const before = await counts();
    // The cursor-driven run re-reads only its overlap window...
    const next = await reconcile(t.service, { now: at(-1) });
    expect(next).toMatchObject({ inserted: 0, rejections_stored: 0, since: at(2 * LAG).toISOString() });
    // ...and the whole first window read again finds everything settled.
    const r = await reconcile(t.service, { since: at(86_400), until: at(LAG) });
    expect(r).toMatchObject({
      scanned: 13,
      inserted: 0,
      duplicates: 11,
      conflicts: 1,
      rejected: 1,
      rejections_stored: 0,
    });
    expect(await counts()).toEqual(before);
  });

  it("picks up rows that arrive late, inside the safety lag, on the next run", async () => {
    const before = await counts();
    // Written by LiteLLM after the first run: one just before the cursor (LiteLLM's batch was late),
    // one that was still inside the safety lag then.
    const lateBeforeCursor = row(`chatcmpl-late-${randomUUID()}`, LAG + 20);
    const insideLag = row(`chatcmpl-lag-${randomUUID()}`, 60);
    await insertSpendLogs(db.sql, [lateBeforeCursor, insideLag]);
    const r = await reconcile(t.service, { now: at(-LAG) });
    expect(r).toMatchObject({ inserted: 2, rejected: 0 });
    expect(r.cursor).toBe(at(0).toISOString());
    expect((await counts()).usage).toBe(before.usage + 2);
    const again = await reconcile(t.service, { now: at(-LAG - 1) });
    expect(again.inserted).toBe(0);
  });

  it("leaves the cursor alone for an explicit window", async () => {
    const [before] = await db.sql`SELECT cursor FROM reconcile_cursors WHERE name = 'spendlogs'`;
    const r = await reconcile(t.service, { since: at(3600), until: at(0) });
    expect(r.inserted).toBe(0);
    const [after] = await db.sql`SELECT cursor FROM reconcile_cursors WHERE name = 'spendlogs'`;
    expect(after?.cursor).toEqual(before?.cursor);
  });

  it("runs periodically under an advisory lock, one replica at a time", async () => {
    const periodic = await startService(db.url, {
      RECONCILE_SAFETY_LAG_SECONDS: "0",
      RECONCILE_INTERVAL_SECONDS: "1",
    });
    const other = postgres(db.url, { max: 1, onnotice: () => {} });
    try {
      const missed = row(`chatcmpl-periodic-${randomUUID()}`, 30);
      // Another replica holds the lock: this one must not run.
      const reserved = await other.reserve();
      await reserved`SELECT pg_advisory_lock(7305111002)`;
      await insertSpendLogs(db.sql, [missed]);
      const handle = startReconciler(periodic.service);
      expect(handle).not.toBeNull();
      await new Promise((r) => setTimeout(r, 1500));
      const [none] =
        await db.sql`SELECT count(*)::int AS n FROM usage_events WHERE request_id = ${missed.request_id}`;
      expect(none?.n).toBe(0);
      await reserved`SELECT pg_advisory_unlock(7305111002)`;
      reserved.release();
      await eventually(async () => {
        const [x] = await db.sql`SELECT source FROM usage_events WHERE request_id = ${missed.request_id}`;
        return x?.source === "reconciler";
      }, "the periodic reconciler to recover the call");
      await handle?.stop();
    } finally {
      await other.end();
      await periodic.close();
    }
  });

  it("is off with RECONCILE_INTERVAL_SECONDS=0", async () => {
    const off = await startService(db.url, { RECONCILE_INTERVAL_SECONDS: "0" });
    try {
      expect(startReconciler(off.service)).toBeNull();
    } finally {
      await off.close();
    }
  });
});

describe("without a LiteLLM database", () => {
  it("says so and does nothing", async () => {
    const other = await createTestDatabase();
    const svc = await startService(other.url);
    try {
      const r = await reconcile(svc.service);
      expect(r.available).toBe(false);
      expect(r.message).toMatch(/no LiteLLM_SpendLogs table/);
      expect(r.scanned).toBe(0);
      const [c] = await other.sql`SELECT count(*)::int AS n FROM reconcile_cursors`;
      expect(c?.n).toBe(0);
      // A scheduled `reconcile` (or `backfill`) must notice: a documented non-zero exit code.
      for (const args of [
        ["reconcile"],
        ["backfill", "--since", "2026-01-01T00:00:00Z", "--until", "2026-01-02T00:00:00Z"],
      ]) {
        const cli = runCli(args, { DATABASE_URL: other.url });
        expect(await cli.exited, cli.output()).toBe(EXIT_SPENDLOGS_UNAVAILABLE);
        expect(cli.output()).toMatch(/LiteLLM_SpendLogs/);
      }
    } finally {
      await svc.close();
      await other.drop();
    }
  });

  it("reads SpendLogs from LITELLM_DATABASE_URL when LiteLLM has its own database", async () => {
    const ledgerDb = await createTestDatabase();
    const svc = await startService(ledgerDb.url, {
      LITELLM_DATABASE_URL: db.url,
      RECONCILE_SAFETY_LAG_SECONDS: String(LAG),
    });
    try {
      const r = await reconcile(svc.service, { now: at(-LAG - 1) });
      expect(r.available).toBe(true);
      expect(r.inserted).toBeGreaterThanOrEqual(12);
      const [c] = await ledgerDb.sql`SELECT count(*)::int AS n FROM usage_events WHERE source = 'reconciler'`;
      expect(c?.n).toBe(r.inserted);
    } finally {
      await svc.close();
      await ledgerDb.drop();
    }
  });
});
