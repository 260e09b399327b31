/**
 * Ingest benchmark (issue 7, item 1): events/s and latency through the HTTP API into PostgreSQL,
 * beside the machine's limit measured in the same run: a bare script inserting the same rows
 * (ledger row + two outbox rows per call, every column as the service writes it) with multi-row
 * INSERTs, and the thinner-row script that was the limit before 2026-12-03.
 *
 *   node bench/ingest.ts [--seconds 10] [--smoke]
 */
import { createHash } from "node:crypto";
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

/**
 * One 1000-call batch of a raw case: builds its rows and returns the insert, which resolves with the
 * calls it inserted (only the insert is timed, as for the HTTP cases).
 */
type RawBatch = (sql: postgres.Sql) => () => Promise<number>;

/**
 * A bare-script limit: `batch` in a loop on 4 connections for the run's length, with the CPU of
 * PostgreSQL, this process and the machine sampled around it.
 */
async function rawCase(
  name: string,
  url: string,
  database: string,
  prepare: (sql: postgres.Sql) => Promise<RawBatch>,
): Promise<CaseResult> {
  const sql = postgres(url, { max: 4, onnotice: () => {} });
  const batch = await prepare(sql);
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
      const insert = batch(sql);
      const t0 = performance.now();
      const n = await insert(); // not `events += await`: that reads events before the await
      latencies.push(performance.now() - t0);
      events += n;
    }
  };
  await Promise.all(Array.from({ length: 4 }, worker));
  const elapsed = (performance.now() - started) / 1000;
  const postgresCpu = postgresCpuSeconds(database) - cpu0.p;
  await sql.end();
  const l = process.cpuUsage(cpu0.l);
  return {
    name,
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

/** The limit before 2026-12-03: thin rows (ten columns NULL or constant), 1000 calls per INSERT. */
function rawInsertCase(url: string, database: string): Promise<CaseResult> {
  return rawCase("raw INSERT ×1000, thin rows", url, database, async () => (sql) => {
    const rows = Array.from({ length: 1000 }, event);
    return async () => {
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
      return rows.length;
    };
  });
}

/**
 * The limit for the same rows: every column the service writes, with the values it wrote for the
 * warm-up's first call (metadata, fingerprint, both outgoing events' properties), varied per call
 * as the load varies them, all sent as arrays; plain INSERTs (no dedupe), 1000 calls per
 * transaction, 4 connections. The thin-row limit above leaves ten columns NULL or constant.
 */
function rawSameRowsCase(url: string, database: string): Promise<CaseResult> {
  return rawCase("raw INSERT ×1000, same rows (limit)", url, database, async (sql) => {
    const [t] = await sql`
    SELECT id, request_id, extract(epoch FROM event_time)::float8 AS event_time, user_id, team_id, org_id,
      api_key_hash, model, provider, call_type, status, tokens_output, tokens_cached, tokens_cache_write,
      tokens_reasoning, cost_usd::text AS cost_usd, cost_source, billable::text AS billable, not_billable_reason,
      source, metadata::text AS metadata
    FROM usage_events WHERE source = 'api' ORDER BY id LIMIT 1`;
    if (!t) throw new Error("no warm-up row to copy");
    const templateEvents = await sql`
    SELECT substr(transaction_id, length(${t.request_id as string}) + 1) AS suffix, code,
      event_timestamp::text AS event_timestamp, properties::text AS properties,
      precise_total_amount_cents::text AS cents, external_subscription_id IS NOT NULL AS has_sub
    FROM lago_events WHERE usage_event_id = ${t.id as string} ORDER BY id`;
    let seq = 0;
    const run = createHash("sha256").update(String(Math.random())).digest("hex").slice(0, 8);
    const col = <T>(n: number, f: (i: number) => T) => Array.from({ length: n }, (_, i) => f(i));
    return () => {
      const first = seq;
      seq += 1000;
      const ids = col(1000, (i) => `raw2-${run}-${first + i}`);
      const customers = col(1000, (i) => `customer-${(first + i) % 100}`);
      const input = col(1000, (i) => 100 + ((first + i) % 50));
      const same = <T>(v: T) => col(1000, () => v);
      return async () => {
        await sql.begin(async (tx) => {
          const rows = await tx`
          INSERT INTO usage_events (request_id, event_time, customer_id, user_id, team_id, org_id, api_key_hash,
            model, provider, call_type, status, tokens_input, tokens_output, tokens_cached, tokens_cache_write,
            tokens_reasoning, total_tokens, cost_usd, cost_source, billable, not_billable_reason, source,
            fingerprint, metadata)
          SELECT r, to_timestamp(et), c, u, tm, o, k, m, p, ct, st, ti, tout, tc, tcw, tr, tt, cu, cs, b::boolean,
            nb, src, f, md::jsonb
          FROM unnest(${ids}::text[], ${same(t.event_time)}::float8[], ${customers}::text[],
            ${same(t.user_id)}::text[], ${same(t.team_id)}::text[], ${same(t.org_id)}::text[],
            ${same(t.api_key_hash)}::text[], ${same(t.model)}::text[], ${same(t.provider)}::text[],
            ${same(t.call_type)}::text[], ${same(t.status)}::text[], ${input}::bigint[],
            ${same(t.tokens_output)}::bigint[], ${same(t.tokens_cached)}::bigint[],
            ${same(t.tokens_cache_write)}::bigint[], ${same(t.tokens_reasoning)}::bigint[],
            ${input.map((i) => i + 150)}::bigint[], ${same(t.cost_usd)}::numeric[], ${same(t.cost_source)}::text[],
            ${same(t.billable)}::text[], ${same(t.not_billable_reason)}::text[], ${same(t.source)}::text[],
            ${ids.map((r) => createHash("sha256").update(r).digest("hex"))}::text[], ${same(t.metadata)}::text[])
            AS x(r, et, c, u, tm, o, k, m, p, ct, st, ti, tout, tc, tcw, tr, tt, cu, cs, b, nb, src, f, md)
          RETURNING id, request_id, customer_id`;
          const ev = rows.flatMap((r) => templateEvents.map((e) => ({ r, e })));
          await tx`
          INSERT INTO lago_events (usage_event_id, transaction_id, customer_id, code, event_timestamp, properties,
            precise_total_amount_cents, external_subscription_id)
          SELECT i, tx, c, cd, ts, pr::jsonb, pc, sub
          FROM unnest(${ev.map((x) => x.r.id)}::bigint[], ${ev.map((x) => x.r.request_id + x.e.suffix)}::text[],
            ${ev.map((x) => x.r.customer_id)}::text[], ${ev.map((x) => x.e.code)}::text[],
            ${ev.map((x) => x.e.event_timestamp)}::numeric[], ${ev.map((x) => x.e.properties)}::text[],
            ${ev.map((x) => x.e.cents)}::numeric[], ${ev.map((x) => (x.e.has_sub ? x.r.customer_id : null))}::text[])
            AS x(i, tx, c, cd, ts, pr, pc, sub)`;
        });
        return ids.length;
      };
    };
  });
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
    results.push(await rawSameRowsCase(db.url, db.name));
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
    const rate = (i: number) => (results[i] as CaseResult).events / (results[i] as CaseResult).seconds;
    const thin = rate(1);
    const single16 = rate(3);
    const batch1000 = rate(6);
    const verdict = (ok: boolean) => (ok ? "met" : "missed");
    const report = [
      "Ingest benchmark",
      await machineInfo(),
      `${seconds} s per case; the service runs as its own process (WORKER_ENABLED=false); the load generator is this process.`,
      "",
      table(rows),
      "",
      `target single-event >= 4,000 events/s (16 clients; judged on the median of three runs): ${fmt(single16)} -> ${verdict(single16 >= 4000)} in this run`,
      `target batch of 1000 >= 70 % of the raw insert rate of this run (same rows): ${fmt((batch1000 / limit) * 100)} % -> ${verdict(batch1000 >= limit * 0.7)}`,
      `  (against the thin-row insert, the limit before 2026-12-03: ${fmt((batch1000 / thin) * 100)} %)`,
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
