/**
 * Ingest benchmark (issue 7, item 1): events/s and latency through the HTTP API into PostgreSQL,
 * beside the machine's limit measured in the same run: a bare script inserting the same rows
 * (ledger row + two outbox rows per call) with multi-row INSERTs.
 *
 *   node bench/ingest.ts [--seconds 10] [--smoke]
 */
import { parseArgs } from "node:util";
import postgres from "postgres";
import { Pool } from "undici";
import {
  createDatabase,
  fmt,
  freePort,
  machineBusySeconds,
  machineInfo,
  startService,
  table,
  waitHealthy,
} from "./harness.ts";
import { postgresCpuSeconds, sortedPercentile } from "./lib.ts";
import { type CaseResult, event, httpCase, now } from "./load.ts";
import { saveResult } from "./results.ts";

const { values } = parseArgs({
  options: { seconds: { type: "string", default: "10" }, smoke: { type: "boolean", default: false } },
});
const seconds = values.smoke ? 1 : Number(values.seconds);

/** The limit: the same rows straight into the same tables, 1000 calls per INSERT, 4 connections. */
async function rawInsertCase(url: string, database: string): Promise<CaseResult> {
  const sql = postgres(url, { max: 4, onnotice: () => {} });
  const latencies: number[] = [];
  let events = 0;
  // Open the 4 connections before the first CPU sample and read the last one before closing them:
  // PostgreSQL's CPU is read per backend process.
  await Promise.all(Array.from({ length: 4 }, () => sql.begin((tx) => tx`SELECT pg_sleep(0.05)`)));
  const cpu0 = { p: postgresCpuSeconds(database), l: process.cpuUsage(), m: machineBusySeconds() };
  const started = performance.now();
  const deadline = started + seconds * 1000;
  const worker = async () => {
    while (performance.now() < deadline) {
      const rows = Array.from({ length: 1000 }, event);
      const t0 = performance.now();
      await sql.begin(async (tx) => {
        const ids = await tx`
          INSERT INTO usage_events (request_id, event_time, customer_id, user_id, team_id, api_key_hash, model,
            provider, tokens_input, tokens_output, total_tokens, cost_usd, source, fingerprint)
          SELECT r, to_timestamp(${now}), c, 'user-789', 'team-456', 'key_a1b2c3', 'gpt-4o', 'openai', i, 150,
            i + 150, 0.00375, 'api', 'x'
          FROM unnest(${rows.map((r) => r.request_id)}::text[], ${rows.map((r) => r.customer_id)}::text[],
            ${rows.map((r) => r.tokens_input)}::bigint[]) AS t(r, c, i)
          RETURNING id, request_id, customer_id`;
        await tx`
          INSERT INTO lago_events (usage_event_id, transaction_id, customer_id, code, event_timestamp, properties,
            external_subscription_id)
          SELECT id, request_id || k, customer_id, 'llm_tokens', ${now},
            jsonb_build_object('tokens', 100, 'model', 'gpt-4o', 'type', k, 'provider', 'openai'), customer_id
          FROM unnest(${ids.map((r) => r.id)}::bigint[], ${ids.map((r) => r.request_id)}::text[],
            ${ids.map((r) => r.customer_id)}::text[]) AS t(id, request_id, customer_id)
          CROSS JOIN (VALUES (':input'), (':output')) AS kinds(k)`;
      });
      latencies.push(performance.now() - t0);
      events += rows.length;
    }
  };
  await Promise.all(Array.from({ length: 4 }, worker));
  const elapsed = (performance.now() - started) / 1000;
  const postgresCpu = postgresCpuSeconds(database) - cpu0.p;
  await sql.end();
  const l = process.cpuUsage(cpu0.l);
  return {
    name: "raw INSERT ×1000 (limit)",
    events,
    seconds: elapsed,
    latencies: latencies.sort((a, b) => a - b),
    errors: 0,
    cpu: {
      service: 0,
      postgres: postgresCpu,
      loadgen: (l.user + l.system) / 1e6,
      machine: machineBusySeconds() - cpu0.m,
    },
  };
}

async function main() {
  const db = await createDatabase("bench_ingest");
  const port = await freePort();
  const svc = startService(["serve", "--host", "127.0.0.1", "--port", String(port)], {
    DATABASE_URL: db.url,
    WORKER_ENABLED: "false",
  });
  try {
    await waitHealthy(`http://127.0.0.1:${port}/health/ready`, svc);
    const pool = new Pool(`http://127.0.0.1:${port}`, { connections: 64, pipelining: 1 });
    const pid = svc.child.pid as number;
    const results: CaseResult[] = [];
    const warm = await httpCase("warm-up", pool, pid, db.name, 8, 100, Math.min(seconds, 3));
    results.push(await rawInsertCase(db.url, db.name));
    for (const c of [1, 16, 64])
      results.push(await httpCase(`single, ${c} clients`, pool, pid, db.name, c, null, seconds));
    results.push(await httpCase("batch of 100, 4 clients", pool, pid, db.name, 4, 100, seconds));
    results.push(await httpCase("batch of 1000, 4 clients", pool, pid, db.name, 4, 1000, seconds));
    await pool.close();
    const limit = (results[0] as CaseResult).events / (results[0] as CaseResult).seconds;
    const sql = postgres(db.url, { max: 1, onnotice: () => {} });
    const [count] =
      await sql`SELECT (SELECT count(*) FROM usage_events)::int AS calls, (SELECT count(*) FROM lago_events)::int AS events`;
    await sql.end();
    const expected = results.reduce((s, r) => s + r.events, warm.events);
    const rows: (string | number)[][] = [
      [
        "case",
        "events/s",
        "vs limit",
        "p50 ms",
        "p99 ms",
        "errors",
        "CPU s per 10k ev: service",
        "postgres",
        "loadgen",
        "machine busy",
      ],
    ];
    for (const r of results) {
      const rate = r.events / r.seconds;
      const per = (x: number) => fmt((x / Math.max(1, r.events)) * 10_000, 2);
      rows.push([
        r.name,
        fmt(rate),
        `${fmt((rate / limit) * 100)} %`,
        fmt(sortedPercentile(r.latencies, 50), 1),
        fmt(sortedPercentile(r.latencies, 99), 1),
        r.errors,
        per(r.cpu.service),
        per(r.cpu.postgres),
        per(r.cpu.loadgen),
        `${fmt((r.cpu.machine / (r.seconds * 2)) * 100)} %`,
      ]);
    }
    const single16 = (results[2] as CaseResult).events / (results[2] as CaseResult).seconds;
    const batch1000 = (results[5] as CaseResult).events / (results[5] as CaseResult).seconds;
    const verdict = (ok: boolean) => (ok ? "met" : "missed");
    const report = [
      "Ingest benchmark",
      await machineInfo(),
      `${seconds} s per case; the service runs as its own process (WORKER_ENABLED=false); the load generator is this process.`,
      "",
      table(rows),
      "",
      `target single-event >= 4,000 events/s (16 clients; judged on the median of three runs): ${fmt(single16)} -> ${verdict(single16 >= 4000)} in this run`,
      `target batch of 1000 >= 70 % of the raw insert rate of this run: ${fmt((batch1000 / limit) * 100)} % -> ${verdict(batch1000 >= limit * 0.7)}`,
      `correctness: ${count?.calls} calls stored, ${expected} acknowledged (HTTP and raw inserts), ${count?.events} outbox rows`,
    ].join("\n");
    process.stdout.write(`${report}\n`);
    if (!values.smoke) saveResult("ingest", report);
    if ((count?.calls ?? 0) !== expected) throw new Error("acknowledged events are missing from the ledger");
    if ((count?.events ?? 0) !== (count?.calls ?? 0) * 2)
      throw new Error("outbox rows do not match the ledger");
  } finally {
    await svc.stop();
    await db.drop();
  }
}

await main();
