import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type BackfillProgress, backfill } from "../../src/completeness/backfill.ts";
import { createTestDatabase, type TestDatabase } from "../support/db.ts";
import { LagoDouble } from "../support/lago-double.ts";
import { startService, type TestService } from "../support/service.ts";
import { applyLiteLLMMigrations, bulkInsertSpendLogs, insertSpendLogs } from "../support/spendlogs.ts";

const DAY = 86_400_000;
const ROWS = 100_000;
const CUSTOMERS = 20;
let db: TestDatabase;
let t: TestService;
let lago: LagoDouble;
// 60 days back: older than INGEST_MAX_AGE_DAYS (35), which a backfill must not apply.
const since = new Date(Math.floor((Date.now() - 60 * DAY) / 1000) * 1000);
const until = new Date(since.getTime() + 30 * DAY);

beforeAll(async () => {
  lago = await LagoDouble.start({ apiKey: "lago-key" });
  lago.addMetric("llm_tokens");
  lago.addSubscription("bulk-customer-1", "bulk-customer-1");
  const late = lago.addSubscription("bulk-customer-2", "bulk-customer-2");
  late.subscription_at = new Date(since.getTime() + 15 * DAY).toISOString();
  late.started_at = late.subscription_at;
  db = await createTestDatabase();
  await applyLiteLLMMigrations(db.sql);
  const seeded = Date.now();
  await bulkInsertSpendLogs(db.sql, {
    count: ROWS,
    from: since,
    spanSeconds: (until.getTime() - since.getTime()) / 1000 - 60,
    prefix: "chatcmpl-bulk",
    customers: CUSTOMERS,
  });
  await insertSpendLogs(
    db.sql,
    [1, 2, 3].map((i) => ({
      request_id: `chatcmpl-orphan-${i}`,
      startTime: new Date(since.getTime() + i * 1000),
      end_user: "",
      user: "",
      team_id: "",
    })),
  );
  console.log(`seeded ${ROWS + 3} SpendLogs rows in ${Date.now() - seeded} ms`);
  t = await startService(db.url, { LAGO_WEBHOOK_URL: lago.url, LAGO_API_KEY: "lago-key" });
});
afterAll(async () => {
  await t?.close();
  await db?.drop();
  await lago?.close();
});

const count = async (table: string) =>
  Number((await db.sql.unsafe<{ n: string }[]>(`SELECT count(*) AS n FROM ${table}`))[0]?.n);

describe("backfill", () => {
  it("counts without storing in a dry run", async () => {
    const s = await backfill(t.service, { since, until, dryRun: true });
    expect(s).toMatchObject({
      dry_run: true,
      scanned: ROWS + 3,
      new: ROWS,
      already_in_ledger: 0,
      rejected: 3,
    });
    expect(s.events_queued_for_lago).toBe(2 * ROWS);
    expect(await count("usage_events")).toBe(0);
    expect(await count("ingest_rejections")).toBe(0);
  });

  it("replays one customer only", async () => {
    const s = await backfill(t.service, { since, until, customer: "bulk-customer-0" });
    expect(s).toMatchObject({
      new: ROWS / CUSTOMERS,
      rejected: 0,
      skipped_other_customers: ROWS + 3 - ROWS / CUSTOMERS,
    });
    expect(Object.keys(s.customers)).toEqual(["bulk-customer-0"]);
  });

  it(`replays ${ROWS.toLocaleString("en-US")} rows with a correct summary, well within a minute`, async () => {
    const progress: BackfillProgress[] = [];
    const started = Date.now();
    const s = await backfill(t.service, { since, until, onProgress: (p) => progress.push(p) });
    const ms = Date.now() - started;
    console.log(`backfill of ${ROWS + 3} rows: ${ms} ms (${Math.round((ROWS / ms) * 1000)} rows/s)`);
    expect(s).toMatchObject({
      dry_run: false,
      spendlogs: { available: true },
      scanned: ROWS + 3,
      new: ROWS - ROWS / CUSTOMERS,
      already_in_ledger: ROWS / CUSTOMERS,
      conflicts: 0,
      rejected: 3,
      events_queued_for_lago: 2 * (ROWS - ROWS / CUSTOMERS),
    });
    expect(Object.values(s.rejected_reasons)).toEqual([3]);
    expect(Object.keys(s.rejected_reasons)[0]).toMatch(/no customer/);
    expect(Object.keys(s.customers)).toHaveLength(CUSTOMERS);
    expect(s.customers["bulk-customer-0"]).toEqual({
      new: 0,
      already_in_ledger: ROWS / CUSTOMERS,
      conflicts: 0,
    });
    expect(s.customers["bulk-customer-7"]).toEqual({
      new: ROWS / CUSTOMERS,
      already_in_ledger: 0,
      conflicts: 0,
    });

    expect(progress[0]?.scanned).toBe(0);
    expect(progress.at(-1)).toMatchObject({ scanned: ROWS + 3, total: ROWS + 3, inserted: s.new });

    expect(await count("usage_events")).toBe(ROWS);
    expect(await count("usage_events WHERE source = 'backfill'")).toBe(ROWS);
    expect(await count("lago_events WHERE state = 'pending'")).toBe(2 * ROWS);
    expect(await count("ingest_rejections WHERE source = 'backfill'")).toBe(3);
    const [sum] = await db.sql<{ cost: string; tokens: string }[]>`
      SELECT sum(cost_usd)::text AS cost, sum(total_tokens)::text AS tokens FROM usage_events`;
    expect(sum).toEqual({ cost: "125.000000000000", tokens: String(150 * ROWS) });

    expect(s.warnings.some((w) => /already invoiced/.test(w))).toBe(true);
    // The exact dates: the customer's first call and the subscription's start.
    const lateStart = new Date(since.getTime() + 15 * DAY).toISOString();
    expect(s.warnings.find((w) => w.startsWith('customer "bulk-customer-2"'))).toMatch(
      new RegExp(
        `call at \\d{4}-\\d\\d-\\d\\dT[0-9:.]+Z precedes subscription "bulk-customer-2" start at ${lateStart}`,
      ),
    );
    expect(
      s.warnings.some((w) => /"bulk-customer-3".*Lago has no subscription "bulk-customer-3"/.test(w)),
    ).toBe(true);
    expect(s.warnings.some((w) => /"bulk-customer-1"/.test(w))).toBe(false);
  });

  it("changes nothing when repeated", async () => {
    const s = await backfill(t.service, { since, until });
    expect(s).toMatchObject({ new: 0, already_in_ledger: ROWS, rejected: 3, events_queued_for_lago: 0 });
    expect(await count("usage_events")).toBe(ROWS);
    expect(await count("ingest_rejections")).toBe(3);
  });
});
