import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestDatabase, type TestDatabase } from "../support/db.ts";
import { freePort, runCli, waitHealthy } from "../support/process.ts";
import { SECRET, usageEvent } from "../support/service.ts";

let db: TestDatabase;
beforeAll(async () => {
  db = await createTestDatabase({ migrated: false });
});
afterAll(async () => {
  await db.drop();
});

describe("webhook-service CLI", () => {
  it("migrates safely when several replicas start together", async () => {
    const runs = Array.from({ length: 4 }, () => runCli(["migrate"], { DATABASE_URL: db.url }));
    const codes = await Promise.all(runs.map((r) => r.exited));
    expect(codes, runs.map((r) => r.output()).join("\n")).toEqual([0, 0, 0, 0]);
    const rows = await db.sql`SELECT version FROM schema_migrations ORDER BY version`;
    expect(rows.length).toBeGreaterThan(0);
    expect(new Set(rows.map((r) => r.version)).size).toBe(rows.length);
  });

  it("refuses to start in production without WEBHOOK_SECRET, saying what to set", async () => {
    const r = runCli(["serve", "--port", "0"], { DATABASE_URL: db.url, NODE_ENV: "production" });
    expect(await r.exited).toBe(2);
    expect(r.output()).toMatch(/WEBHOOK_SECRET/);
  });

  it("explains a bad setting", async () => {
    const r = runCli(["serve"], { DATABASE_URL: db.url, LAGO_BILLING_MODE: "bananas" });
    expect(await r.exited).toBe(2);
    expect(r.output()).toMatch(/LAGO_BILLING_MODE.*tokens, cost/);
  });

  it("says what to check when the database is unreachable", async () => {
    const r = runCli(["migrate"], { DATABASE_URL: "postgres://postgres@127.0.0.1:1/none" });
    expect(await r.exited).toBe(1);
    expect(r.output()).toMatch(/DATABASE_URL/);
  });

  it("serves on --port, answers health, and reprocess/stats work from the command line", async () => {
    const port = await freePort();
    const srv = runCli(["serve", "--host", "127.0.0.1", "--port", String(port)], {
      DATABASE_URL: db.url,
      WEBHOOK_SECRET: SECRET,
    });
    try {
      await waitHealthy(`http://127.0.0.1:${port}/health/ready`);
      const res = await fetch(`http://127.0.0.1:${port}/webhooks/usage`, {
        method: "POST",
        headers: { authorization: `Bearer ${SECRET}`, "content-type": "application/json" },
        body: JSON.stringify(usageEvent()),
      });
      expect(res.status).toBe(202);
      const openapi = (await (await fetch(`http://127.0.0.1:${port}/openapi.json`)).json()) as {
        paths: object;
      };
      expect(Object.keys(openapi.paths)).toContain("/webhooks/usage/batch");
    } finally {
      srv.child.kill("SIGTERM");
      expect(await srv.exited).toBe(0);
    }
    await db.sql`UPDATE lago_events SET state = 'failed', last_error = 'test'`;
    const dry = runCli(["reprocess", "--state", "failed", "--dry-run"], { DATABASE_URL: db.url });
    expect(await dry.exited).toBe(0);
    expect(JSON.parse(dry.output())).toMatchObject({ dry_run: true, matched: { failed: 2 }, moved: 0 });
    const real = runCli(["reprocess", "--customer", "customer-123"], { DATABASE_URL: db.url });
    expect(await real.exited).toBe(0);
    expect(JSON.parse(real.output())).toMatchObject({ moved: 2 });
    const stats = runCli(["stats"], { DATABASE_URL: db.url });
    expect(await stats.exited).toBe(0);
    expect(JSON.parse(stats.output()).events).toMatchObject({ pending: 2 });
  });
});
