/**
 * Cost growth (issue 7, item 6): ingest and delivery rates with 0, 1 M and 10 M calls already in the
 * ledger (delivered long ago), to show the outbox does not slow down as delivered rows pile up:
 * the delivery path only reads the partial index of pending events.
 *
 *   node bench/growth.ts [--sizes 0,1000000,10000000] [--seconds 8] [--calls 20000] [--smoke]
 */
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";
import postgres from "postgres";
import { Pool } from "undici";
import {
  createDatabase,
  fmt,
  freePort,
  machineInfo,
  startLagoDouble,
  startService,
  table,
  waitFor,
  waitHealthy,
} from "./harness.ts";
import { httpCase } from "./load.ts";
import { saveResult } from "./results.ts";

const { values } = parseArgs({
  options: {
    sizes: { type: "string", default: "0,1000000,10000000" },
    seconds: { type: "string", default: "8" },
    calls: { type: "string", default: "20000" },
    smoke: { type: "boolean", default: false },
  },
});
const sizes = (values.smoke ? "0,20000" : values.sizes).split(",").map(Number);
const seconds = values.smoke ? 1 : Number(values.seconds);
const pendingCalls = values.smoke ? 1000 : Number(values.calls);
const customers = Array.from({ length: 100 }, (_, i) => `customer-${i}`);

async function main() {
  const db = await createDatabase("bench_growth");
  const sql = postgres(db.url, { max: 1, onnotice: () => {} });
  const lago = await startLagoDouble({ latencyMs: 20 });
  const rows: (string | number)[][] = [
    [
      "ledger rows before",
      "seed s",
      "table + index MB",
      "ingest batch ev/s",
      "ingest single ev/s",
      "delivery ev/s",
    ],
  ];
  const port = await freePort();
  let seeded = 0;
  try {
    const migrate = startService(["migrate"], { DATABASE_URL: db.url });
    await new Promise((r) => migrate.child.on("exit", r));
    await lago.setup(customers);
    const seedDelivered = readFileSync("bench/sql/seed-delivered.sql", "utf8");
    const seedPending = readFileSync("bench/sql/seed-pending.sql", "utf8");
    for (const size of sizes) {
      const t0 = performance.now();
      const reserved = await sql.reserve();
      await reserved`SET statement_timeout = 0`;
      while (seeded < size) {
        const n = Math.min(500_000, size - seeded);
        await reserved.unsafe(seedDelivered, [n, `hist${seeded}`]);
        seeded += n;
      }
      reserved.release();
      // Not on empty tables: statistics saying "0 rows" make PostgreSQL plan the outbox's foreign-key
      // check (cached per connection) as a sequential scan, and every later insert pays for it.
      if (seeded > 0) await sql`VACUUM ANALYZE`;
      await sql`CHECKPOINT`;
      const seedSeconds = (performance.now() - t0) / 1000;
      const [mb] =
        await sql`SELECT ((pg_total_relation_size('usage_events') + pg_total_relation_size('lago_events')) / 1048576)::int AS mb`;

      // Ingest, with the service alone (no worker).
      const svc = startService(["serve", "--host", "127.0.0.1", "--port", String(port)], {
        DATABASE_URL: db.url,
        WORKER_ENABLED: "false",
      });
      await waitHealthy(`http://127.0.0.1:${port}/health/ready`, svc);
      const pool = new Pool(`http://127.0.0.1:${port}`, { connections: 32 });
      const pid = svc.child.pid as number;
      await httpCase("warm-up", pool, pid, db.name, 4, 100, 1);
      const batch = await httpCase("batch", pool, pid, db.name, 4, 1000, seconds);
      const single = await httpCase("single", pool, pid, db.name, 16, null, seconds);
      await pool.close();
      await svc.stop();

      // Delivery of a fresh backlog, after everything ingested above is out of the way.
      await sql`UPDATE lago_events SET state = 'delivered', settled_at = now() WHERE state = 'pending'`;
      await sql.unsafe(seedPending, [pendingCalls, `pend${size}`]);
      await sql`ANALYZE lago_events`;
      const from = await sql`SELECT now() AS t`;
      const worker = startService(["worker"], {
        DATABASE_URL: db.url,
        LAGO_WEBHOOK_URL: lago.url,
        LAGO_API_KEY: "lago-key",
      });
      await waitFor(
        async () =>
          (await sql`SELECT count(*)::int AS n FROM lago_events WHERE state = 'pending'`)[0]?.n === 0,
        "backlog delivered",
        600_000,
      );
      await worker.stop();
      const [d] = await sql`
        SELECT extract(epoch FROM max(e.settled_at) - (SELECT min(sent_at - make_interval(secs => duration_ms / 1000.0))
          FROM webhook_logs WHERE sent_at >= ${from[0]?.t}))::float8 AS s,
          (SELECT avg(duration_ms) FROM webhook_logs WHERE sent_at >= ${from[0]?.t})::float8 AS req_ms
        FROM lago_events e WHERE e.settled_at >= ${from[0]?.t}`;
      const deliveryRate = (pendingCalls * 2) / (d?.s ?? Number.NaN);
      rows.push([
        size.toLocaleString("en-US"),
        fmt(seedSeconds, 0),
        mb?.mb ?? 0,
        fmt(batch.events / batch.seconds),
        fmt(single.events / single.seconds),
        fmt(deliveryRate),
      ]);
      process.stderr.write(
        `${size}: batch ${fmt(batch.events / batch.seconds)} (${batch.errors} errors), single ${fmt(single.events / single.seconds)} (${single.errors} errors), delivery ${fmt(deliveryRate)}\n`,
      );
    }
    const stats = await lago.stats();
    const report = [
      "Cost growth",
      await machineInfo(),
      `ingest: ${seconds} s per case (batches of 1000 with 4 clients; single events with 16 clients); delivery: ${(pendingCalls * 2).toLocaleString("en-US")} pending events to the Lago double (20 ms)`,
      "",
      table(rows),
      "",
      `exactly once: ${stats.acceptedTwice === 0 ? "yes" : "NO"} (${stats.eventCount} events stored by the double)`,
    ].join("\n");
    process.stdout.write(`${report}\n`);
    if (!values.smoke) saveResult("growth", report);
    if (stats.acceptedTwice !== 0) throw new Error("an event was stored twice");
  } finally {
    await sql.end();
    await lago.proc.stop();
    await db.drop();
  }
}

await main();
