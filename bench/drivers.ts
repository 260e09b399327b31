/**
 * PostgreSQL driver benchmark: `postgres` (postgres.js, what the service uses) against `pg`
 * (node-postgres) on the statements the service runs, in a scratch database:
 *
 *   1. a single-row INSERT ... ON CONFLICT DO NOTHING RETURNING of a 20-column ledger row, prepared,
 *      at 1 and 16 concurrent callers (pool of 10 connections per driver);
 *   2. a 1000-row INSERT per statement, 4 concurrent callers: postgres.js with its `sql(rows)` helper
 *      and with unnest of array parameters, pg with unnest of array parameters;
 *   3. an outbox claim: BEGIN; SELECT ... FOR UPDATE SKIP LOCKED LIMIT 100; UPDATE ... WHERE id = ANY;
 *      COMMIT, 4 concurrent workers: one statement per round trip, and pipelined as the delivery
 *      worker does it (BEGIN with the claim, the update with the COMMIT: two round trips), for
 *      postgres.js on a reserved connection and for pg on a client with `pipeline: true`.
 *
 * Both drivers send the same SQL text (except the postgres.js helper, which builds its own VALUES
 * list), as named prepared statements. Each case runs in interleaved rounds (postgres.js, pg,
 * postgres.js, pg, ...), each on a freshly truncated (and, for the outbox, freshly seeded) table
 * after a CHECKPOINT, with an untimed warm-up; every run checks that the rows it reported are in the
 * table.
 *
 *   node bench/drivers.ts [--seconds 5] [--smoke]
 *
 * --seconds N: timed seconds per case and driver (split into rounds). --smoke: ~1 s per case, only
 * checks that rows were written (exit code 1 otherwise).
 */
import { readFileSync } from "node:fs";
import { loadavg } from "node:os";
import { parseArgs } from "node:util";
import pg from "pg";
import postgres from "postgres";
import { createDatabase, fmt, machineInfo, table } from "./harness.ts";
import { sortedPercentile } from "./lib.ts";
import { saveResult } from "./results.ts";

const { values } = parseArgs({
  options: { seconds: { type: "string", default: "5" }, smoke: { type: "boolean", default: false } },
});
const smoke = values.smoke;
const seconds = smoke ? 0.4 : Number(values.seconds);
if (!(seconds > 0)) throw new Error("--seconds must be a positive number");
const rounds = smoke ? 1 : seconds >= 4 ? 4 : 2;
const roundMs = (seconds / rounds) * 1000;
const warmMs = smoke ? 100 : 300;
const POOL = 10;

// ---------------------------------------------------------------------------------------------------
// Schema and statements

/** The ledger row: 20 columns of the types usage_events has (text, bigint, numeric, timestamptz, jsonb). */
const COLS = [
  ["request_id", "text"],
  ["event_time", "timestamptz"],
  ["customer_id", "text"],
  ["user_id", "text"],
  ["team_id", "text"],
  ["org_id", "text"],
  ["api_key_hash", "text"],
  ["model", "text"],
  ["provider", "text"],
  ["call_type", "text"],
  ["status", "text"],
  ["tokens_input", "bigint"],
  ["tokens_output", "bigint"],
  ["tokens_cached", "bigint"],
  ["tokens_reasoning", "bigint"],
  ["total_tokens", "bigint"],
  ["cost_usd", "numeric"],
  ["source", "text"],
  ["fingerprint", "text"],
  ["metadata", "jsonb"],
] as const;
type Col = (typeof COLS)[number][0];
type LedgerRow = Record<Col, string | number | Date | Record<string, unknown>>;

const SCHEMA = `
CREATE TABLE ledger (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  ${COLS.map(([c, t]) => `${c} ${t === "numeric" ? "numeric(24, 12)" : t} NOT NULL`).join(",\n  ")},
  received_at timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT ledger_request_id_key UNIQUE (request_id)
);
CREATE INDEX ledger_customer_time ON ledger (customer_id, event_time);
CREATE TABLE outbox (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  transaction_id text NOT NULL UNIQUE,
  customer_id text NOT NULL,
  code text NOT NULL,
  properties jsonb NOT NULL,
  state text NOT NULL DEFAULT 'pending',
  attempts integer NOT NULL DEFAULT 0,
  next_attempt_at timestamptz NOT NULL DEFAULT now(),
  settled_at timestamptz
);
CREATE INDEX outbox_due ON outbox (next_attempt_at, id) WHERE state = 'pending';`;

const NAMES = COLS.map(([c]) => c).join(", ");
const INSERT_ONE = `INSERT INTO ledger (${NAMES}) VALUES (${COLS.map((_, i) => `$${i + 1}`).join(", ")})
  ON CONFLICT (request_id) DO NOTHING RETURNING id`;
const INSERT_UNNEST = `INSERT INTO ledger (${NAMES})
  SELECT * FROM unnest(${COLS.map(([, t], i) => `$${i + 1}::${t}[]`).join(", ")})
  ON CONFLICT (request_id) DO NOTHING RETURNING id`;
const CLAIM = `SELECT id, transaction_id, customer_id, code, properties FROM outbox
  WHERE state = 'pending' AND next_attempt_at <= now()
  ORDER BY next_attempt_at, id LIMIT 100 FOR UPDATE SKIP LOCKED`;
const SETTLE = `UPDATE outbox SET state = 'delivered', attempts = attempts + 1, settled_at = now()
  WHERE id = ANY($1::bigint[])`;

let seq = 0;
const runId = Date.now().toString(36);
const t0 = Date.now() - 60_000;
function ledgerRow(): LedgerRow {
  seq++;
  return {
    request_id: `chatcmpl-${runId}-${seq}`,
    event_time: new Date(t0 + seq),
    customer_id: `customer-${seq % 100}`,
    user_id: "user-789",
    team_id: "team-456",
    org_id: "org-1",
    api_key_hash: "88dc28d0f030c55ed4ab77ed8faf098196cb1c05df778539800c9f1243fe6b4b",
    model: "gpt-4o",
    provider: "openai",
    call_type: "acompletion",
    status: "success",
    tokens_input: 100 + (seq % 50),
    tokens_output: 150,
    tokens_cached: 20,
    tokens_reasoning: 0,
    total_tokens: 250 + (seq % 50),
    cost_usd: "0.003750000000",
    source: "litellm",
    fingerprint: "5d41402abc4b2a76b9719d911017c592",
    metadata: { user_api_key_alias: "prod", tags: ["chat"], spend_logs_metadata: null },
  };
}
const rowValues = (r: LedgerRow) => COLS.map(([c]) => r[c]);
const columnArrays = (rows: LedgerRow[]) => COLS.map(([c]) => rows.map((r) => r[c]));

// ---------------------------------------------------------------------------------------------------
// Drivers and cases

type Driver = "postgres" | "pg";
interface Variant {
  driver: Driver;
  idiom: string;
  /** One operation; returns the rows it wrote (0 ends the run: conflict, or the outbox ran dry). */
  op: () => Promise<number>;
  /** postgres.js variants are compared with the pg variant of the same pairing (default "plain"). */
  pair?: string;
}
interface Case {
  name: string;
  table: "ledger" | "outbox";
  concurrency: number;
  variants: Variant[];
}

const PREPARED = { prepare: true } as const;
type PgValues = unknown[];

function cases(sql: postgres.Sql, pool: pg.Pool, pipelined: pg.Pool): Case[] {
  const pgQuery = (name: string, text: string, values: PgValues = []) => pool.query({ name, text, values });
  const insertOne: Variant[] = [
    {
      driver: "postgres",
      idiom: "unsafe(text, params, prepare)",
      op: async () =>
        (await sql.unsafe(INSERT_ONE, rowValues(ledgerRow()) as postgres.ParameterOrJSON<never>[], PREPARED))
          .length,
    },
    {
      driver: "pg",
      idiom: "pool.query({ name, text })",
      op: async () => (await pgQuery("insert_one", INSERT_ONE, rowValues(ledgerRow()))).rowCount ?? 0,
    },
  ];
  const batch = () => Array.from({ length: 1000 }, ledgerRow);
  // BEGIN is sent with the claim and the update with the COMMIT. On a pipelined client (`pipeline:
  // true`) that is two round trips, as in the delivery worker (src/delivery/worker.ts); on a plain one
  // pg queues each statement until the previous one is answered: one statement per round trip.
  const claimPg = (on: pg.Pool) => async () => {
    const c = await on.connect();
    try {
      const [, claimed] = await Promise.all([
        c.query("BEGIN"),
        c.query<{ id: string }>({ name: "claim", text: CLAIM }),
      ]);
      const ids = claimed.rows.map((r) => r.id);
      await Promise.all([
        ids.length > 0 ? c.query({ name: "settle", text: SETTLE, values: [ids] }) : null,
        c.query("COMMIT"),
      ]);
      return ids.length;
    } catch (err) {
      await c.query("ROLLBACK").catch(() => {});
      throw err;
    } finally {
      c.release();
    }
  };
  const claimPostgresPipelined = async () => {
    const c = await sql.reserve();
    try {
      const [, claimed] = await Promise.all([
        c.unsafe("BEGIN"),
        c.unsafe<{ id: string }[]>(CLAIM, [], PREPARED),
      ]);
      const ids = claimed.map((r) => r.id);
      await Promise.all([ids.length > 0 ? c.unsafe(SETTLE, [ids], PREPARED) : null, c.unsafe("COMMIT")]);
      return ids.length;
    } catch (err) {
      await c.unsafe("ROLLBACK").catch(() => {});
      throw err;
    } finally {
      c.release();
    }
  };
  const claimPostgres = () =>
    sql.begin(async (tx) => {
      const claimed = await tx.unsafe<{ id: string }[]>(CLAIM, [], PREPARED);
      const ids = claimed.map((r) => r.id);
      if (ids.length > 0) await tx.unsafe(SETTLE, [ids], PREPARED);
      return ids.length;
    });
  return [
    { name: "1 insert 1 row, 1 caller", table: "ledger", concurrency: 1, variants: insertOne },
    { name: "1 insert 1 row, 16 callers", table: "ledger", concurrency: 16, variants: insertOne },
    {
      name: "2 insert 1000 rows, 4 callers",
      table: "ledger",
      concurrency: 4,
      variants: [
        {
          driver: "postgres",
          idiom: "sql(rows) helper",
          op: async () =>
            (
              await sql`INSERT INTO ledger ${sql(batch() as unknown as Record<string, postgres.SerializableParameter>[])}
                ON CONFLICT (request_id) DO NOTHING RETURNING id`
            ).length,
        },
        {
          driver: "postgres",
          idiom: "unnest, unsafe prepare",
          op: async () =>
            (
              await sql.unsafe(
                INSERT_UNNEST,
                // a Date array needs sql.array (else its type is inferred as timestamptz, not an
                // array); the other columns' types come from the casts in the statement
                columnArrays(batch()).map((a, i) =>
                  COLS[i]?.[1] === "timestamptz" ? sql.array(a as Date[]) : a,
                ) as unknown as postgres.ParameterOrJSON<never>[],
                PREPARED,
              )
            ).length,
        },
        {
          driver: "pg",
          idiom: "unnest, named query",
          op: async () =>
            (await pgQuery("insert_unnest", INSERT_UNNEST, columnArrays(batch()))).rowCount ?? 0,
        },
      ],
    },
    {
      name: "3 claim 100 + update, 4 workers",
      table: "outbox",
      concurrency: 4,
      variants: [
        { driver: "postgres", idiom: "sql.begin, unsafe prepare", op: claimPostgres },
        { driver: "pg", idiom: "connect, BEGIN, named", op: claimPg(pool) },
        {
          driver: "postgres",
          idiom: "reserve, pipelined, prepare",
          op: claimPostgresPipelined,
          pair: "pipelined",
        },
        { driver: "pg", idiom: "pipeline: true, named", op: claimPg(pipelined), pair: "pipelined" },
      ],
    },
  ];
}

// ---------------------------------------------------------------------------------------------------
// Running

let interrupted = false;
class Interrupted extends Error {}

interface Run {
  ops: number;
  rows: number;
  ms: number;
  cpu: number;
  latencies: number[];
  dry: boolean;
}

/** Runs `op` from `concurrency` callers for `ms`; records latencies when `timed`. */
async function drive(
  op: () => Promise<number>,
  concurrency: number,
  ms: number,
  timed: boolean,
): Promise<Run> {
  const latencies: number[] = [];
  let ops = 0;
  let rows = 0;
  let dry = false;
  const cpu0 = process.cpuUsage();
  const started = performance.now();
  const deadline = started + ms;
  const caller = async () => {
    while (!dry && !interrupted && performance.now() < deadline) {
      const a = performance.now();
      const n = await op();
      if (timed) latencies.push(performance.now() - a);
      ops++;
      rows += n;
      if (n === 0) dry = true;
    }
  };
  await Promise.all(Array.from({ length: concurrency }, caller));
  const elapsed = performance.now() - started;
  const cpu = process.cpuUsage(cpu0);
  return { ops, rows, ms: elapsed, cpu: (cpu.user + cpu.system) / 1e6, latencies, dry };
}

interface Total {
  c: Case;
  v: Variant;
  runs: Run[];
}

async function main() {
  const db = await createDatabase("bench_drivers");
  let dropped = false;
  const drop = async () => {
    if (dropped) return;
    dropped = true;
    await db.drop();
  };
  // harness.ts exits at once on SIGINT/SIGTERM (it only has child processes to kill); we spawn none,
  // and want to finish the current operation and drop the scratch database first.
  for (const sig of ["SIGINT", "SIGTERM"] as const) {
    process.removeAllListeners(sig);
    process.on(sig, () => {
      if (interrupted) {
        // second signal: drop and leave now
        drop().finally(() => process.exit(130));
        return;
      }
      interrupted = true;
      process.stderr.write(`${sig}: stopping, dropping ${db.name}\n`);
    });
  }
  const admin = postgres(db.url, { max: 1, onnotice: () => {} });
  const sql = postgres(db.url, { max: POOL, onnotice: () => {} });
  const pool = new pg.Pool({ connectionString: db.url, max: POOL });
  const pipelinedPool = new pg.Pool({ connectionString: db.url, max: POOL, pipeline: true } as pg.PoolConfig);
  pool.on("error", () => {}); // idle clients killed by DROP DATABASE ... WITH (FORCE)
  pipelinedPool.on("error", () => {});
  let failed = false;
  try {
    await admin.unsafe(SCHEMA);
    const info = await machineInfo();
    const version = (p: string) =>
      (JSON.parse(readFileSync(`node_modules/${p}/package.json`, "utf8")) as { version: string }).version;
    const load0 = loadavg();
    let seed = Math.ceil(120 * (roundMs + warmMs)); // 120k rows/s; grows if a run uses > 60 %
    const totals: Total[] = [];
    const problems: string[] = [];
    for (const c of cases(sql, pool, pipelinedPool)) {
      const mine = c.variants.map((v) => ({ c, v, runs: [] as Run[] }));
      totals.push(...mine);
      for (let round = 0; round < rounds; round++) {
        for (const t of mine) {
          if (interrupted) throw new Interrupted("interrupted");
          // the same starting point for every run: an empty ledger or a freshly seeded outbox
          if (c.table === "ledger") {
            await admin`TRUNCATE ledger`;
          } else {
            await admin`TRUNCATE outbox RESTART IDENTITY`;
            await admin`INSERT INTO outbox (transaction_id, customer_id, code, properties)
              SELECT 'chatcmpl-' || g || ':input', 'customer-' || g % 100, 'llm_tokens',
                jsonb_build_object('tokens', 100 + g % 50, 'model', 'gpt-4o', 'type', 'input')
              FROM generate_series(1, ${seed}) g`;
            await admin`VACUUM (ANALYZE) outbox`;
          }
          await admin`CHECKPOINT`;
          const warm = await drive(t.v.op, c.concurrency, warmMs, false);
          const run = await drive(t.v.op, c.concurrency, roundMs, true);
          t.runs.push(run);
          const written = warm.rows + run.rows;
          const [stored] =
            c.table === "ledger"
              ? await admin<{ n: number }[]>`SELECT count(*)::int AS n FROM ledger`
              : await admin<{ n: number }[]>`SELECT count(*)::int AS n FROM outbox
                  WHERE state = 'delivered' AND attempts = 1`;
          const label = `${c.name} / ${t.v.driver} ${t.v.idiom} / round ${round + 1}`;
          if (run.rows === 0 || stored?.n !== written)
            problems.push(`${label}: reported ${written} rows written, table has ${stored?.n}`);
          if (run.dry && !interrupted)
            problems.push(
              c.table === "outbox"
                ? `${label}: outbox ran dry after ${written} of ${seed} rows (timing cut short)`
                : `${label}: an insert wrote no row`,
            );
          if (c.table === "outbox" && written > seed * 0.6) seed = Math.ceil(written * 2);
        }
      }
    }
    if (interrupted) throw new Interrupted("interrupted");
    const load1 = loadavg();

    // -------------------------------------------------------------------------------------------------
    // Report
    const sum = (t: Total) => {
      const ops = t.runs.reduce((s, r) => s + r.ops, 0);
      const rows = t.runs.reduce((s, r) => s + r.rows, 0);
      const secs = t.runs.reduce((s, r) => s + r.ms, 0) / 1000;
      const cpu = t.runs.reduce((s, r) => s + r.cpu, 0);
      const rates = t.runs.map((r) => r.ops / (r.ms / 1000));
      const mean = rates.reduce((s, x) => s + x, 0) / rates.length;
      const lat = t.runs.flatMap((r) => r.latencies).sort((a, b) => a - b);
      return {
        opsPerSec: ops / secs,
        rowsPerSec: rows / secs,
        cpu,
        cpuPerRow: (cpu / Math.max(1, rows)) * 1e6,
        spread: ((Math.max(...rates) - Math.min(...rates)) / mean) * 100,
        p50: sortedPercentile(lat, 50),
        p99: sortedPercentile(lat, 99),
      };
    };
    const head = [
      "case",
      "driver",
      "idiom",
      "ops/s",
      "rows/s",
      "p50 ms",
      "p99 ms",
      "client CPU s",
      "CPU µs/row",
      "round spread",
      "postgres/pg ops/s",
      "postgres/pg CPU/row",
    ];
    const rows: (string | number)[][] = [head];
    const verdicts: string[] = [];
    for (const c of new Set(totals.map((t) => t.c))) {
      const mine = totals.filter((t) => t.c === c);
      const pairOf = (t: Total) => t.v.pair ?? "plain";
      const bases = new Map(mine.filter((t) => t.v.driver === "pg").map((t) => [pairOf(t), sum(t)]));
      const best = new Map<string, { idiom: string; ratio: number; cpu: number }>();
      for (const t of mine) {
        const s = sum(t);
        const base = bases.get(pairOf(t));
        const ratio = base && t.v.driver === "postgres" ? s.opsPerSec / base.opsPerSec : Number.NaN;
        const cpuRatio = base && t.v.driver === "postgres" ? s.cpuPerRow / base.cpuPerRow : Number.NaN;
        const top = best.get(pairOf(t));
        if (Number.isFinite(ratio) && (!top || ratio > top.ratio))
          best.set(pairOf(t), { idiom: t.v.idiom, ratio, cpu: cpuRatio });
        rows.push([
          c.name,
          t.v.driver,
          t.v.idiom,
          fmt(s.opsPerSec),
          fmt(s.rowsPerSec),
          fmt(s.p50, 2),
          fmt(s.p99, 2),
          fmt(s.cpu, 2),
          fmt(s.cpuPerRow, 1),
          `${fmt(s.spread)} %`,
          Number.isFinite(ratio) ? fmt(ratio, 2) : "",
          Number.isFinite(cpuRatio) ? fmt(cpuRatio, 2) : "",
        ]);
      }
      for (const [pair, b] of best)
        verdicts.push(
          `${c.name}${pair === "plain" ? "" : ` (${pair})`}: postgres.js (${b.idiom}) at ${fmt(b.ratio, 2)}× pg's throughput, ${fmt(b.cpu, 2)}× its client CPU per row`,
        );
    }
    const report = [
      "PostgreSQL driver benchmark: postgres (postgres.js) vs pg (node-postgres)",
      info,
      `postgres ${version("postgres")}, pg ${version("pg")}; pool of ${POOL} connections per driver, both open all along`,
      `${fmt(seconds, 1)} s timed per case and driver in ${rounds} interleaved round(s) of ${fmt(roundMs / 1000, 2)} s ` +
        `(each after a ${warmMs} ms warm-up, on a truncated/freshly seeded table, after CHECKPOINT)`,
      `load average before ${load0.map((x) => x.toFixed(2)).join(" ")}, after ${load1.map((x) => x.toFixed(2)).join(" ")}`,
      "idioms: unsafe(..., { prepare: true }) and pool.query({ name }) are named prepared statements of the same SQL;",
      "  sql(rows) is postgres.js's helper (one VALUES list, 20,000 parameters); unnest passes 20 array parameters",
      "latency: one statement (cases 1-2) or one transaction (case 3); client CPU: this process (process.cpuUsage), timed part only;",
      "round spread: (max - min) / mean of the per-round ops/s; ratios > 1 on ops/s favour postgres.js, < 1 on CPU/row do",
      "",
      table(rows),
      "",
      ...verdicts,
      problems.length === 0
        ? "correctness: every run's reported rows are in its table (inserted rows, or outbox rows delivered exactly once)"
        : `correctness problems:\n  ${problems.join("\n  ")}`,
    ].join("\n");
    process.stdout.write(`${report}\n`);
    if (!smoke) saveResult("drivers", report);
    if (problems.some((p) => !p.includes("ran dry")) || (smoke && problems.length > 0)) failed = true;
  } catch (err) {
    failed = true;
    if (err instanceof Interrupted) process.stderr.write("interrupted\n");
    else process.stderr.write(`${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  } finally {
    await Promise.allSettled([
      sql.end({ timeout: 5 }),
      pool.end(),
      pipelinedPool.end(),
      admin.end({ timeout: 5 }),
    ]);
    await drop();
  }
  process.exit(interrupted ? 130 : failed ? 1 : 0);
}

await main();
