/**
 * Prepaid credit running out, through the real LiteLLM proxy (billing callback + entitlement hook),
 * the webhook service (ledger, delivery, entitlement engine), PostgreSQL, Redis and a Lago double
 * that never recomputes balances and sends no webhook: only our ledger (and the proxy's own count of
 * its finished calls) can stop the customer.
 *
 * Per trial a fresh customer gets a subscription and a wallet of C cents, makes one call (so the
 * service reads its wallet), then `concurrency` OpenAI SDK clients call for it until each is refused.
 * From the ledger (the cost of every served call, as billed) and the clients' clocks:
 *   credit out   the end of the served call that made the cumulative cost reach C
 *   first 402    the end of the first refused call; "seconds to first 402" = first 402 - credit out
 *   past zero    served calls that ended after the credit ran out; overspend = cost beyond C
 *   ledger block when the service recorded the block (entitlement_history), relative to credit out
 * Two proxies: the hook as shipped, and with LAGO_ENTITLEMENTS_LOCAL_SPEND=off (the ledger alone).
 *
 *   node bench/entitlements.ts [--concurrency 1,4,16] [--trials 3] [--smoke]
 *
 * --smoke: tiny sizes, correctness only (someone was refused with 402 and the free customer never
 * was); exits non-zero otherwise, never because of speed. Non-smoke runs keep their report in
 * bench/results/entitlements-<date>.txt.
 */

import { execFileSync } from "node:child_process";
import { randomBytes, randomUUID } from "node:crypto";
import { existsSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import OpenAI from "openai";
import postgres from "postgres";
import { databaseUrl, PG_ADMIN_URL, REDIS_URL } from "../test/support/env.ts";
import { type LiteLLMProxy, MASTER_KEY, startProxy } from "../test/support/litellm-proxy.ts";
import { freePort, waitHealthy } from "../test/support/process.ts";
import {
  cleanup,
  fmt,
  installSignalCleanup,
  killTree,
  machineInfo,
  machineLines,
  onCleanup,
  progress,
  Report,
  sleep,
  spawnChild,
  summarize,
  table,
  verdict,
} from "./lib.ts";
import { saveResult } from "./results.ts";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const LAGO_KEY = "bench-lago-key";
const SECRET = "bench-webhook-secret-0123456789";
const PLAN = "bench-plan";
// gpt-4o: 1000 × $0.000005 + 200 × $0.000015 = $0.008 = 0.8 cents a call (config.yaml prices).
const CONTENT = "usage:prompt=1000,completion=200";
const CALL_CENTS = 0.8;

interface Options {
  concurrency: number[];
  trials: number;
  smoke: boolean;
}

function options(): Options {
  const { values } = parseArgs({
    options: {
      concurrency: { type: "string" },
      trials: { type: "string" },
      smoke: { type: "boolean", default: false },
    },
    strict: true,
  });
  const smoke = values.smoke;
  const concurrency = (values.concurrency ?? (smoke ? "1,4" : "1,4,16")).split(",").map(Number);
  if (concurrency.some((c) => !Number.isInteger(c) || c < 1))
    throw new Error("--concurrency: positive integers");
  return { concurrency, trials: Number(values.trials ?? (smoke ? 1 : 3)), smoke };
}

interface Call {
  start: number;
  end: number;
  ok: boolean;
  status: number | null;
  id: string;
}

class Lago {
  readonly url: string;
  constructor(url: string) {
    this.url = url;
  }
  async api(method: string, path: string, body?: unknown): Promise<Record<string, unknown>> {
    const res = await fetch(`${this.url}${path}`, {
      method,
      headers: { authorization: `Bearer ${LAGO_KEY}`, "content-type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const json = (await res.json()) as Record<string, unknown>;
    if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${JSON.stringify(json)}`);
    return json;
  }
  subscribe(customer: string) {
    return this.api("POST", "/api/v1/subscriptions", {
      subscription: {
        external_id: customer,
        external_customer_id: customer,
        plan_code: PLAN,
        subscription_at: "2020-01-01T00:00:00Z",
      },
    });
  }
  wallet(customer: string, cents: number) {
    return this.api("POST", "/api/v1/wallets", {
      wallet: {
        external_customer_id: customer,
        rate_amount: "1.0",
        currency: "USD",
        paid_credits: String(cents / 100),
      },
    });
  }
}

async function call(client: OpenAI, customer: string): Promise<Call> {
  const start = performance.timeOrigin + performance.now();
  try {
    const r = await client.chat.completions.create({
      model: "gpt-4o",
      messages: [{ role: "user", content: `${CONTENT} ${randomUUID()}` }],
      user: customer,
    });
    return { start, end: performance.timeOrigin + performance.now(), ok: true, status: 200, id: r.id };
  } catch (err) {
    const status = err instanceof OpenAI.APIError ? (err.status ?? null) : null;
    return { start, end: performance.timeOrigin + performance.now(), ok: false, status, id: "" };
  }
}

interface TrialResult {
  variant: string;
  concurrency: number;
  creditCents: number;
  callsToZero: number;
  servedPastZero: number;
  overspendCents: number;
  secondsToFirst402: number | null;
  ledgerBlockSeconds: number | null;
  otherErrors: number;
}

async function trial(
  sql: postgres.Sql,
  lago: Lago,
  service: string,
  proxy: LiteLLMProxy,
  variant: string,
  concurrency: number,
  creditCents: number,
): Promise<TrialResult> {
  const customer = `bench-ent-${randomBytes(4).toString("hex")}`;
  await lago.subscribe(customer);
  await lago.wallet(customer, creditCents);
  const client = new OpenAI({
    apiKey: MASTER_KEY,
    baseURL: `${proxy.url}/v1`,
    maxRetries: 0,
    timeout: 60_000,
  });
  const warm = await call(client, customer);
  if (!warm.ok) throw new Error(`the first call of ${customer} failed (${warm.status})`);
  const deadline = Date.now() + 30_000;
  for (;;) {
    const res = await fetch(`${service}/webhooks/entitlements?customer_id=${customer}`, {
      headers: { authorization: `Bearer ${SECRET}` },
    });
    if (res.ok && ((await res.json()) as { prepaid?: boolean }).prepaid) break;
    if (Date.now() > deadline) throw new Error(`the service never read ${customer}'s wallet`);
    await sleep(50);
  }
  const calls: Call[] = [warm];
  const stopAt = Date.now() + 60_000;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (Date.now() < stopAt) {
        const c = await call(client, customer);
        calls.push(c);
        if (c.status === 402) return;
      }
    }),
  );
  const served = calls.filter((c) => c.ok);
  const ids = served.map((c) => c.id);
  const deadlineLedger = Date.now() + 30_000;
  let costs = new Map<string, number>();
  while (Date.now() < deadlineLedger) {
    const rows = await sql<{ request_id: string; cents: string }[]>`
      SELECT request_id, (cost_usd * 100)::text AS cents FROM usage_events WHERE request_id = ANY(${ids})`;
    costs = new Map(rows.map((r) => [r.request_id, Number(r.cents)]));
    if (costs.size === ids.length) break;
    await sleep(200);
  }
  if (costs.size !== ids.length)
    throw new Error(`${ids.length - costs.size} served calls missing from the ledger`);
  served.sort((a, b) => a.end - b.end);
  let cum = 0;
  let zeroAt: number | null = null;
  let callsToZero = 0;
  let past = 0;
  for (const c of served) {
    const before = cum;
    cum += costs.get(c.id) ?? 0;
    if (zeroAt === null) {
      callsToZero++;
      if (cum >= creditCents - 1e-9) zeroAt = c.end;
    } else if (before >= creditCents - 1e-9) past++;
  }
  const firstRefusal = calls
    .filter((c) => c.status === 402)
    .reduce((m, c) => Math.min(m, c.end), Number.POSITIVE_INFINITY);
  // The engine reads the ledger every 200 ms: give it a moment to record the block.
  let hist: { at: Date } | undefined;
  for (let i = 0; i < 25 && !hist; i++) {
    [hist] = await sql<{ at: Date }[]>`
      SELECT at FROM entitlement_history WHERE customer_id = ${customer} AND state = 'blocked' ORDER BY at LIMIT 1`;
    if (!hist) await sleep(200);
  }
  return {
    variant,
    concurrency,
    creditCents,
    callsToZero,
    servedPastZero: past,
    overspendCents: Math.max(0, cum - creditCents),
    secondsToFirst402:
      zeroAt !== null && Number.isFinite(firstRefusal) ? (firstRefusal - zeroAt) / 1000 : null,
    ledgerBlockSeconds: zeroAt !== null && hist ? (hist.at.getTime() - zeroAt) / 1000 : null,
    otherErrors: calls.filter((c) => !c.ok && c.status !== 402).length,
  };
}

async function main(): Promise<void> {
  const opts = options();
  process.chdir(ROOT);
  installSignalCleanup();
  const report = new Report();
  const started = new Date();
  if (!existsSync("dist/cli.js")) execFileSync("npm", ["run", "build"], { stdio: "inherit" });
  const dbName = `bench_ent_${randomBytes(4).toString("hex")}`;
  const admin = postgres(PG_ADMIN_URL, { max: 1, onnotice: () => {} });
  const [{ server_version: pg } = { server_version: "?" }] = await admin<
    { server_version: string }[]
  >`SHOW server_version`;
  await admin.unsafe(`CREATE DATABASE ${dbName}`);
  await admin.end();
  onCleanup(async () => {
    const a = postgres(PG_ADMIN_URL, { max: 1, onnotice: () => {} });
    await a.unsafe(`DROP DATABASE IF EXISTS ${dbName} WITH (FORCE)`).finally(() => a.end());
  });
  report.line(`Prepaid credit running out${opts.smoke ? " (SMOKE: sizes too small to mean anything)" : ""}`);
  report.line(started.toISOString());
  report.line(`command: node bench/entitlements.ts ${process.argv.slice(2).join(" ")}`.trimEnd());
  report.section("Machine");
  report.block(machineLines(machineInfo({ PostgreSQL: pg })));

  progress("starting the fake upstream, the Lago double and the webhook service");
  const upstream = spawnChild("fake upstream", process.execPath, [
    "test/support/fake-openai.ts",
    "--port",
    "0",
  ]);
  const lagoProc = spawnChild("Lago double", process.execPath, [
    "test/support/lago-double.ts",
    "--port",
    "0",
    "--api-key",
    LAGO_KEY,
  ]);
  const [upstreamUrl, lagoUrl] = await Promise.all([
    upstream.firstLine.then((l) => l.url as string),
    lagoProc.firstLine.then((l) => l.url as string),
  ]);
  const lago = new Lago(lagoUrl);
  await lago.api("POST", "/api/v1/billable_metrics", {
    billable_metric: {
      name: "llm_tokens",
      code: "llm_tokens",
      aggregation_type: "sum_agg",
      field_name: "tokens",
    },
  });
  await lago.api("POST", "/api/v1/plans", {
    plan: { name: PLAN, code: PLAN, interval: "monthly", amount_cents: 0, amount_currency: "USD" },
  });
  const prefix = `bench-ent:${randomUUID()}:`;
  const port = await freePort();
  const service = spawnChild(
    "webhook service",
    process.execPath,
    ["dist/cli.js", "serve", "--host", "127.0.0.1", "--port", String(port)],
    {
      env: {
        DATABASE_URL: databaseUrl(dbName),
        WEBHOOK_SECRET: SECRET,
        LAGO_API_URL: lagoUrl,
        LAGO_API_KEY: LAGO_KEY,
        LITELLM_CONFIG_PATH: resolve(ROOT, "config.yaml"),
        RECONCILE_INTERVAL_SECONDS: "0",
        REDIS_URL,
        ENFORCEMENT: "enforce",
        ENTITLEMENT_REDIS_PREFIX: prefix,
        LOG_LEVEL: "warn",
      },
    },
  );
  const serviceUrl = `http://127.0.0.1:${port}`;
  await waitHealthy(`${serviceUrl}/health/live`, 60_000);
  const sql = postgres(databaseUrl(dbName), { max: 2, onnotice: () => {} });
  onCleanup(() => sql.end({ timeout: 2 }));
  const proxies: { name: string; proxy: LiteLLMProxy }[] = [];
  for (const [name, local] of [
    ["hook as shipped", "on"],
    ["ledger only (LAGO_ENTITLEMENTS_LOCAL_SPEND=off)", "off"],
  ] as const) {
    progress(`starting a LiteLLM proxy: ${name}`);
    const p = await startProxy({
      upstream: upstreamUrl,
      callbacks: "ours",
      webhookUrl: serviceUrl,
      webhookSecret: SECRET,
      entitlements: { redisUrl: REDIS_URL, prefix },
      // The callback's shipped flush interval (startProxy's default is the tests' 0.2 s).
      env: {
        LAGO_BILLING_FLUSH_INTERVAL: "0.5",
        LAGO_BILLING_MAX_BACKOFF: "30",
        LAGO_ENTITLEMENTS_LOCAL_SPEND: local,
      },
    });
    onCleanup(async () => {
      if (p.child.pid) await killTree(p.child.pid, 10_000);
    });
    proxies.push({ name, proxy: p });
  }
  report.section("Setup");
  report.block(
    [
      "proxy: LiteLLM from .venv/litellm, --num_workers 1, callbacks lago_billing (flush 0.5 s, as shipped) and",
      "  lago_entitlements (polls Redis every 0.25 s); fake upstream answers at once; model gpt-4o, 0.8 cents a call.",
      "service: node dist/cli.js serve, ENFORCEMENT=enforce (ledger read every 200 ms), Redis, tokens mode.",
      "Lago double: never recomputes the ongoing balance, sends no webhook: Lago alone would never stop the customer.",
      `Credit per trial: max(8 cents, 8 calls per client); ${opts.trials} trial(s) per case, a fresh customer each.`,
    ].join("\n"),
  );
  const free = `bench-free-${randomBytes(3).toString("hex")}`;
  await lago.subscribe(free);
  const results: TrialResult[] = [];
  const failures: string[] = [];
  for (const { name, proxy } of proxies) {
    for (const c of opts.concurrency) {
      for (let i = 0; i < opts.trials; i++) {
        const credit = Math.max(8, Math.round(CALL_CENTS * 8 * c));
        progress(`${name}: concurrency ${c}, trial ${i + 1}/${opts.trials}, credit ${credit} cents`);
        const r = await trial(sql, lago, serviceUrl, proxy, name, c, credit);
        results.push(r);
        if (r.secondsToFirst402 === null) failures.push(`${name} c=${c}: never refused`);
        if (r.otherErrors > 0) failures.push(`${name} c=${c}: ${r.otherErrors} calls failed otherwise`);
        const client = new OpenAI({ apiKey: MASTER_KEY, baseURL: `${proxy.url}/v1`, maxRetries: 0 });
        const other = await call(client, free);
        if (!other.ok) failures.push(`${name}: a customer without a wallet was refused (${other.status})`);
      }
    }
  }
  report.section("Results");
  const rows: string[][] = [];
  const summaryRows: string[][] = [];
  for (const { name } of proxies) {
    for (const c of opts.concurrency) {
      const rs = results.filter((r) => r.variant === name && r.concurrency === c);
      for (const r of rs) {
        rows.push([
          name,
          String(c),
          fmt(r.creditCents, 1),
          String(r.callsToZero),
          String(r.servedPastZero),
          fmt(r.overspendCents, 2),
          r.secondsToFirst402 === null ? "never" : fmt(r.secondsToFirst402, 3),
          r.ledgerBlockSeconds === null ? "-" : fmt(r.ledgerBlockSeconds, 3),
        ]);
      }
      const t = summarize(rs.map((r) => r.secondsToFirst402 ?? Number.POSITIVE_INFINITY));
      const past = summarize(rs.map((r) => r.servedPastZero));
      summaryRows.push([
        `${name}, concurrency ${c}`,
        `p50 ${fmt(t.p50, 3)} s, max ${fmt(t.max, 3)} s`,
        `max ${fmt(past.max, 0)} (mean ${fmt(past.mean, 1)})`,
        verdict(t.max < 2 && past.max < c),
      ]);
    }
  }
  report.block(
    table(
      [
        "variant",
        "conc.",
        "credit ¢",
        "calls to zero",
        "served past zero",
        "overspend ¢",
        "s to first 402",
        "ledger block s",
      ],
      rows,
    ),
  );
  report.line(
    "  calls to zero: served calls (by end time) until their cost, from the ledger, reached the credit;",
  );
  report.line("  s to first 402: first refused call's end minus the end of the call that spent the credit;");
  report.line(
    "  ledger block s: when the service recorded the block (entitlement_history) minus the same moment.",
  );
  report.section("Targets");
  report.block(
    table(
      ["case", "seconds to first 402 (goal < 2 s)", "served past zero (goal < concurrency)", "verdict"],
      summaryRows,
    ),
  );
  report.line();
  report.line(
    failures.length === 0
      ? "Correctness: OK"
      : `Correctness: FAILED\n${failures.map((f) => `  - ${f}`).join("\n")}`,
  );
  if (!opts.smoke) saveResult("entitlements", report.lines.join("\n"));
  await service.stop();
  await cleanup();
  process.exit(failures.length > 0 ? 1 : 0);
}

main().catch(async (err: unknown) => {
  process.stderr.write(`bench/entitlements.ts: ${(err as Error).stack ?? String(err)}\n`);
  await cleanup();
  process.exit(2);
});
