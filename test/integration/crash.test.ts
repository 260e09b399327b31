import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestDatabase, type TestDatabase } from "../support/db.ts";
import { LagoDouble } from "../support/lago-double.ts";
import { freePort, runCli, waitHealthy } from "../support/process.ts";
import { eventually, ingestBatches, SECRET, startService, usageEvent } from "../support/service.ts";

let db: TestDatabase;
let lago: LagoDouble;

beforeAll(async () => {
  db = await createTestDatabase();
  lago = await LagoDouble.start({ apiKey: "lago-key" });
  lago.addMetric("llm_tokens");
  lago.addSubscription("customer-123", "customer-123");
});
afterAll(async () => {
  await lago.close();
  await db.drop();
});

describe("crash safety with real processes and SIGKILL", () => {
  it("never loses an acknowledged event when the service is killed under load", async () => {
    const acked = new Set<string>();
    let sent = 0;
    for (let round = 0; round < 3; round++) {
      const port = await freePort();
      const srv = runCli(["serve", "--host", "127.0.0.1", "--port", String(port)], {
        DATABASE_URL: db.url,
        WEBHOOK_SECRET: SECRET,
        WORKER_ENABLED: "false",
      });
      await waitHealthy(`http://127.0.0.1:${port}/health/ready`);
      let stop = false;
      const client = async () => {
        while (!stop) {
          const events = Array.from({ length: 1 + Math.floor(Math.random() * 20) }, () => usageEvent());
          sent += events.length;
          try {
            const res = await fetch(`http://127.0.0.1:${port}/webhooks/usage/batch`, {
              method: "POST",
              headers: { authorization: `Bearer ${SECRET}`, "content-type": "application/json" },
              body: JSON.stringify({ events }),
            });
            if (res.status === 202) for (const e of events) acked.add(e.request_id as string);
          } catch {
            // the process died mid-request: not acknowledged, the sender would retry
          }
        }
      };
      const clients = Array.from({ length: 8 }, client);
      await new Promise((r) => setTimeout(r, 400 + Math.random() * 400));
      srv.child.kill("SIGKILL");
      await srv.exited;
      stop = true;
      await Promise.all(clients);
    }
    expect(acked.size).toBeGreaterThan(100);
    const ids = [...acked];
    const [found] = await db.sql`SELECT count(*)::int AS n FROM usage_events WHERE request_id = ANY(${ids})`;
    expect(found?.n).toBe(acked.size);
    const [orphans] = await db.sql`SELECT count(*)::int AS n FROM usage_events u
      WHERE billable AND NOT EXISTS (SELECT 1 FROM lago_events e WHERE e.usage_event_id = u.id)`;
    expect(orphans?.n).toBe(0);
    expect(sent).toBeGreaterThan(acked.size - 1);
  });

  it("delivers everything exactly once when workers are killed mid-delivery again and again", async () => {
    await db.sql`TRUNCATE lago_events, usage_events, webhook_logs`;
    lago.latencyMs = 20;
    const t = await startService(db.url, {}, { worker: false });
    const events = Array.from({ length: 3000 }, () => usageEvent());
    await ingestBatches(t, events);
    await t.close();
    const env = {
      DATABASE_URL: db.url,
      LAGO_WEBHOOK_URL: lago.url,
      LAGO_API_KEY: "lago-key",
      LAGO_LEASE_SECONDS: "2",
      LAGO_REQUEST_TIMEOUT_MS: "1000",
      LAGO_WORKER_CONCURRENCY: "4",
    };
    let kills = 0;
    for (let round = 0; round < 4; round++) {
      const worker = runCli(["worker"], env);
      const before = lago.eventCount;
      await eventually(
        () => lago.eventCount > before + 300 || lago.eventCount >= 6000,
        "some progress",
        20_000,
      );
      worker.child.kill("SIGKILL");
      await worker.exited;
      kills++;
      if (lago.eventCount >= 6000) break;
    }
    expect(kills).toBeGreaterThanOrEqual(3);
    const last = runCli(["worker"], env);
    try {
      await eventually(
        async () =>
          (await db.sql`SELECT count(*)::int AS n FROM lago_events WHERE state = 'delivered'`)[0]?.n === 6000,
        "all 6000 delivered",
        60_000,
      );
    } finally {
      last.child.kill("SIGTERM");
      await last.exited;
    }
    const counts = lago.countByTransaction();
    expect(counts.size).toBe(6000);
    expect([...counts.values()].every((c) => c === 1)).toBe(true);
    const [s] =
      await db.sql`SELECT count(*) FILTER (WHERE state <> 'delivered')::int AS other FROM lago_events`;
    expect(s?.other).toBe(0);
  });

  it("survives PostgreSQL ending a claim that outlasted its lease, and delivers every event once", async () => {
    await db.sql`TRUNCATE lago_events, usage_events, webhook_logs`;
    // Every Lago request takes 0.8 s: the first claim's lookups (metrics, subscription) and its send
    // add up to more than the 2 s lease, so PostgreSQL ends its session while it waits for Lago.
    lago.latencyMs = 800;
    const t = await startService(db.url, {}, { worker: false });
    await ingestBatches(
      t,
      Array.from({ length: 5 }, () => usageEvent()),
    );
    await t.close();
    const worker = runCli(["worker"], {
      DATABASE_URL: db.url,
      LAGO_WEBHOOK_URL: lago.url,
      LAGO_API_KEY: "lago-key",
      LAGO_LEASE_SECONDS: "2",
      LAGO_REQUEST_TIMEOUT_MS: "1000",
    });
    const before = lago.eventCount;
    try {
      await eventually(
        async () => {
          if (worker.child.exitCode !== null) throw new Error(`the worker died:\n${worker.output()}`);
          return (
            (await db.sql`SELECT count(*)::int AS n FROM lago_events WHERE state = 'delivered'`)[0]?.n === 10
          );
        },
        "all 10 delivered",
        30_000,
      );
    } finally {
      worker.child.kill("SIGTERM");
      await worker.exited;
      lago.latencyMs = 0;
    }
    expect(lago.eventCount - before).toBe(10);
    expect([...lago.countByTransaction().values()].every((c) => c === 1)).toBe(true);
  });
});
