/**
 * Delivery benchmark (issue 7, item 2): events/s from the outbox to the Lago double answering after
 * 20 ms, with default settings, with more batches in flight, and against a 500 requests/s limit
 * enforced by the double (with the client-side cap just under it). Exactly-once is checked each time.
 * First, the limit: a bare script running the worker's own claim and settle statements (claim 100,
 * mark them delivered, commit) with no HTTP and no worker, on 4 and on 16 connections; the faster of
 * the two is the limit (on 2 cores, 16 claims at once spend PostgreSQL's time stepping over each
 * other's locked rows).
 *
 *   node bench/delivery.ts [--calls 50000] [--smoke]
 */
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";
import postgres from "postgres";
import { query } from "../src/db/queries.ts";
import {
  createDatabase,
  fmt,
  machineBusySeconds,
  machineInfo,
  startLagoDouble,
  startService,
  table,
  transactionCount,
  waitFor,
} from "./harness.ts";
import { postgresCpuSeconds, treeCpuSeconds } from "./lib.ts";
import { saveResult } from "./results.ts";

const { values } = parseArgs({
  options: { calls: { type: "string", default: "50000" }, smoke: { type: "boolean", default: false } },
});
const calls = values.smoke ? 2000 : Number(values.calls);
const customers = Array.from({ length: 100 }, (_, i) => `customer-${i}`);

interface Case {
  name: string;
  env: Record<string, string>;
  rateLimit?: number;
}

const cases: Case[] = [
  { name: "before: 4 in flight (the first default)", env: { LAGO_WORKER_CONCURRENCY: "4" } },
  { name: "default: 16 in flight", env: {} },
  { name: "best: 32 in flight", env: { LAGO_WORKER_CONCURRENCY: "32" } },
  {
    name: "Lago limit 500 req/s, cap 480",
    env: { LAGO_WORKER_CONCURRENCY: "32", LAGO_RATE_LIMIT_RPS: "480" },
    rateLimit: 500,
  },
];

async function seed(sql: postgres.Sql) {
  await sql.unsafe(readFileSync("bench/sql/seed-pending.sql", "utf8"), [
    calls,
    `run${Date.now().toString(36)}`,
  ]);
  await sql`VACUUM ANALYZE lago_events`;
}

/** The limit: the worker's claim and settle statements on `conns` connections, no HTTP, no worker process. */
async function bareCase(conns: number) {
  const db = await createDatabase("bench_delivery");
  const sql = postgres(db.url, { max: conns + 1, onnotice: () => {} });
  const migrate = startService(["migrate"], { DATABASE_URL: db.url });
  await new Promise((r) => migrate.child.on("exit", r));
  try {
    await seed(sql);
    // Open the connections before the first CPU sample (PostgreSQL's CPU is read per backend).
    await Promise.all(Array.from({ length: conns }, () => sql.begin((tx) => tx`SELECT pg_sleep(0.05)`)));
    const cpu0 = { p: postgresCpuSeconds(db.name), l: process.cpuUsage(), m: machineBusySeconds() };
    const started = performance.now();
    let batches = 0;
    const loop = async () => {
      for (;;) {
        const conn = await sql.reserve();
        try {
          const [, rows] = await Promise.all([
            conn.unsafe("BEGIN"),
            conn.unsafe<{ id: string }[]>(query("claim_due_events"), [100], { prepare: true }),
          ]);
          if (rows.length === 0) {
            await conn.unsafe("COMMIT");
            return;
          }
          await conn.unsafe(
            query("settle_events"),
            [
              rows.map((r) => r.id),
              rows.map(() => 200),
              "[]",
              JSON.stringify([{ success: true, status: 200, count: rows.length, ms: 0, error: null }]),
              "bare",
            ] as never,
            { prepare: true },
          );
          await conn.unsafe("COMMIT");
          batches++;
        } finally {
          conn.release();
        }
      }
    };
    await Promise.all(Array.from({ length: conns }, loop));
    const elapsed = (performance.now() - started) / 1000;
    const cpu = {
      worker: (() => {
        const u = process.cpuUsage(cpu0.l);
        return (u.user + u.system) / 1e6;
      })(),
      postgres: postgresCpuSeconds(db.name) - cpu0.p,
      lago: 0,
      machine: machineBusySeconds() - cpu0.m,
    };
    const [states] = await sql`SELECT count(*) FILTER (WHERE state = 'delivered')::int AS delivered,
      count(*) FILTER (WHERE state <> 'delivered')::int AS other FROM lago_events`;
    const events = calls * 2;
    return {
      // One per batch, and each connection's last claim, which found nothing.
      transactions: batches + conns,
      name: `limit: bare claim 100 + mark delivered, ${conns} conns, no HTTP`,
      events,
      elapsed,
      stats: { count429: 0 },
      ok: states?.delivered === events && states?.other === 0,
      requests: batches,
      requestMs: 0,
      cpu,
    };
  } finally {
    await sql.end();
    await db.drop();
  }
}

async function runCase(c: Case) {
  const db = await createDatabase("bench_delivery");
  const lago = await startLagoDouble({ latencyMs: 20, ...(c.rateLimit ? { rateLimit: c.rateLimit } : {}) });
  const sql = postgres(db.url, { max: 2, onnotice: () => {} });
  const migrate = startService(["migrate"], { DATABASE_URL: db.url });
  await new Promise((r) => migrate.child.on("exit", r));
  try {
    await lago.setup(customers);
    await seed(sql);
    const events = calls * 2;
    const x0 = await transactionCount(sql, db.name);
    const cpu0 = { p: postgresCpuSeconds(db.name), m: machineBusySeconds() };
    const started = performance.now();
    const worker = startService(["worker"], {
      DATABASE_URL: db.url,
      LAGO_WEBHOOK_URL: lago.url,
      LAGO_API_KEY: "lago-key",
      // e.g. "--cpu-prof --cpu-prof-dir=/tmp/prof" to profile the worker of each case
      ...(process.env.BENCH_SERVICE_NODE_OPTIONS
        ? { NODE_OPTIONS: process.env.BENCH_SERVICE_NODE_OPTIONS }
        : {}),
      ...c.env,
    });
    const lagoPid = lago.proc.child.pid as number;
    const lagoCpu0 = treeCpuSeconds(lagoPid);
    await waitFor(
      async () => (await sql`SELECT count(*)::int AS n FROM lago_events WHERE state = 'pending'`)[0]?.n === 0,
      "all delivered",
      600_000,
    );
    const wall = (performance.now() - started) / 1000;
    // Delivery time: from the first request to Lago to the last settle (the worker's start-up excluded).
    const [w] = await sql`SELECT extract(epoch FROM (SELECT max(settled_at) FROM lago_events)
      - (SELECT min(sent_at - make_interval(secs => duration_ms / 1000.0)) FROM webhook_logs))::float8 AS s`;
    const elapsed = w?.s ?? wall;
    const workerCpu = treeCpuSeconds(worker.child.pid as number);
    const cpu = {
      worker: workerCpu,
      postgres: postgresCpuSeconds(db.name) - cpu0.p,
      lago: treeCpuSeconds(lagoPid) - lagoCpu0,
      machine: machineBusySeconds() - cpu0.m,
    };
    await worker.stop();
    // The worker's backends report their counters as they exit, just after it does.
    await new Promise((r) => setTimeout(r, 1200));
    const transactions = (await transactionCount(sql, db.name)) - x0;
    const stats = await lago.stats();
    const [states] = await sql`SELECT count(*) FILTER (WHERE state = 'delivered')::int AS delivered,
      count(*) FILTER (WHERE state <> 'delivered')::int AS other FROM lago_events`;
    const [att] =
      await sql`SELECT count(*)::int AS requests, avg(duration_ms)::float8 AS ms FROM webhook_logs`;
    const ok =
      stats.eventCount === events &&
      stats.acceptedTwice === 0 &&
      states?.delivered === events &&
      states?.other === 0;
    return {
      transactions,
      name: c.name,
      events,
      elapsed,
      stats,
      ok,
      requests: att?.requests ?? 0,
      requestMs: att?.ms ?? 0,
      cpu,
    };
  } finally {
    await sql.end();
    await lago.proc.stop();
    await db.drop();
  }
}

async function main() {
  const rows: (string | number)[][] = [
    [
      "case",
      "events/s",
      "time s",
      "requests",
      "req/s",
      "avg req ms",
      "429s",
      "transactions",
      "stored once",
      "CPU s: worker",
      "postgres",
      "Lago double",
      "machine busy",
    ],
  ];
  type Result = Awaited<ReturnType<typeof runCase>>;
  const results: Result[] = [];
  const record = (r: Result) => {
    results.push(r);
    rows.push([
      r.name,
      fmt(r.events / r.elapsed),
      fmt(r.elapsed, 1),
      r.requests,
      fmt(r.requests / r.elapsed),
      fmt(r.requestMs, 1),
      r.stats.count429 ?? 0,
      r.transactions,
      r.ok ? "yes" : "NO",
      fmt(r.cpu.worker, 1),
      fmt(r.cpu.postgres, 1),
      fmt(r.cpu.lago, 1),
      `${fmt((r.cpu.machine / (r.elapsed * 2)) * 100)} %`,
    ]);
    process.stderr.write(`${r.name}: ${fmt(r.events / r.elapsed)} events/s\n`);
  };
  const bares = [await bareCase(4), await bareCase(16)];
  for (const b of bares) record(b);
  for (const c of cases) record(await runCase(c));
  const ours = results.slice(bares.length);
  const best = Math.max(...ours.map((r) => r.events / r.elapsed));
  const limit = Math.max(...bares.map((b) => b.events / b.elapsed));
  const byDefault = (ours[1]?.events ?? 0) / (ours[1]?.elapsed ?? 1);
  const limited = ours[3];
  const report = [
    "Delivery benchmark",
    await machineInfo(),
    `${calls.toLocaleString("en-US")} calls = ${(calls * 2).toLocaleString("en-US")} pending events per case; the Lago double answers after 20 ms; worker, double and PostgreSQL are separate processes.`,
    "",
    table(rows),
    "",
    `target >= 25,000 events/s with the default settings: ${fmt(byDefault)} -> ${byDefault >= 25_000 ? "met" : "missed"} (best case ${fmt(best)})`,
    `the bare-script limit (the faster of 4 and 16 connections): ${fmt(limit)} events/s; default settings reach ${fmt((byDefault / limit) * 100)} % of it`,
    limited
      ? `with Lago's 500 req/s: ${fmt(limited.events / limited.elapsed)} events/s, ${limited.stats.count429 ?? 0} answers 429 (theory: 500 × 100 = 50,000 events/s)`
      : "",
  ].join("\n");
  process.stdout.write(`${report}\n`);
  if (!values.smoke) saveResult("delivery", report);
  if (results.some((r) => !r.ok)) throw new Error("exactly-once check failed");
}

await main();
