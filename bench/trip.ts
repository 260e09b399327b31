/**
 * The cost of one call that travels alone: LiteLLM payloads posted one per request at a fixed rate
 * (what the billing callback does below a batch's worth of calls), through the service to the Lago
 * double, without the proxy. Prints CPU per call of the service, PostgreSQL and the Lago double, the
 * round trips per call, and the lag from ingest commit to settle. Fast (about 1 minute): the loop for
 * the "CPU outside the proxy per call" figure that bench/litellm.ts measures with the real proxy.
 *
 *   node bench/trip.ts [--rate 40] [--seconds 20] [--lago-latency-ms 0]
 *
 * Extra service variables: BENCH_SERVICE_ENV='{"LAGO_WORKER_LINGER_MS":"0"}'.
 */
import { parseArgs } from "node:util";
import postgres from "postgres";
import { Pool } from "undici";
import { litellmPayload } from "../test/support/payloads.ts";
import {
  createDatabase,
  freePort,
  machineBusySeconds,
  machineInfo,
  SECRET,
  startLagoDouble,
  startService,
  waitFor,
  waitHealthy,
} from "./harness.ts";
import { fmt, percentile, postgresCpuSeconds, Report, sleep, treeCpuSeconds } from "./lib.ts";
import { saveResult } from "./results.ts";

const { values: args } = parseArgs({
  options: {
    rate: { type: "string", default: "40" },
    seconds: { type: "string", default: "20" },
    "lago-latency-ms": { type: "string", default: "0" },
  },
});
const rate = Number(args.rate);
const seconds = Number(args.seconds);
const customers = Array.from({ length: 10 }, (_, i) => `customer-${i}`);

async function main() {
  const report = new Report();
  report.line(await machineInfo());
  report.line(
    `rate ${rate} calls/s for ${seconds} s, one payload per POST; Lago double at ${args["lago-latency-ms"]} ms`,
  );
  const db = await createDatabase("bench_trip");
  const lago = await startLagoDouble({ latencyMs: Number(args["lago-latency-ms"]) });
  const migrate = startService(["migrate"], { DATABASE_URL: db.url });
  await new Promise((r) => migrate.child.on("exit", r));
  const port = await freePort();
  const extra = JSON.parse(process.env.BENCH_SERVICE_ENV ?? "{}") as Record<string, string>;
  const svc = startService(["serve", "--host", "127.0.0.1", "--port", String(port)], {
    DATABASE_URL: db.url,
    LAGO_WEBHOOK_URL: lago.url,
    LAGO_API_KEY: "lago-key",
    ...(process.env.BENCH_SERVICE_NODE_OPTIONS
      ? { NODE_OPTIONS: process.env.BENCH_SERVICE_NODE_OPTIONS }
      : {}),
    ...extra,
  });
  const sql = postgres(db.url, { max: 1, onnotice: () => {} });
  const pool = new Pool(`http://127.0.0.1:${port}`, { connections: 4 });
  try {
    await waitHealthy(`http://127.0.0.1:${port}/health`, svc);
    await lago.setup(customers);
    let seq = 0;
    const post = async () => {
      const p = litellmPayload({ end_user: customers[seq++ % customers.length] });
      const res = await pool.request({
        method: "POST",
        path: "/webhooks/litellm",
        headers: { authorization: `Bearer ${SECRET}`, "content-type": "application/json" },
        body: `[${JSON.stringify(p)}]`,
      });
      await res.body.text();
      if (res.statusCode !== 202) throw new Error(`ingest answered ${res.statusCode}`);
    };
    const pending = async () =>
      (await sql`SELECT count(*)::int AS n FROM lago_events WHERE state = 'pending'`)[0]?.n as number;
    // Warm-up: the same load for a few seconds, then everything delivered.
    const paced = async (n: number) => {
      const t0 = performance.now();
      const inflight: Promise<void>[] = [];
      for (let i = 0; i < n; i++) {
        const due = t0 + (i * 1000) / rate;
        const wait = due - performance.now();
        if (wait > 0) await sleep(wait);
        inflight.push(post());
      }
      await Promise.all(inflight);
    };
    await paced(rate * 3);
    await waitFor(async () => (await pending()) === 0, "warm-up delivered", 120_000);
    const pids = { svc: svc.child.pid as number, lago: lago.proc.child.pid as number };
    const sample = () => ({
      svc: treeCpuSeconds(pids.svc),
      pg: postgresCpuSeconds(db.name),
      lago: treeCpuSeconds(pids.lago),
      machine: machineBusySeconds(),
    });
    const delta = (a: ReturnType<typeof sample>, b: ReturnType<typeof sample>) => ({
      svc: b.svc - a.svc,
      pg: b.pg - a.pg,
      lago: b.lago - a.lago,
      machine: b.machine - a.machine,
    });
    // Idle: the same length of time with no calls (timers, polls, metrics).
    const i0 = sample();
    await sleep(seconds * 1000);
    const idle = delta(i0, sample());
    const [mark] = await sql`SELECT coalesce(max(id), 0)::bigint AS id FROM lago_events`;
    const statements0 = await statementCount(sql, db.name);
    const c0 = sample();
    const calls = rate * seconds;
    await paced(calls);
    await waitFor(async () => (await pending()) === 0, "all delivered", 120_000);
    const load = delta(c0, sample());
    const statements1 = await statementCount(sql, db.name);
    const statements = statements0 === null || statements1 === null ? null : statements1 - statements0;
    const rows = await sql<
      { ms: number }[]
    >`SELECT extract(epoch FROM l.settled_at - u.received_at)::float8 * 1000 AS ms
      FROM lago_events l JOIN usage_events u ON u.id = l.usage_event_id WHERE l.id > ${mark?.id as string}`;
    const stats = await lago.stats();
    const lag = rows.map((r) => r.ms);
    const per = (s: number) => fmt((s * 1000) / calls, 3);
    report.line("");
    report.line(`calls ${calls}, outgoing events ${rows.length}, Lago requests ${stats.batchRequests}`);
    report.line(`CPU ms per call         service  postgres  lago double  svc+pg+lago  machine`);
    report.line(
      `under load            ${per(load.svc).padStart(9)} ${per(load.pg).padStart(9)} ${per(load.lago).padStart(12)} ${per(load.svc + load.pg + load.lago).padStart(12)} ${per(load.machine).padStart(8)}`,
    );
    report.line(
      `idle, same time       ${per(idle.svc).padStart(9)} ${per(idle.pg).padStart(9)} ${per(idle.lago).padStart(12)} ${per(idle.svc + idle.pg + idle.lago).padStart(12)} ${per(idle.machine).padStart(8)}`,
    );
    report.line(
      `PostgreSQL transactions per call (the bench's own polls included): ${statements === null ? "n/a" : fmt(statements / calls, 2)}`,
    );
    report.line(
      `ingest commit -> settled, ms: p50 ${fmt(percentile(lag, 50), 1)}  p99 ${fmt(percentile(lag, 99), 1)}  max ${fmt(Math.max(...lag), 1)}`,
    );
    const [states] = await sql`SELECT count(*) FILTER (WHERE state = 'delivered')::int AS delivered,
      count(*) FILTER (WHERE state <> 'delivered')::int AS other FROM lago_events`;
    report.line(
      `check: ${states?.delivered} delivered, ${states?.other} not, Lago stored ${stats.eventCount}, accepted twice ${stats.acceptedTwice}`,
    );
    saveResult("trip", report.lines.join("\n"));
  } finally {
    await pool.close();
    await sql.end();
    await svc.stop();
    await lago.proc.stop();
    await db.drop();
  }
}

/** Transactions run against the database so far. */
async function statementCount(sql: postgres.Sql, database: string): Promise<number | null> {
  const [r] =
    await sql`SELECT (xact_commit + xact_rollback)::float8 AS n FROM pg_stat_database WHERE datname = ${database}`;
  return r ? Number(r.n) : null;
}

await main();
