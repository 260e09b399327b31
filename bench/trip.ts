/**
 * The cost of one call that travels alone: LiteLLM payloads posted one per request at a fixed rate
 * (what the billing callback does below a batch's worth of calls), through the service to the Lago
 * double, without the proxy. Prints CPU per call of the service, PostgreSQL and the Lago double, the
 * transactions per call, and the lag from ingest commit to settle; then the same load against the
 * floor (bench/trip-floor.ts: the same trips, one INSERT, one Lago POST, one UPDATE, and nothing
 * else), and our ratio to it. About 1.5 minutes: the loop for the "CPU outside the proxy per call"
 * figure that bench/litellm.ts measures with the real proxy.
 *
 *   node bench/trip.ts [--rate 40] [--seconds 20] [--lago-latency-ms 0] [--only service|floor] [--smoke]
 *
 * Extra service variables: BENCH_SERVICE_ENV='{"LAGO_WORKER_LINGER_MS":"0"}'.
 */
import { parseArgs } from "node:util";
import postgres from "postgres";
import { Pool } from "undici";
import { litellmPayload } from "../test/support/payloads.ts";
import {
  type Child,
  createDatabase,
  freePort,
  machineBusySeconds,
  machineInfo,
  PG,
  SECRET,
  spawnChild,
  startLagoDouble,
  startService,
  transactionCount,
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
    only: { type: "string" },
    smoke: { type: "boolean", default: false },
  },
});
const rate = args.smoke ? 20 : Number(args.rate);
const seconds = args.smoke ? 1 : Number(args.seconds);
const customers = Array.from({ length: 10 }, (_, i) => `customer-${i}`);

/** What a case starts: an ingest endpoint, the processes to measure, and how to read its outbox. */
interface Target {
  /** The database's actual name (createDatabase makes it unique). */
  database: string;
  port: number;
  path: string;
  procs: { svc: Child; lago: Child };
  /** Calls not settled yet. */
  pending: () => Promise<number>;
  /** Milliseconds from ingest commit to settle, per call since `mark`. */
  lagSince: (mark: string) => Promise<number[]>;
  mark: () => Promise<string>;
  /** What was stored, and whether every call was delivered (settled) exactly once. */
  check: () => Promise<{ line: string; ok: boolean }>;
  stop: () => Promise<void>;
}

interface Figures {
  svc: number;
  pg: number;
  lago: number;
  machine: number;
  idle: { svc: number; pg: number; lago: number };
  transactions: number;
  lag: number[];
  ok: boolean;
}

async function serviceTarget(dbName: string): Promise<Target> {
  const db = await createDatabase(dbName);
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
  await waitHealthy(`http://127.0.0.1:${port}/health`, svc);
  await lago.setup(customers);
  return {
    database: db.name,
    port,
    path: "/webhooks/litellm",
    procs: { svc, lago: lago.proc },
    pending: async () =>
      (await sql`SELECT count(*)::int AS n FROM lago_events WHERE state = 'pending'`)[0]?.n as number,
    mark: async () => (await sql`SELECT coalesce(max(id), 0)::text AS id FROM lago_events`)[0]?.id as string,
    lagSince: async (mark) =>
      (
        await sql<
          { ms: number }[]
        >`SELECT extract(epoch FROM l.settled_at - u.received_at)::float8 * 1000 AS ms
          FROM lago_events l JOIN usage_events u ON u.id = l.usage_event_id WHERE l.id > ${mark}`
      ).map((r) => r.ms),
    check: async () => {
      const [s] = await sql`SELECT count(*) FILTER (WHERE state = 'delivered')::int AS delivered,
        count(*) FILTER (WHERE state <> 'delivered')::int AS other FROM lago_events`;
      const l = await lago.stats();
      return {
        line: `${s?.delivered} outgoing events delivered, ${s?.other} not; Lago requests ${l.batchRequests}, events stored ${l.eventCount}, accepted twice ${l.acceptedTwice}`,
        ok: s?.other === 0 && l.eventCount === s?.delivered && l.acceptedTwice === 0,
      };
    },
    stop: async () => {
      await sql.end();
      await svc.stop();
      await lago.proc.stop();
      await db.drop();
    },
  };
}

async function floorTarget(dbName: string): Promise<Target> {
  const db = await createDatabase(dbName);
  const lagoPort = await freePort();
  const lago = spawnChild(process.execPath, ["bench/trip-floor.ts", "lago"], { PORT: String(lagoPort) });
  const port = await freePort();
  const svc = spawnChild(process.execPath, ["bench/trip-floor.ts", "server"], {
    PORT: String(port),
    DATABASE_URL: db.url,
    LAGO_URL: `http://127.0.0.1:${lagoPort}`,
  });
  await waitHealthy(`http://127.0.0.1:${lagoPort}/`, lago);
  await waitHealthy(`http://127.0.0.1:${port}/`, svc);
  const sql = postgres(db.url, { max: 1, onnotice: () => {} });
  return {
    database: db.name,
    port,
    path: "/",
    procs: { svc, lago },
    pending: async () =>
      (await sql`SELECT count(*)::int AS n FROM floor_calls WHERE settled_at IS NULL`)[0]?.n as number,
    mark: async () => (await sql`SELECT coalesce(max(id), 0)::text AS id FROM floor_calls`)[0]?.id as string,
    lagSince: async (mark) =>
      (
        await sql<{ ms: number }[]>`SELECT extract(epoch FROM settled_at - received_at)::float8 * 1000 AS ms
          FROM floor_calls WHERE id > ${mark}`
      ).map((r) => r.ms),
    check: async () => {
      const [s] = await sql`SELECT count(*) FILTER (WHERE settled_at IS NOT NULL)::int AS settled,
        count(*) FILTER (WHERE settled_at IS NULL)::int AS other FROM floor_calls`;
      return { line: `${s?.settled} calls settled, ${s?.other} not`, ok: s?.other === 0 };
    },
    stop: async () => {
      await sql.end();
      await svc.stop();
      await lago.stop();
      await db.drop();
    },
  };
}

/** Warm-up, an idle window, then `rate` calls a second for `seconds`, everything settled. */
async function measure(t: Target, report: Report): Promise<Figures> {
  const dbName = t.database;
  const pool = new Pool(`http://127.0.0.1:${t.port}`, { connections: 4 });
  const stats = postgres(PG, { max: 1, onnotice: () => {} });
  try {
    let seq = 0;
    const post = async () => {
      const p = litellmPayload({ end_user: customers[seq++ % customers.length] });
      const res = await pool.request({
        method: "POST",
        path: t.path,
        headers: { authorization: `Bearer ${SECRET}`, "content-type": "application/json" },
        body: `[${JSON.stringify(p)}]`,
      });
      await res.body.text();
      if (res.statusCode !== 202) throw new Error(`ingest answered ${res.statusCode}`);
    };
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
    await waitFor(async () => (await t.pending()) === 0, "warm-up settled", 120_000);
    const pids = { svc: t.procs.svc.child.pid as number, lago: t.procs.lago.child.pid as number };
    const sample = () => ({
      svc: treeCpuSeconds(pids.svc),
      pg: postgresCpuSeconds(dbName),
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
    const mark = await t.mark();
    const x0 = await transactionCount(stats, dbName);
    const c0 = sample();
    await paced(rate * seconds);
    await waitFor(async () => (await t.pending()) === 0, "all settled", 120_000);
    const load = delta(c0, sample());
    // The service's backends stay open: once idle they report their last counters within 10 s.
    if (!args.smoke) await sleep(11_000);
    const x1 = await transactionCount(stats, dbName);
    const lag = await t.lagSince(mark);
    const check = await t.check();
    report.line(check.line);
    return {
      ok: check.ok,
      ...load,
      idle,
      transactions: x1 - x0,
      lag,
    };
  } finally {
    await pool.close();
    await stats.end();
  }
}

async function main() {
  const report = new Report();
  report.line(await machineInfo());
  report.line(
    `rate ${rate} calls/s for ${seconds} s, one payload per POST; Lago double at ${args["lago-latency-ms"]} ms`,
  );
  const calls = rate * seconds;
  const per = (s: number) => fmt((s * 1000) / calls, 3).padStart(9);
  const results: Record<string, Figures> = {};
  const cases = [
    ["service", "the service (serve) and the Lago double", serviceTarget],
    ["floor", "the floor (bench/trip-floor.ts: INSERT, Lago POST, UPDATE, nothing else)", floorTarget],
  ] as const;
  for (const [name, label, start] of cases) {
    if (args.only && args.only !== name) continue;
    const dbName = `bench_trip_${name}`;
    report.line("");
    report.line(`== ${label}`);
    const t = await start(dbName);
    try {
      const f = await measure(t, report);
      results[name] = f;
      report.line(`CPU ms per call        ingest side  postgres  Lago side  sum        machine`);
      report.line(
        `under load            ${per(f.svc)} ${per(f.pg)} ${per(f.lago)} ${per(f.svc + f.pg + f.lago)} ${per(f.machine)}`,
      );
      report.line(
        `idle, same time       ${per(f.idle.svc)} ${per(f.idle.pg)} ${per(f.idle.lago)} ${per(f.idle.svc + f.idle.pg + f.idle.lago)}`,
      );
      report.line(
        `PostgreSQL transactions per call (the bench's own polls included): ${fmt(f.transactions / calls, 2)}`,
      );
      report.line(
        `ingest commit -> settled, ms: p50 ${fmt(percentile(f.lag, 50), 1)}  p99 ${fmt(percentile(f.lag, 99), 1)}  max ${fmt(Math.max(...f.lag), 1)}`,
      );
    } finally {
      await t.stop();
    }
  }
  const s = results.service;
  const fl = results.floor;
  if (s && fl) {
    const sum = (f: Figures) => f.svc + f.pg + f.lago;
    report.line("");
    report.line(
      `service / floor, CPU per call: ${fmt(sum(s) / sum(fl), 2)}x (ingest side ${fmt(s.svc / fl.svc, 2)}x, postgres ${fmt(s.pg / fl.pg, 2)}x, Lago side ${fmt(s.lago / fl.lago, 2)}x)`,
    );
  }
  const failed = Object.entries(results).filter(([, f]) => !f.ok);
  report.line(
    failed.length === 0
      ? "exactly once: every call delivered (service: Lago stored each event once)"
      : `exactly once: FAILED for ${failed.map(([n]) => n).join(", ")}`,
  );
  if (!args.smoke) saveResult("trip", report.lines.join("\n"));
  if (failed.length > 0) process.exitCode = 1;
}

await main();
