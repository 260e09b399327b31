/**
 * Shared pieces of the ingest, delivery and growth benchmarks: a fresh database, the service as
 * its own OS process, seeding with SQL (percentiles and CPU time come from lib.ts).
 */
import { type ChildProcess, spawn } from "node:child_process";
import { once } from "node:events";
import { readFileSync } from "node:fs";
import { createServer } from "node:net";
import { cpus, totalmem } from "node:os";
import postgres from "postgres";

export const PG =
  process.env.BENCH_PG_URL ?? process.env.TEST_PG_URL ?? "postgres://postgres@127.0.0.1:5432/postgres";
export const SECRET = "bench-secret-0123456789";

export function dbUrl(name: string): string {
  const u = new URL(PG);
  u.pathname = `/${name}`;
  return u.toString();
}

export async function createDatabase(
  prefix: string,
): Promise<{ name: string; url: string; drop: () => Promise<void> }> {
  const name = `${prefix}_${Date.now().toString(36)}`;
  const admin = postgres(PG, { max: 1, onnotice: () => {} });
  await admin.unsafe(`CREATE DATABASE ${name}`);
  await admin.end();
  return {
    name,
    url: dbUrl(name),
    async drop() {
      const a = postgres(PG, { max: 1, onnotice: () => {} });
      await a.unsafe(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
      await a.end();
    },
  };
}

export async function freePort(): Promise<number> {
  const srv = createServer();
  srv.listen(0, "127.0.0.1");
  await once(srv, "listening");
  const port = (srv.address() as { port: number }).port;
  srv.close();
  return port;
}

export interface Child {
  child: ChildProcess;
  stop(): Promise<void>;
  output(): string;
}

const children = new Set<ChildProcess>();
for (const sig of ["SIGINT", "SIGTERM"] as const) {
  process.on(sig, () => {
    for (const c of children) c.kill("SIGKILL");
    process.exit(130);
  });
}
process.on("exit", () => {
  for (const c of children) c.kill("SIGKILL");
});

/** Spawns a process we measure separately (the service, the Lago double). */
export function spawnChild(cmd: string, args: string[], env: Record<string, string>): Child {
  const child = spawn(cmd, args, {
    env: { ...process.env, LOG_LEVEL: "warn", ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  children.add(child);
  let out = "";
  child.stdout?.on("data", (d: Buffer) => {
    out += d.toString();
  });
  child.stderr?.on("data", (d: Buffer) => {
    out += d.toString();
  });
  return {
    child,
    output: () => out,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill("SIGTERM");
        const t = setTimeout(() => child.kill("SIGKILL"), 10_000);
        await once(child, "exit");
        clearTimeout(t);
      }
      children.delete(child);
    },
  };
}

export async function waitFor(
  check: () => Promise<boolean> | boolean,
  label: string,
  timeoutMs = 60_000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out: ${label}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

export async function waitHealthy(url: string, child?: Child): Promise<void> {
  await waitFor(async () => {
    if (child && child.child.exitCode !== null) throw new Error(`process exited:\n${child.output()}`);
    try {
      return (await fetch(url)).ok;
    } catch {
      return false;
    }
  }, url);
}

/** Starts the Lago double as its own process; returns its URL and control helpers. */
export async function startLagoDouble(opts: { latencyMs: number; rateLimit?: number }) {
  const port = await freePort();
  const args = [
    "test/support/lago-double.ts",
    "--port",
    String(port),
    "--api-key",
    "lago-key",
    "--latency-ms",
    String(opts.latencyMs),
  ];
  if (opts.rateLimit) args.push("--rate-limit", String(opts.rateLimit));
  const proc = spawnChild(process.execPath, args, {});
  const url = `http://127.0.0.1:${port}`;
  await waitHealthy(`${url}/health`, proc);
  const api = (path: string, body: unknown) =>
    fetch(`${url}${path}`, {
      method: "POST",
      headers: { authorization: "Bearer lago-key", "content-type": "application/json" },
      body: JSON.stringify(body),
    });
  return {
    url,
    proc,
    api,
    async stats(): Promise<Record<string, number>> {
      return (await (await fetch(`${url}/__stats`)).json()) as Record<string, number>;
    },
    async control(body: Record<string, unknown>) {
      await fetch(`${url}/__control`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(body),
      });
    },
    async setup(customers: string[]) {
      await api("/api/v1/billable_metrics", {
        billable_metric: {
          name: "LLM tokens",
          code: "llm_tokens",
          aggregation_type: "sum_agg",
          field_name: "tokens",
        },
      });
      await api("/api/v1/plans", {
        plan: { name: "p", code: "p", interval: "monthly", amount_cents: 0, amount_currency: "USD" },
      });
      for (const c of customers) {
        await api("/api/v1/subscriptions", {
          // Started before any seeded call: a call before its subscription's start is parked, not sent.
          subscription: {
            external_customer_id: c,
            plan_code: "p",
            external_id: c,
            subscription_at: "2020-01-01T00:00:00Z",
          },
        });
      }
    },
  };
}

/** Runs `node dist/cli.js <args>` as its own process. */
export function startService(args: string[], env: Record<string, string>): Child {
  return spawnChild(process.execPath, ["dist/cli.js", ...args], { WEBHOOK_SECRET: SECRET, ...env });
}

/**
 * Transactions committed or rolled back in a database so far (pg_stat_database). Backends report
 * their counters when they exit, and while open at most every second, or 10 s once idle.
 */
export async function transactionCount(sql: postgres.Sql, database: string): Promise<number> {
  const [r] =
    await sql`SELECT (xact_commit + xact_rollback)::float8 AS n FROM pg_stat_database WHERE datname = ${database}`;
  return Number(r?.n ?? 0);
}

/** Busy CPU seconds of the whole machine, from /proc/stat. */
export function machineBusySeconds(): number {
  const line = readFileSync("/proc/stat", "utf8").split("\n")[0] ?? "";
  const v = line.trim().split(/\s+/).slice(1).map(Number);
  const idle = (v[3] ?? 0) + (v[4] ?? 0);
  return (v.reduce((s, x) => s + x, 0) - idle) / 100;
}

export async function machineInfo(): Promise<string> {
  const sql = postgres(PG, { max: 1, onnotice: () => {} });
  const [v] =
    await sql`SELECT current_setting('server_version') AS v, current_setting('shared_buffers') AS sb,
    current_setting('synchronous_commit') AS sc`;
  await sql.end();
  const cpu = cpus();
  return [
    `machine: ${cpu.length} × ${cpu[0]?.model ?? "?"}, ${(totalmem() / 2 ** 30).toFixed(0)} GiB RAM`,
    `node ${process.version}; PostgreSQL ${v?.v} (shared_buffers ${v?.sb}, synchronous_commit ${v?.sc})`,
  ].join("\n");
}

export function table(rows: (string | number)[][]): string {
  const widths = rows[0]?.map((_, i) => Math.max(...rows.map((r) => String(r[i] ?? "").length))) ?? [];
  return rows.map((r) => r.map((c, i) => String(c).padStart(widths[i] ?? 0)).join("  ")).join("\n");
}

export const fmt = (n: number, digits = 0) =>
  Number.isFinite(n)
    ? n.toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: digits })
    : "n/a";
