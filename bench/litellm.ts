/**
 * LiteLLM benchmarks (issue 7, items 3-5): the real LiteLLM proxy in front of a fake upstream that
 * answers instantly, billing through
 *   (a) nothing (no billing callback),
 *   (b) our callback (proxy/lago_billing.py) + the webhook service + PostgreSQL + the Lago double,
 *   (c) LiteLLM's built-in `lago` callback pointed at another Lago double.
 *
 *   3. overhead  fixed concurrency, interleaved rounds a,b,c: requests/s, latency, CPU per call
 *   4. outage    steady rate, Lago answers 500 (or resets connections) for --outage s, then back:
 *                events lost, billed twice, time to drain the backlog
 *   5. lag       steady rate: call end -> accepted by Lago, with the ledger in between
 *
 * Every heavy piece is its own OS process so its CPU time can be read from /proc: the proxy (Python),
 * the webhook service (node dist/cli.js serve), PostgreSQL (the backends of the benchmark's database),
 * each Lago double, the fake upstream and the load generator (this file with --role loadgen, using the
 * `openai` SDK over keep-alive connections).
 *
 *   node bench/litellm.ts [--concurrency 16] [--seconds 30] [--rounds 2] [--rate N] [--outage 60]
 *                         [--after 20] [--outage-mode error500|reset] [--customers 100]
 *                         [--only overhead|outage|lag[,...]] [--entitlements] [--linger MS] [--smoke]
 *
 * --linger MS runs (b) with LAGO_BILLING_LINGER_MS and LAGO_WORKER_LINGER_MS set to MS (default 0,
 * the shipped defaults): CPU per call against lag.
 *
 * --entitlements adds 3b: (b) beside (d), the same plus the entitlement pre-call hook
 * (proxy/lago_entitlements.py) against its own webhook service with ENFORCEMENT=enforce: the proxy's
 * CPU per call of both, and the hook's own CPU per call measured inside the proxy.
 *
 * --smoke: tiny sizes for CI, correctness only; exits non-zero when (b) loses or double-bills an event
 * (or the ledger disagrees with the calls made), never because of speed. Non-smoke runs write the
 * report to bench/results/litellm-<date><HHMM>.txt.
 */
import { type ChildProcess, execFileSync, fork } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, readFileSync, rmSync } from "node:fs";
import os from "node:os";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import postgres from "postgres";
import { databaseUrl, PG_ADMIN_URL } from "../test/support/env.ts";
import { type LiteLLMProxy, MASTER_KEY, startProxy } from "../test/support/litellm-proxy.ts";
import { freePort, waitHealthy } from "../test/support/process.ts";
import {
  type Child,
  cleanup,
  fmt,
  installSignalCleanup,
  killTree,
  machineInfo,
  machineLines,
  onCleanup,
  pct,
  pidsCpuSeconds,
  poll,
  postgresPids,
  progress,
  Report,
  sleep,
  spawnChild,
  summarize,
  table,
  treeCpuSeconds,
  verdict,
} from "./lib.ts";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const SELF = fileURLToPath(import.meta.url);
const MODEL = "gpt-4o";
const LAGO_KEY = "bench-lago-key";
const WEBHOOK_SECRET = "bench-webhook-secret-0123456789";
const METRIC = "llm_tokens";
const PLAN = "bench-plan";

// ================================================================== load generator (separate process)

type LoadMode = "concurrency" | "rate";

interface LoadJob {
  type: "run";
  jobId: number;
  baseURL: string;
  tag: string;
  customers: number;
  mode: LoadMode;
  /** Workers (concurrency mode) or the in-flight cap (rate mode). */
  concurrency: number;
  rate: number;
  warmupSeconds: number;
  seconds: number;
}

/** Columnar call records (compact over IPC). Times are wall-clock ms (Date.now() scale, sub-ms). */
interface Calls {
  seq: number[];
  start: number[];
  end: number[];
  ok: boolean[];
  id: string[];
}

interface LoadResult {
  type: "done";
  jobId: number;
  measureStart: number;
  measureEnd: number;
  calls: Calls;
  /** Rate mode: calls not sent because the in-flight cap was reached (the proxy fell behind). */
  dropped: number;
  errorSamples: string[];
}

type LoadMessage = { type: "measuring"; jobId: number; at: number } | LoadResult;

const customerOf = (seq: number, customers: number) => `bench-cust-${seq % customers}`;
/** The call's marker: its prompt token count (the fake upstream reports what the message dictates). */
const promptTokensOf = (seq: number) => seq + 1;
const seqOfPromptTokens = (tokens: number) => tokens - 1;

async function loadgenMain(): Promise<void> {
  const { default: OpenAI } = await import("openai");
  const clients = new Map<string, InstanceType<typeof OpenAI>>();
  let seq = 0;
  const now = () => performance.timeOrigin + performance.now();
  process.on("disconnect", () => process.exit(0));

  const run = async (job: LoadJob): Promise<LoadResult> => {
    let client = clients.get(job.baseURL);
    if (!client) {
      client = new OpenAI({ apiKey: MASTER_KEY, baseURL: job.baseURL, maxRetries: 0, timeout: 120_000 });
      clients.set(job.baseURL, client);
    }
    const c = client;
    const calls: Calls = { seq: [], start: [], end: [], ok: [], id: [] };
    const errorSamples: string[] = [];
    let inFlight = 0;
    let dropped = 0;
    const one = async (): Promise<void> => {
      const s = seq++;
      inFlight++;
      const start = now();
      let ok = false;
      let id = "";
      try {
        const res = await c.chat.completions.create({
          model: MODEL,
          messages: [
            {
              role: "user",
              content: `bench ${job.tag} #${s} usage:prompt=${promptTokensOf(s)},completion=8`,
            },
          ],
          user: customerOf(s, job.customers),
        });
        ok = true;
        id = res.id;
      } catch (err) {
        if (errorSamples.length < 5) errorSamples.push(String((err as Error).message ?? err).slice(0, 300));
      }
      const end = now();
      inFlight--;
      calls.seq.push(s);
      calls.start.push(start);
      calls.end.push(end);
      calls.ok.push(ok);
      calls.id.push(id);
    };

    const t0 = now();
    const measureStart = t0 + job.warmupSeconds * 1000;
    const measureEnd = measureStart + job.seconds * 1000;
    const announce = () => process.send?.({ type: "measuring", jobId: job.jobId, at: now() });
    const announced = job.warmupSeconds > 0 ? sleep(job.warmupSeconds * 1000).then(announce) : announce();

    if (job.mode === "concurrency") {
      const worker = async () => {
        while (now() < measureEnd) await one();
      };
      await Promise.all(Array.from({ length: job.concurrency }, worker));
    } else {
      const pending = new Set<Promise<void>>();
      const interval = 1000 / job.rate;
      let next = t0;
      while (next < measureEnd) {
        const t = now();
        while (next <= t && next < measureEnd) {
          if (inFlight < job.concurrency) {
            const p = one();
            pending.add(p);
            void p.finally(() => pending.delete(p));
          } else {
            dropped++;
          }
          next += interval;
        }
        await sleep(Math.max(0, Math.min(next, measureEnd) - now()));
      }
      await Promise.all([...pending]);
    }
    await announced;
    return { type: "done", jobId: job.jobId, measureStart, measureEnd, calls, dropped, errorSamples };
  };

  process.on("message", (msg: LoadJob) => {
    if (msg.type !== "run") return;
    run(msg).then(
      (r) => process.send?.(r),
      (err: unknown) => {
        process.stderr.write(`loadgen: ${String(err)}\n`);
        process.exit(1);
      },
    );
  });
  process.send?.({ type: "ready" });
}

class LoadGen {
  readonly child: ChildProcess;
  readonly pid: number;
  #jobId = 0;
  readonly #handlers = new Map<number, (m: LoadMessage) => void>();

  private constructor(child: ChildProcess) {
    this.child = child;
    this.pid = child.pid as number;
    child.on("message", (m: LoadMessage) => this.#handlers.get(m.jobId)?.(m));
  }

  static async start(): Promise<LoadGen> {
    const child = fork(SELF, ["--role", "loadgen"], {
      cwd: ROOT,
      detached: true,
      serialization: "advanced",
      stdio: ["ignore", "inherit", "inherit", "ipc"],
    });
    onCleanup(async () => {
      if (child.exitCode === null && child.signalCode === null && child.pid) await killTree(child.pid, 3000);
    });
    await new Promise<void>((resolveReady, reject) => {
      child.once("message", () => resolveReady());
      child.once("exit", (code) => reject(new Error(`the load generator exited with code ${code}`)));
    });
    return new LoadGen(child);
  }

  /** Runs a job; onMeasuring fires when the warmup ends (the measured interval starts). */
  run(job: Omit<LoadJob, "type" | "jobId">, onMeasuring?: () => void): Promise<LoadResult> {
    const jobId = ++this.#jobId;
    return new Promise((resolveDone, reject) => {
      const onExit = (code: number | null) =>
        reject(new Error(`the load generator exited with code ${code}`));
      this.child.once("exit", onExit);
      this.#handlers.set(jobId, (m) => {
        if (m.type === "measuring") onMeasuring?.();
        else {
          this.#handlers.delete(jobId);
          this.child.off("exit", onExit);
          resolveDone(m);
        }
      });
      this.child.send({ ...job, type: "run", jobId } satisfies LoadJob);
    });
  }
}

// ================================================================== helpers on call records

interface CallView {
  seq: number;
  start: number;
  end: number;
  ok: boolean;
  id: string;
}

function callList(c: Calls): CallView[] {
  return c.seq.map((seq, i) => ({
    seq,
    start: c.start[i] as number,
    end: c.end[i] as number,
    ok: c.ok[i] as boolean,
    id: c.id[i] as string,
  }));
}

function measured(r: LoadResult): CallView[] {
  return callList(r.calls).filter((c) => c.start >= r.measureStart);
}

// ================================================================== the Lago doubles (separate processes)

interface StoredEvent {
  transaction_id: string;
  external_subscription_id: string | null;
  properties: Record<string, unknown>;
  receivedAt: number;
}

class LagoProcess {
  readonly url: string;
  readonly proc: Child;
  constructor(url: string, proc: Child) {
    this.url = url;
    this.proc = proc;
  }

  static async start(name: string): Promise<LagoProcess> {
    const proc = spawnChild(name, process.execPath, [
      "test/support/lago-double.ts",
      "--port",
      "0",
      "--api-key",
      LAGO_KEY,
    ]);
    const { url } = (await proc.firstLine) as { url: string };
    return new LagoProcess(url, proc);
  }

  async api(method: string, path: string, body?: unknown): Promise<Record<string, unknown>> {
    const res = await fetch(`${this.url}${path}`, {
      method,
      headers: { authorization: `Bearer ${LAGO_KEY}`, "content-type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const json = (await res.json()) as Record<string, unknown>;
    if (!res.ok) throw new Error(`${method} ${path}: HTTP ${res.status} ${JSON.stringify(json)}`);
    return json;
  }

  /** The metric both callbacks send to, a plan, and one subscription per customer (id = customer id). */
  async provision(customers: number): Promise<void> {
    await this.api("POST", "/api/v1/billable_metrics", {
      billable_metric: { name: METRIC, code: METRIC, aggregation_type: "sum_agg", field_name: "tokens" },
    });
    await this.api("POST", "/api/v1/plans", {
      plan: { name: PLAN, code: PLAN, interval: "monthly", amount_cents: 0, amount_currency: "USD" },
    });
    for (let i = 0; i < customers; i++) {
      const id = customerOf(i, customers);
      await this.api("POST", "/api/v1/subscriptions", {
        subscription: {
          external_id: id,
          external_customer_id: id,
          plan_code: PLAN,
          subscription_at: "2020-01-01T00:00:00Z",
        },
      });
    }
  }

  control(c: Record<string, unknown>): Promise<Record<string, unknown>> {
    return this.api("POST", "/__control", c);
  }

  async stats(): Promise<{ eventCount: number; acceptedTwice: number; duplicatesStored: number }> {
    return (await this.api("GET", "/__stats")) as never;
  }

  async events(): Promise<StoredEvent[]> {
    return ((await this.api("GET", "/__events")) as { events: StoredEvent[] }).events;
  }
}

// ================================================================== options

interface Options {
  concurrency: number;
  seconds: number;
  rounds: number;
  warmup: number;
  rate: number | undefined;
  outage: number;
  before: number;
  after: number;
  outageMode: "error500" | "reset";
  customers: number;
  only: Set<"overhead" | "outage" | "lag">;
  smoke: boolean;
  drainTimeout: number;
  /** Also measure the entitlement pre-call hook (section 3b). */
  entitlements: boolean;
  /** LAGO_BILLING_LINGER_MS and LAGO_WORKER_LINGER_MS of (b). */
  lingerMs: number;
}

function parseOptions(argv: string[]): Options {
  const { values } = parseArgs({
    args: argv,
    options: {
      role: { type: "string" },
      concurrency: { type: "string", default: "16" },
      seconds: { type: "string" },
      rounds: { type: "string" },
      warmup: { type: "string" },
      rate: { type: "string" },
      outage: { type: "string" },
      after: { type: "string" },
      "outage-mode": { type: "string", default: "error500" },
      customers: { type: "string", default: "100" },
      only: { type: "string" },
      smoke: { type: "boolean", default: false },
      "drain-timeout": { type: "string" },
      entitlements: { type: "boolean", default: false },
      linger: { type: "string" },
      help: { type: "boolean", short: "h", default: false },
    },
    strict: true,
  });
  if (values.help) {
    process.stdout.write(
      `${readFileSync(SELF, "utf8")
        .split("*/")[0]
        ?.replace(/^\/\*\*?/, "")}\n`,
    );
    process.exit(0);
  }
  const smoke = values.smoke;
  const num = (name: string, v: string | undefined, fallback: number, min = 0): number => {
    if (v === undefined) return fallback;
    const n = Number(v);
    if (!Number.isFinite(n) || n < min) throw new Error(`--${name} must be a number >= ${min}`);
    return n;
  };
  const only = new Set<"overhead" | "outage" | "lag">();
  for (const p of (values.only ?? "overhead,outage,lag").split(",")) {
    const t = p.trim();
    if (t !== "overhead" && t !== "outage" && t !== "lag") {
      throw new Error(`--only takes overhead, outage or lag (comma-separated), not ${t}`);
    }
    only.add(t);
  }
  const mode = values["outage-mode"];
  if (mode !== "error500" && mode !== "reset") throw new Error("--outage-mode is error500 or reset");
  return {
    concurrency: num("concurrency", values.concurrency, 16, 1),
    seconds: num("seconds", values.seconds, smoke ? 3 : 30, 1),
    rounds: num("rounds", values.rounds, smoke ? 1 : 2, 1),
    warmup: num("warmup", values.warmup, smoke ? 1 : 3),
    rate: values.rate === undefined ? undefined : num("rate", values.rate, 0, 1),
    outage: num("outage", values.outage, smoke ? 5 : 60, 1),
    before: smoke ? 2 : 5,
    after: num("after", values.after, smoke ? 5 : 20),
    outageMode: mode,
    customers: num("customers", values.customers, 100, 1),
    only,
    smoke,
    drainTimeout: num("drain-timeout", values["drain-timeout"], smoke ? 60 : 180, 1),
    entitlements: values.entitlements,
    lingerMs: num("linger", values.linger, 0),
  };
}

// ================================================================== the benchmark

type CaseName = "a" | "b" | "c";
const CASE_LABEL: Record<CaseName, string> = {
  a: "(a) no billing",
  b: "(b) ours: callback + webhook service",
  c: "(c) LiteLLM built-in lago callback",
};

interface Env {
  opts: Options;
  report: Report;
  upstream: Child;
  lagoB: LagoProcess;
  lagoC: LagoProcess;
  service: Child;
  dbName: string;
  sql: postgres.Sql;
  proxies: Partial<Record<CaseName, LiteLLMProxy>>;
  loadgen: LoadGen;
  tag: string;
  failures: string[];
  summary: string[][];
}

const CPU_GROUPS = ["proxy", "webhook svc", "postgres", "lago double", "upstream", "loadgen"] as const;
type CpuGroup = (typeof CPU_GROUPS)[number];
/** Per group: a total for process trees, per-pid values for PostgreSQL (backends come and go). */
type CpuSample = Record<CpuGroup, Map<number | "tree", number>>;

function sampleCpu(env: Env, c: CaseName): CpuSample {
  const tree = (pid: number | undefined) => new Map([["tree" as const, pid ? treeCpuSeconds(pid) : 0]]);
  const pg = new Map<number, number>();
  for (const pid of postgresPids(env.dbName)) pg.set(pid, pidsCpuSeconds([pid]));
  return {
    proxy: tree(env.proxies[c]?.child.pid),
    "webhook svc": tree(env.service.pid),
    postgres: pg,
    "lago double": tree(c === "c" ? env.lagoC.proc.pid : env.lagoB.proc.pid),
    upstream: tree(env.upstream.pid),
    loadgen: tree(env.loadgen.pid),
  };
}

/** CPU seconds per group between two samples (new PostgreSQL backends count from 0). */
function cpuBetween(a: CpuSample, b: CpuSample): Record<CpuGroup, number> {
  const out = {} as Record<CpuGroup, number>;
  for (const g of CPU_GROUPS) {
    let s = 0;
    for (const [k, v] of b[g]) s += v - (a[g].get(k) ?? 0);
    out[g] = s;
  }
  return out;
}

/** Runs one load job against a case's proxy and samples CPU over the measured interval. */
async function runLoad(
  env: Env,
  c: CaseName,
  job: Pick<LoadJob, "mode" | "concurrency" | "rate" | "warmupSeconds" | "seconds">,
  onMeasuring?: () => void,
): Promise<{ result: LoadResult; cpu: Record<CpuGroup, number> }> {
  const proxy = env.proxies[c];
  if (!proxy) throw new Error(`no proxy for case ${c}`);
  let before: CpuSample | undefined;
  const result = await env.loadgen.run(
    { ...job, baseURL: `${proxy.url}/v1`, tag: env.tag, customers: env.opts.customers },
    () => {
      before = sampleCpu(env, c);
      onMeasuring?.();
    },
  );
  const after = sampleCpu(env, c);
  return { result, cpu: cpuBetween(before ?? after, after) };
}

function okIds(calls: CallView[]): string[] {
  return calls.filter((c) => c.ok).map((c) => c.id);
}

async function ledgerCount(env: Env, ids: string[]): Promise<number> {
  const [r] = await env.sql<{ n: number }[]>`
    SELECT count(*)::int AS n FROM usage_events WHERE request_id = ANY(${ids})`;
  return r?.n ?? 0;
}

/** How many times each of the calls' (b) events (<id>:input, <id>:output) was stored. */
function countOursStored(events: StoredEvent[], ids: string[]) {
  const wanted = new Set<string>();
  for (const id of ids) {
    wanted.add(`${id}:input`);
    wanted.add(`${id}:output`);
  }
  const counts = new Map<string, number>();
  let foreign = 0;
  for (const e of events) {
    if (wanted.has(e.transaction_id)) counts.set(e.transaction_id, (counts.get(e.transaction_id) ?? 0) + 1);
    else foreign++;
  }
  let twice = 0;
  for (const n of counts.values()) if (n > 1) twice++;
  return { expected: wanted.size, stored: counts.size, lost: wanted.size - counts.size, twice, foreign };
}

/** (c): events matched to calls by the per-call marker (prompt_tokens) and customer. */
function countLagoCallbackStored(events: StoredEvent[], calls: CallView[], customers: number) {
  const bySeq = new Map<number, number>();
  let unmatched = 0;
  const okSeqs = new Set(calls.filter((c) => c.ok).map((c) => c.seq));
  for (const e of events) {
    const seq = seqOfPromptTokens(Number(e.properties.prompt_tokens));
    if (okSeqs.has(seq) && e.external_subscription_id === customerOf(seq, customers)) {
      bySeq.set(seq, (bySeq.get(seq) ?? 0) + 1);
    } else unmatched++;
  }
  let twice = 0;
  for (const n of bySeq.values()) if (n > 1) twice++;
  return { expected: okSeqs.size, stored: bySeq.size, lost: okSeqs.size - bySeq.size, twice, unmatched };
}

/** Waits until the Lago double holds `expected` events or nothing new arrived for stallSeconds. */
async function waitForEvents(
  lago: LagoProcess,
  expected: number,
  timeoutSeconds: number,
  stallSeconds: number,
): Promise<number> {
  const deadline = Date.now() + timeoutSeconds * 1000;
  let last = -1;
  let lastChange = Date.now();
  for (;;) {
    const { eventCount } = await lago.stats();
    if (eventCount >= expected) return eventCount;
    if (eventCount !== last) {
      last = eventCount;
      lastChange = Date.now();
    }
    if (Date.now() > deadline || Date.now() - lastChange > stallSeconds * 1000) return eventCount;
    await sleep(200);
  }
}

/** (b): waits for the ledger rows and the Lago events of the given calls. */
async function drainOurs(env: Env, ids: string[], timeoutSeconds: number): Promise<void> {
  await poll(async () => (await ledgerCount(env, ids)) >= ids.length, timeoutSeconds * 1000, 250);
  await waitForEvents(env.lagoB, ids.length * 2, timeoutSeconds, timeoutSeconds);
}

function ms(v: number): string {
  return `${fmt(v, v < 10 ? 2 : 1)} ms`;
}

// ------------------------------------------------------------------ 3. overhead

interface CaseResult {
  calls: number;
  errors: number;
  seconds: number;
  latencies: number[];
  cpu: Record<CpuGroup, number>;
  perRound: number[];
  all: CallView[];
}

async function overhead(env: Env): Promise<number> {
  const { opts, report } = env;
  report.section("3. LiteLLM overhead (issue 7 item 3)");
  report.line(
    `Fixed concurrency ${opts.concurrency} (one OpenAI SDK client, keep-alive), ${opts.seconds} s per case ` +
      `after ${opts.warmup} s warmup, ${opts.rounds} round(s) in the order a b c, c b a, a b c...; ${opts.customers} customers ` +
      `(request "user"), every request distinct (no response-cache hits); fake upstream answers instantly.`,
  );
  await env.lagoB.control({ reset: true });
  await env.lagoC.control({ reset: true });
  const res: Record<CaseName, CaseResult> = {
    a: emptyCase(),
    b: emptyCase(),
    c: emptyCase(),
  };
  for (let round = 1; round <= opts.rounds; round++) {
    // a, b, c then c, b, a: a linear drift over the run (machine load, heat) hits every case alike.
    const order: CaseName[] = round % 2 === 1 ? ["a", "b", "c"] : ["c", "b", "a"];
    for (const c of order) {
      progress(`overhead round ${round}/${opts.rounds}: ${CASE_LABEL[c]}`);
      const { result, cpu } = await runLoad(env, c, {
        mode: "concurrency",
        concurrency: opts.concurrency,
        rate: 0,
        warmupSeconds: opts.warmup,
        seconds: opts.seconds,
      });
      const m = measured(result);
      const r = res[c];
      const ok = m.filter((x) => x.ok);
      r.calls += ok.length;
      r.errors += m.length - ok.length;
      r.seconds += opts.seconds;
      for (const x of ok) r.latencies.push(x.end - x.start);
      for (const g of CPU_GROUPS) r.cpu[g] += cpu[g];
      r.perRound.push(ok.length / opts.seconds);
      r.all.push(...callList(result.calls));
      if (result.errorSamples.length > 0) progress(`errors in ${c}: ${result.errorSamples.join(" | ")}`);
    }
  }

  const rps = (c: CaseName) => res[c].calls / res[c].seconds;
  const lat = (c: CaseName) => summarize(res[c].latencies);
  const rows = (["a", "b", "c"] as CaseName[]).map((c) => {
    const s = lat(c);
    const a = lat("a");
    return [
      CASE_LABEL[c],
      fmt(res[c].calls, 0),
      fmt(res[c].errors, 0),
      fmt(rps(c), 1),
      `${fmt(rps(c) / rps("a"), 3)}x`,
      ms(s.p50),
      ms(s.p99),
      `${fmt(s.p50 / a.p50, 2)}x`,
      `${fmt(s.p99 / a.p99, 2)}x`,
      res[c].perRound.map((v) => fmt(v, 0)).join(" / "),
    ];
  });
  report.line();
  report.block(
    table(
      ["case", "calls", "errors", "req/s", "vs (a)", "p50", "p99", "p50 vs a", "p99 vs a", "req/s per round"],
      rows,
    ),
  );

  if (opts.rounds > 1) {
    const perRound = (c: CaseName) =>
      res[c].perRound.map((v, i) => `${fmt(v / (res.a.perRound[i] ?? Number.NaN), 3)}x`).join(" / ");
    const aRounds = res.a.perRound;
    const spread = (Math.max(...aRounds) - Math.min(...aRounds)) / (rps("a") || 1);
    report.line(
      `Per round, vs (a) of the same round: (b) ${perRound("b")}; (c) ${perRound("c")}. ` +
        `(a) varies by ${pct(spread)} between rounds: differences smaller than that are noise.`,
    );
  }
  report.line();
  report.line("CPU per call (ms of user+system CPU per successful call, measured interval only):");
  const cpuTotal = (c: CaseName) =>
    CPU_GROUPS.reduce((s, g) => s + (res[c].cpu[g] * 1000) / Math.max(1, res[c].calls), 0);
  const totalA = cpuTotal("a");
  const cpuRows = (["a", "b", "c"] as CaseName[]).map((c) => {
    const per = (g: CpuGroup) => (res[c].cpu[g] * 1000) / Math.max(1, res[c].calls);
    const total = cpuTotal(c);
    const billing = per("webhook svc") + per("postgres") + per("lago double");
    return [
      CASE_LABEL[c],
      ...CPU_GROUPS.map((g) => fmt(per(g), 3)),
      fmt(total, 3),
      fmt(billing, 3),
      `${fmt(total - totalA, 3)}`,
    ];
  });
  report.block(table(["case", ...CPU_GROUPS, "total", "svc+pg+lago", "total - (a)"], cpuRows));
  const perB = (g: CpuGroup) => (res.b.cpu[g] * 1000) / Math.max(1, res.b.calls);
  const outsideB = perB("webhook svc") + perB("postgres") + perB("lago double");
  env.summary.push([
    "3 CPU outside the proxy per call (b)",
    `${fmt(outsideB, 3)} ms`,
    "<= 0.5 ms",
    verdict(outsideB <= 0.5),
  ]);
  env.summary.push([
    "3 proxy CPU per call (b) vs (a)",
    pct(perB("proxy") / Math.max(1e-9, (res.a.cpu.proxy * 1000) / Math.max(1, res.a.calls)) - 1),
    "(reported)",
    "n/a",
  ]);
  report.line(
    "  proxy = the LiteLLM process tree; postgres = backends of the benchmark database + the server's " +
      "background processes (shared with anything else running); lago double = the case's own double.",
  );

  // correctness
  report.line();
  progress("overhead: waiting for (b) and (c) to deliver everything");
  const bCalls = res.b.all.filter((x) => x.ok);
  const bIds = okIds(bCalls);
  await drainOurs(env, bIds, opts.drainTimeout);
  const ledger = await ledgerCount(env, bIds);
  const ours = countOursStored(await env.lagoB.events(), bIds);
  const cCalls = res.c.all.filter((x) => x.ok);
  await waitForEvents(env.lagoC, cCalls.length, 30, 5);
  const theirs = countLagoCallbackStored(await env.lagoC.events(), cCalls, opts.customers);
  const bOk = ledger === bIds.length && ours.stored === bIds.length * 2 && ours.twice === 0;
  report.line(
    `Correctness (b), warmup included: calls made ${bIds.length}, ledger rows ${ledger}, Lago events ` +
      `${ours.stored} of ${ours.expected} expected (2 per call), stored twice ${ours.twice}: ${bOk ? "OK" : "FAILED"}`,
  );
  report.line(
    `Correctness (c), warmup included: calls made ${cCalls.length}, Lago events matched to calls ` +
      `${theirs.stored}, missing ${theirs.lost}, calls billed twice ${theirs.twice}`,
  );
  if (!bOk) env.failures.push("overhead (b): calls, ledger rows and Lago events disagree");

  const costB = 1 - rps("b") / rps("a");
  env.summary.push(
    ["3 overhead: (b) throughput cost vs (a)", pct(costB), "<= 5 %", verdict(costB <= 0.05)],
    [
      "3 overhead: (b) throughput vs (c)",
      `${fmt(rps("b") / rps("c"), 3)}x`,
      ">= 1.000x",
      verdict(rps("b") >= rps("c")),
    ],
  );
  return rps("a");
}

function emptyCase(): CaseResult {
  return {
    calls: 0,
    errors: 0,
    seconds: 0,
    latencies: [],
    cpu: Object.fromEntries(CPU_GROUPS.map((g) => [g, 0])) as Record<CpuGroup, number>,
    perRound: [],
    all: [],
  };
}

// ------------------------------------------------------------------ 4. outage

async function outage(env: Env, rate: number): Promise<void> {
  const { opts, report } = env;
  report.section("4. Lago outage (issue 7 item 4)");
  const total = opts.before + opts.outage + opts.after;
  report.line(
    `Steady ${fmt(rate, 0)} calls/s (open loop, at most ${opts.concurrency * 4} in flight) for ${total} s: ` +
      `${opts.before} s normal, Lago unavailable for ${opts.outage} s (double mode "${opts.outageMode}"), ` +
      `then ${opts.after} s normal. Then wait (up to ${opts.drainTimeout} s) for everything to arrive.`,
  );
  const rows: string[][] = [];
  for (const c of ["b", "c"] as CaseName[]) {
    const lago = c === "b" ? env.lagoB : env.lagoC;
    await lago.control({ reset: true });
    progress(`outage: ${CASE_LABEL[c]} (${total} s of load)`);
    let downAt = 0;
    let backAt = 0;
    const timers: Promise<void>[] = [];
    const { result } = await runLoad(
      env,
      c,
      { mode: "rate", concurrency: opts.concurrency * 4, rate, warmupSeconds: 0, seconds: total },
      () => {
        timers.push(
          (async () => {
            await sleep(opts.before * 1000);
            await lago.control({ mode: opts.outageMode });
            downAt = Date.now();
            progress(`outage: Lago down (${opts.outageMode})`);
            await sleep(opts.outage * 1000);
            backAt = Date.now();
            await lago.control({ mode: "ok" });
            progress("outage: Lago back");
          })(),
        );
      },
    );
    await Promise.all(timers);
    const calls = callList(result.calls);
    const ok = calls.filter((x) => x.ok);
    const duringOutage = ok.filter((x) => x.end >= downAt && x.end < backAt).length;
    const achieved = calls.length / total;
    let lost: number;
    let twice: number;
    let drain = "";
    let stored: number;
    let expected: number;
    if (c === "b") {
      const ids = okIds(ok);
      progress("outage: waiting for (b) to drain");
      await drainOurs(env, ids, opts.drainTimeout);
      const events = await lago.events();
      const r = countOursStored(events, ids);
      ({ lost, twice, stored, expected } = r);
      // Backlog: events of calls that ended before Lago came back.
      const backlog = new Set<string>();
      for (const x of ok) {
        if (x.end < backAt) {
          backlog.add(`${x.id}:input`);
          backlog.add(`${x.id}:output`);
        }
      }
      let last = 0;
      let got = 0;
      for (const e of events) {
        if (backlog.has(e.transaction_id)) {
          got++;
          last = Math.max(last, e.receivedAt);
        }
      }
      const drainMs = last - backAt;
      const complete = got >= backlog.size;
      drain = complete
        ? `${fmt(Math.max(0, drainMs) / 1000, 1)} s`
        : `not drained (${backlog.size - got} missing)`;
      const ledger = await ledgerCount(env, ids);
      if (ledger !== ids.length)
        env.failures.push(`outage (b): ${ids.length - ledger} calls without a ledger row`);
      if (lost > 0) env.failures.push(`outage (b): ${lost} events lost`);
      if (twice > 0) env.failures.push(`outage (b): ${twice} events billed twice`);
      env.summary.push(
        ["4 outage: (b) events lost", fmt(lost, 0), "0", verdict(lost === 0)],
        ["4 outage: (b) events billed twice", fmt(twice, 0), "0", verdict(twice === 0)],
        ["4 outage: (b) time to drain", drain, "<= 15 s", verdict(complete && drainMs <= 15_000)],
      );
    } else {
      progress("outage: waiting for (c) to settle");
      await waitForEvents(lago, ok.length, 30, 5);
      const r = countLagoCallbackStored(await lago.events(), ok, opts.customers);
      ({ lost, twice, stored, expected } = r);
      drain = "n/a (no retry)";
    }
    rows.push([
      CASE_LABEL[c],
      fmt(calls.length, 0),
      fmt(calls.length - ok.length, 0),
      `${fmt(achieved, 0)}/s`,
      fmt(result.dropped, 0),
      fmt(duringOutage, 0),
      fmt(expected, 0),
      fmt(stored, 0),
      fmt(lost, 0),
      fmt(twice, 0),
      drain,
    ]);
  }
  report.line();
  report.block(
    table(
      [
        "case",
        "calls",
        "errors",
        "sent",
        "not sent",
        "in outage",
        "expected",
        "stored",
        "lost",
        "twice",
        "drain",
      ],
      rows,
    ),
  );
  report.line(
    "  expected: (b) 2 events per call (input + output tokens) keyed <response id>:<type>; (c) 1 event per call,",
  );
  report.line(
    "  matched to its call by the call's marker (prompt_tokens) and customer, since LiteLLM sends a random uuid",
  );
  report.line(
    "  transaction_id. twice: (b) transaction ids stored more than once; (c) calls with more than one event.",
  );
  report.line(
    "  drain: from Lago back until the last event of the calls made before that moment was accepted.",
  );
  report.line("  not sent: calls the load generator skipped because the in-flight cap was reached.");
}

// ------------------------------------------------------------------ 5. lag

async function lag(env: Env, rate: number): Promise<void> {
  const { opts, report } = env;
  report.section("5. End-to-end lag (issue 7 item 5)");
  report.line(
    `Steady ${fmt(rate, 0)} calls/s for ${opts.seconds} s after ${opts.warmup} s warmup. Lag = Lago double's ` +
      `receivedAt of the call's event minus the client-side time the response completed.`,
  );
  const rows: string[][] = [];
  for (const c of ["b", "c"] as CaseName[]) {
    const lago = c === "b" ? env.lagoB : env.lagoC;
    await lago.control({ reset: true });
    progress(`lag: ${CASE_LABEL[c]}`);
    const { result } = await runLoad(env, c, {
      mode: "rate",
      concurrency: opts.concurrency * 4,
      rate,
      warmupSeconds: opts.warmup,
      seconds: opts.seconds,
    });
    const all = callList(result.calls).filter((x) => x.ok);
    const m = measured(result).filter((x) => x.ok);
    if (c === "b") {
      const ids = okIds(all);
      await drainOurs(env, ids, opts.drainTimeout);
      const events = await lago.events();
      const lagoAt = new Map<string, number>();
      for (const e of events) {
        if (e.transaction_id.endsWith(":input")) {
          const id = e.transaction_id.slice(0, -":input".length);
          if (!lagoAt.has(id)) lagoAt.set(id, e.receivedAt);
        }
      }
      const ledger = await env.sql<{ request_id: string; ms: number }[]>`
        SELECT request_id, extract(epoch FROM received_at)::float8 * 1000 AS ms
        FROM usage_events WHERE request_id = ANY(${okIds(m)})`;
      const ledgerAt = new Map(ledger.map((r) => [r.request_id, Number(r.ms)]));
      const total: number[] = [];
      const toLedger: number[] = [];
      const toLago: number[] = [];
      let missing = 0;
      for (const x of m) {
        const l = lagoAt.get(x.id);
        const d = ledgerAt.get(x.id);
        if (l === undefined || d === undefined) {
          missing++;
          continue;
        }
        total.push(l - x.end);
        toLedger.push(d - x.end);
        toLago.push(l - d);
      }
      const t = summarize(total);
      const a = summarize(toLedger);
      const b = summarize(toLago);
      rows.push([CASE_LABEL[c], "call end -> Lago", fmt(t.n, 0), ms(t.p50), ms(t.p99), ms(t.max)]);
      rows.push(["", "  call end -> ledger row", fmt(a.n, 0), ms(a.p50), ms(a.p99), ms(a.max)]);
      rows.push(["", "  ledger row -> Lago", fmt(b.n, 0), ms(b.p50), ms(b.p99), ms(b.max)]);
      if (missing > 0) {
        env.failures.push(`lag (b): ${missing} calls without a ledger row or Lago event`);
        rows.push(["", `  MISSING: ${missing} calls`, "", "", "", ""]);
      }
      env.summary.push(["5 lag: (b) p50 call end -> Lago", ms(t.p50), "<= 30 ms", verdict(t.p50 <= 30)]);
      env.summary.push(["5 lag: (b) p99 call end -> Lago", ms(t.p99), "<= 150 ms", verdict(t.p99 <= 150)]);
    } else {
      await waitForEvents(lago, all.length, 30, 5);
      const events = await lago.events();
      const at = new Map<number, number>();
      for (const e of events) {
        const seq = seqOfPromptTokens(Number(e.properties.prompt_tokens));
        if (!at.has(seq)) at.set(seq, e.receivedAt);
      }
      const total: number[] = [];
      for (const x of m) {
        const l = at.get(x.seq);
        if (l !== undefined) total.push(l - x.end);
      }
      const t = summarize(total);
      rows.push([CASE_LABEL[c], "call end -> Lago", fmt(t.n, 0), ms(t.p50), ms(t.p99), ms(t.max)]);
    }
  }
  report.line();
  report.block(table(["case", "interval", "calls", "p50", "p99", "max"], rows));
  report.line(
    "  ledger row time = usage_events.received_at (PostgreSQL now() of the inserting transaction); Lago time =",
  );
  report.line(
    "  the double's receivedAt (Date.now() when the request arrived) of <response id>:input. One clock (same host).",
  );
}

// ------------------------------------------------------------------ setup and main

function versions(sqlVersion: string): Record<string, string> {
  let litellm = "unknown";
  try {
    litellm = execFileSync(
      resolve(ROOT, ".venv/litellm/bin/python"),
      ["-c", "import importlib.metadata as m; print(m.version('litellm'))"],
      { encoding: "utf8" },
    ).trim();
  } catch {
    // reported as unknown
  }
  const openai = (
    JSON.parse(readFileSync(resolve(ROOT, "node_modules/openai/package.json"), "utf8")) as {
      version: string;
    }
  ).version;
  return { PostgreSQL: sqlVersion, LiteLLM: litellm, "openai (load generator)": openai };
}

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  const opts = parseOptions(argv);
  process.chdir(ROOT);
  installSignalCleanup();
  const report = new Report();
  const failures: string[] = [];
  const summary: string[][] = [];
  const started = new Date();

  if (!existsSync("dist/cli.js")) {
    progress("dist/cli.js missing: npm run build");
    execFileSync("npm", ["run", "build"], { stdio: "inherit" });
  }

  // database (the webhook service migrates it on start)
  const dbName = `bench_litellm_${randomBytes(4).toString("hex")}`;
  const admin = postgres(PG_ADMIN_URL, { max: 1, onnotice: () => {} });
  const [{ server_version: pgVersion } = { server_version: "?" }] = await admin<
    { server_version: string }[]
  >`SHOW server_version`;
  await admin.unsafe(`CREATE DATABASE ${dbName}`);
  await admin.end();
  onCleanup(async () => {
    const a = postgres(PG_ADMIN_URL, { max: 1, onnotice: () => {} });
    try {
      await a.unsafe(`DROP DATABASE IF EXISTS ${dbName} WITH (FORCE)`);
    } finally {
      await a.end();
    }
  });

  const info = machineInfo(versions(pgVersion));
  report.line(
    `LiteLLM benchmarks: issue 7 items 3-5${opts.smoke ? " (SMOKE: sizes too small to mean anything)" : ""}`,
  );
  report.line(`${started.toISOString()}`);
  report.line(`command: node bench/litellm.ts ${argv.join(" ")}`.trimEnd());
  report.section("Machine");
  report.block(machineLines(info));

  progress("starting the fake upstream, the Lago doubles and the webhook service");
  const upstream = spawnChild("fake upstream", process.execPath, [
    "test/support/fake-openai.ts",
    "--port",
    "0",
  ]);
  const [lagoB, lagoC, upstreamUrl] = await Promise.all([
    LagoProcess.start("Lago double (b)"),
    LagoProcess.start("Lago double (c)"),
    upstream.firstLine.then((l) => l.url as string),
  ]);
  await Promise.all([lagoB.provision(opts.customers), lagoC.provision(opts.customers)]);

  const servicePort = await freePort();
  const serviceEnv: Record<string, string> = {
    DATABASE_URL: databaseUrl(dbName),
    WEBHOOK_SECRET,
    LAGO_WEBHOOK_URL: lagoB.url,
    LAGO_API_KEY: LAGO_KEY,
    LAGO_SUBSCRIPTION_MAPPING: "same",
    LITELLM_CONFIG_PATH: resolve(ROOT, "config.yaml"),
    RECONCILE_INTERVAL_SECONDS: "0",
    LOG_LEVEL: "warn",
    LAGO_WORKER_LINGER_MS: String(opts.lingerMs),
    // e.g. "--cpu-prof --cpu-prof-dir=/tmp/prof": profile the webhook service during the run.
    ...(process.env.BENCH_SERVICE_NODE_OPTIONS
      ? { NODE_OPTIONS: process.env.BENCH_SERVICE_NODE_OPTIONS }
      : {}),
  };
  const service = spawnChild(
    "webhook service",
    process.execPath,
    ["dist/cli.js", "serve", "--host", "127.0.0.1", "--port", String(servicePort)],
    { env: serviceEnv },
  );
  await Promise.race([
    waitHealthy(`http://127.0.0.1:${servicePort}/health/live`, 60_000),
    new Promise((_, reject) =>
      service.child.once("exit", (code) =>
        reject(new Error(`the webhook service exited with code ${code}\n${service.output()}`)),
      ),
    ),
  ]);
  const sql = postgres(databaseUrl(dbName), { max: 2, onnotice: () => {} });
  onCleanup(() => sql.end({ timeout: 2 }));

  // Shipped callback defaults (proxy/lago_billing.py), not the faster test settings of startProxy.
  const callbackEnv = {
    LAGO_BILLING_FLUSH_INTERVAL: "0.5",
    LAGO_BILLING_MAX_BACKOFF: "30",
    LAGO_BILLING_LINGER_MS: String(opts.lingerMs),
  };
  const needA = opts.only.has("overhead") || opts.rate === undefined;
  const proxies: Partial<Record<CaseName, LiteLLMProxy>> = {};
  const startOne = async (c: CaseName) => {
    const p = await startProxy({
      upstream: upstreamUrl,
      callbacks: c === "a" ? "none" : c === "b" ? "ours" : "lago",
      webhookUrl: `http://127.0.0.1:${servicePort}`,
      webhookSecret: WEBHOOK_SECRET,
      ...(c === "c" ? { lagoUrl: lagoC.url, lagoApiKey: LAGO_KEY } : {}),
      env: callbackEnv,
    });
    proxies[c] = p;
    onCleanup(async () => {
      // Not p.stop(): it waits for an "exit" event that already fired once the tree is killed.
      if (p.child.pid) await killTree(p.child.pid, 10_000);
      rmSync(p.dir, { recursive: true, force: true });
    });
  };
  const wanted: CaseName[] = [...(needA ? (["a"] as const) : []), "b", "c"];
  progress(`starting ${wanted.length} LiteLLM proxies (${wanted.join(", ")})`);
  const t0 = Date.now();
  // One at a time: three Python imports at once on 2 cores take longer than in sequence.
  for (const c of wanted) await startOne(c);
  progress(`proxies up in ${fmt((Date.now() - t0) / 1000, 1)} s`);
  const loadgen = await LoadGen.start();

  const env: Env = {
    opts,
    report,
    upstream,
    lagoB,
    lagoC,
    service,
    dbName,
    sql,
    proxies,
    loadgen,
    tag: randomBytes(3).toString("hex"),
    failures,
    summary,
  };

  report.section("Setup");
  report.block(
    [
      `proxy: LiteLLM from .venv/litellm, --num_workers 1, config derived from config.yaml (Redis response cache on,`,
      `  model ${MODEL}), master key auth, no database; fake upstream: test/support/fake-openai.ts (0 ms).`,
      opts.lingerMs > 0
        ? `(b) callback proxy/lago_billing.py (group commit, batches of up to 100, LAGO_BILLING_LINGER_MS=${opts.lingerMs}) -> webhook service`
        : `(b) callback proxy/lago_billing.py with its shipped defaults (group commit, batches of up to 100) -> webhook service`,
      opts.lingerMs > 0
        ? `  (node dist/cli.js serve, LAGO_WORKER_LINGER_MS=${opts.lingerMs}, LAGO_SUBSCRIPTION_MAPPING=same) -> Lago double (0 ms).`
        : `  (node dist/cli.js serve, default settings, LAGO_SUBSCRIPTION_MAPPING=same) -> Lago double (0 ms).`,
      `(c) LiteLLM's lago callback (LAGO_API_CHARGE_BY=end_user_id) -> its own Lago double (0 ms).`,
      `All of these, PostgreSQL, the doubles and the load generator are separate processes on this machine.`,
    ].join("\n"),
  );

  let rateFromA: number | undefined;
  if (opts.only.has("overhead")) {
    const a = await overhead(env);
    rateFromA = a;
  }
  let rate = opts.rate;
  let rateNote = "given with --rate";
  if (rate === undefined && (opts.only.has("outage") || opts.only.has("lag"))) {
    if (rateFromA === undefined) {
      progress("calibrating: (a) throughput at fixed concurrency");
      const { result } = await runLoad(env, "a", {
        mode: "concurrency",
        concurrency: opts.concurrency,
        rate: 0,
        warmupSeconds: 1,
        seconds: opts.smoke ? 2 : 5,
      });
      rateFromA = measured(result).filter((x) => x.ok).length / (opts.smoke ? 2 : 5);
    }
    rate = Math.max(1, Math.round(rateFromA * 0.5));
    rateNote = `50 % of (a)'s measured ${fmt(rateFromA, 0)} req/s`;
  }
  if (rate !== undefined) {
    report.line();
    report.line(
      `Steady rate for items 4 and 5: ${fmt(rate, 0)} calls/s (${rateNote}). The issue's 1,000 calls/s is not ` +
        `reachable through one proxy process on this machine.`,
    );
  }
  if (opts.only.has("outage") && rate !== undefined) await outage(env, rate);
  if (opts.only.has("lag") && rate !== undefined) await lag(env, rate);
  if (opts.entitlements) await hookOverhead(env);

  report.section("Targets");
  report.block(table(["figure", "measured", "target", "verdict"], summary));
  report.line();
  report.line(
    failures.length === 0
      ? "Correctness: OK (no event lost or billed twice by (b); ledger rows = calls)"
      : `Correctness: FAILED\n${failures.map((f) => `  - ${f}`).join("\n")}`,
  );
  report.line(
    `Finished in ${fmt((Date.now() - started.getTime()) / 1000, 0)} s; load average at the end ` +
      `${os
        .loadavg()
        .map((l) => l.toFixed(2))
        .join(" ")} (others' processes share this machine).`,
  );

  if (!opts.smoke) {
    // Minutes in the name (as bench/results.ts): runs of one day do not overwrite each other.
    const name = opts.entitlements ? "litellm-entitlements" : "litellm";
    const path = `bench/results/${name}-${started.toISOString().slice(0, 16).replace(/[:T]/g, "")}.txt`;
    report.save(path);
    progress(`report written to ${path}`);
  }
  await cleanup();
  process.exit(failures.length > 0 ? 1 : 0);
}

// ------------------------------------------------------------------ 3b. entitlement hook overhead

/**
 * (b) beside (d) = (b) + the entitlement hook, interleaved rounds at the same concurrency. (d) has its
 * own webhook service and database (ENFORCEMENT=enforce, Redis), so (b)'s service is unchanged; half
 * the customers have a prepaid wallet (the hook then also spends their finished calls against the
 * published headroom: its heavier path). Besides the proxies' CPU from /proc (noisy: a few µs
 * vanish in ~20 ms a call), the hook measures its own CPU (thread_time_ns around the pre-call check
 * and the success callback, minus the clock's own cost) inside the proxy and reports it via Redis.
 */
async function hookOverhead(env: Env): Promise<void> {
  const { opts, report } = env;
  report.section("3b. Entitlement pre-call hook overhead (issue 13)");
  const { Redis } = await import("ioredis");
  const { REDIS_URL } = await import("../test/support/env.ts");
  const dbName = `${env.dbName}_ent`;
  const admin = postgres(PG_ADMIN_URL, { max: 1, onnotice: () => {} });
  await admin.unsafe(`CREATE DATABASE ${dbName}`);
  await admin.end();
  onCleanup(async () => {
    const a = postgres(PG_ADMIN_URL, { max: 1, onnotice: () => {} });
    await a.unsafe(`DROP DATABASE IF EXISTS ${dbName} WITH (FORCE)`).finally(() => a.end());
  });
  const prefix = `bench-hook:${randomBytes(4).toString("hex")}:`;
  const port = await freePort();
  const service = spawnChild(
    "webhook service (d)",
    process.execPath,
    ["dist/cli.js", "serve", "--host", "127.0.0.1", "--port", String(port)],
    {
      env: {
        DATABASE_URL: databaseUrl(dbName),
        WEBHOOK_SECRET,
        LAGO_WEBHOOK_URL: env.lagoB.url,
        LAGO_API_KEY: LAGO_KEY,
        LAGO_SUBSCRIPTION_MAPPING: "same",
        LITELLM_CONFIG_PATH: resolve(ROOT, "config.yaml"),
        RECONCILE_INTERVAL_SECONDS: "0",
        LOG_LEVEL: "warn",
        REDIS_URL,
        ENFORCEMENT: "enforce",
        ENTITLEMENT_REDIS_PREFIX: prefix,
        ENTITLEMENT_REFRESH_RPS: "50",
      },
    },
  );
  await waitHealthy(`http://127.0.0.1:${port}/health/live`, 60_000);
  for (let i = 0; i < opts.customers; i += 2) {
    await env.lagoB.api("POST", "/api/v1/wallets", {
      wallet: {
        external_customer_id: customerOf(i, opts.customers),
        rate_amount: "1.0",
        currency: "USD",
        paid_credits: "100000",
      },
    });
  }
  progress("3b: starting the LiteLLM proxy (d) with the entitlement hook (profiled)");
  const d = await startProxy({
    upstream: (await env.upstream.firstLine).url as string,
    callbacks: "ours",
    webhookUrl: `http://127.0.0.1:${port}`,
    webhookSecret: WEBHOOK_SECRET,
    entitlements: { redisUrl: REDIS_URL, prefix },
    env: {
      LAGO_BILLING_FLUSH_INTERVAL: "0.5",
      LAGO_BILLING_MAX_BACKOFF: "30",
      LAGO_ENTITLEMENTS_PROFILE: "1",
    },
  });
  onCleanup(async () => {
    if (d.child.pid) await killTree(d.child.pid, 10_000);
    rmSync(d.dir, { recursive: true, force: true });
  });
  const redis = new Redis(REDIS_URL);
  onCleanup(() => {
    redis.disconnect();
  });
  const pid = { b: env.proxies.b?.child.pid, d: d.child.pid };
  const url = { b: `${env.proxies.b?.url}/v1`, d: `${d.url}/v1` };
  // Warm up (d): every customer seen by the service, the wallets read, headrooms published.
  progress("3b: warming up (d) until every wallet is read");
  await env.loadgen.run({
    baseURL: url.d,
    tag: `${env.tag}-w`,
    customers: opts.customers,
    mode: "concurrency",
    concurrency: opts.concurrency,
    rate: 0,
    warmupSeconds: 0,
    seconds: opts.smoke ? 2 : 5,
  });
  const waitStart = Date.now();
  await poll(
    async () => (await redis.hlen(`${prefix}entries`)) >= Math.ceil(opts.customers / 2),
    60_000,
    500,
  );
  const published = await redis.hlen(`${prefix}entries`);
  progress(
    `3b: ${published} customers with a published decision after ${fmt((Date.now() - waitStart) / 1000, 1)} s`,
  );
  interface HookProfile {
    check_ns: number;
    check_n: number;
    spend_ns: number;
    spend_n: number;
    clock_ns: number;
  }
  const profileOf = async (): Promise<HookProfile> => {
    const all = await redis.hgetall(`${prefix}proxies`);
    const p = Object.values(all)
      .map((t) => (JSON.parse(t) as { profile?: HookProfile }).profile)
      .find((x) => x !== undefined);
    return p ?? { check_ns: 0, check_n: 0, spend_ns: 0, spend_n: 0, clock_ns: 0 };
  };
  const res = {
    b: { calls: 0, cpu: 0, perRound: [] as number[] },
    d: { calls: 0, cpu: 0, perRound: [] as number[] },
  };
  const before = await profileOf();
  for (let round = 1; round <= opts.rounds; round++) {
    for (const c of round % 2 === 1 ? (["b", "d"] as const) : (["d", "b"] as const)) {
      progress(
        `3b round ${round}/${opts.rounds}: ${c === "b" ? CASE_LABEL.b : "(d) ours + entitlement hook"}`,
      );
      let cpu0 = 0;
      const result = await env.loadgen.run(
        {
          baseURL: url[c],
          tag: env.tag,
          customers: opts.customers,
          mode: "concurrency",
          concurrency: opts.concurrency,
          rate: 0,
          warmupSeconds: opts.warmup,
          seconds: opts.seconds,
        },
        () => {
          cpu0 = pid[c] ? treeCpuSeconds(pid[c]) : 0;
        },
      );
      const cpu = (pid[c] ? treeCpuSeconds(pid[c]) : 0) - cpu0;
      const ok = measured(result).filter((x) => x.ok).length;
      res[c].calls += ok;
      res[c].cpu += cpu;
      res[c].perRound.push((cpu * 1000) / Math.max(1, ok));
    }
  }
  await sleep(1000); // one more poll reports the profile
  const after = await profileOf();
  const n = after.check_n - before.check_n;
  const checkUs =
    n > 0 ? (after.check_ns - before.check_ns - (after.clock_ns ?? 0) * n) / n / 1000 : Number.NaN;
  const sn = after.spend_n - before.spend_n;
  const spendUs =
    sn > 0 ? (after.spend_ns - before.spend_ns - (after.clock_ns ?? 0) * sn) / sn / 1000 : Number.NaN;
  const perCall = (c: "b" | "d") => (res[c].cpu * 1000) / Math.max(1, res[c].calls);
  const hookUs = checkUs + (Number.isFinite(spendUs) ? spendUs : 0);
  const share = hookUs / 1000 / perCall("b");
  report.line(
    `Concurrency ${opts.concurrency}, ${opts.seconds} s per case after ${opts.warmup} s warmup, ${opts.rounds} round(s) ` +
      `(b d, d b, ...); ${opts.customers} customers, every second one with a prepaid wallet (allowed, headroom watched; ` +
      `${published} had a published decision when measuring began).`,
  );
  report.line();
  report.block(
    table(
      ["case", "calls", "proxy CPU ms/call", "per round"],
      (["b", "d"] as const).map((c) => [
        c === "b" ? CASE_LABEL.b : "(d) ours + entitlement hook",
        fmt(res[c].calls, 0),
        fmt(perCall(c), 3),
        res[c].perRound.map((v) => fmt(v, 3)).join(" / "),
      ]),
    ),
  );
  report.line(
    `Proxy CPU (d) - (b): ${fmt((perCall("d") - perCall("b")) * 1000, 0)} µs per call (from /proc; rounds differ by more ` +
      "than the hook costs, so this difference is noise-bound).",
  );
  report.line(
    `Measured in the proxy (${fmt(n, 0)} calls): pre-call check ${fmt(checkUs, 2)} µs, success callback (spending ` +
      `against the headroom) ${fmt(spendUs, 2)} µs, clock pair ${fmt((after.clock_ns ?? 0) / 1000, 2)} µs subtracted.`,
  );
  report.line(`Hook CPU per call: ${fmt(hookUs, 2)} µs = ${pct(share, 3)} of (b)'s proxy CPU per call.`);
  env.summary.push([
    "3b entitlement hook: CPU per call vs proxy's",
    pct(share, 3),
    "< 2 %",
    verdict(share < 0.02),
  ]);
  await service.stop();
}

function isLoadgen(): boolean {
  const i = process.argv.indexOf("--role");
  return i >= 0 && process.argv[i + 1] === "loadgen";
}

if (isLoadgen()) {
  loadgenMain().catch((err: unknown) => {
    process.stderr.write(`loadgen: ${String(err)}\n`);
    process.exit(1);
  });
} else {
  main().catch(async (err: unknown) => {
    process.stderr.write(`bench/litellm.ts: ${(err as Error).stack ?? String(err)}\n`);
    await cleanup();
    process.exit(2);
  });
}
