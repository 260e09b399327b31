/**
 * The native stack end to end, as the README's quick start runs it: `scripts/stack.sh up --demo` on
 * free ports with a fresh database and no provider key (LiteLLM → the demo's fake upstream, our
 * callback → the webhook service → the demo's Lago double), the README's calls and the `openai` SDK
 * (streamed) through it, then `scripts/stack.sh down` leaving no process behind.
 */
import { spawn, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import OpenAI from "openai";
import postgres from "postgres";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { databaseUrl, PG_ADMIN_URL } from "../support/env.ts";
import { FAKE_REPLY } from "../support/fake-openai.ts";
import type { StoredEvent } from "../support/lago-double.ts";
import { freePort } from "../support/process.ts";

const STACK = resolve("scripts/stack.sh");
const MARKER = "<!-- executed by test/e2e/stack.test.ts against the native stack -->";
const CUSTOMER = "customer-123";
/** stack.sh starts Prometheus too when the binary is installed (scripts/ensure-tools.sh installs it). */
const HAS_PROMETHEUS = spawnSync("prometheus", ["--version"], { stdio: "ignore" }).status === 0;
if (!HAS_PROMETHEUS) console.warn("stack e2e: no prometheus binary, the Prometheus checks are skipped");

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
  ms: number;
}

/**
 * Runs a command without blocking the event loop: the fake upstream and the Lago double live in this
 * process and must keep answering while the stack (or curl) talks to them.
 */
function run(cmd: string, args: string[], env: Record<string, string>, timeoutMs: number): Promise<Run> {
  const started = Date.now();
  return new Promise((done, fail) => {
    const child = spawn(cmd, args, { env, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d: Buffer) => {
      stdout += d.toString();
    });
    child.stderr.on("data", (d: Buffer) => {
      stderr += d.toString();
    });
    const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
    child.on("error", fail);
    child.on("close", (code) => {
      clearTimeout(timer);
      done({ code, stdout, stderr, ms: Date.now() - started });
    });
  });
}

const show = (r: Run) => `exit ${r.code} after ${r.ms} ms\n--- stdout\n${r.stdout}\n--- stderr\n${r.stderr}`;

/** Splits concatenated JSON documents (two curl outputs without a newline between them). */
function jsonDocuments(text: string): unknown[] {
  const docs: unknown[] = [];
  let depth = 0;
  let start = -1;
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (inString) {
      if (c === "\\") i++;
      else if (c === '"') inString = false;
    } else if (c === '"') inString = true;
    else if (c === "{" || c === "[") {
      if (depth++ === 0) start = i;
    } else if (c === "}" || c === "]") {
      if (--depth === 0) docs.push(JSON.parse(text.slice(start, i + 1)));
    }
  }
  return docs;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ESRCH") return false;
    throw err;
  }
}

/** Processes whose process group is one of `groups` (the stack starts each service in its own session). */
function membersOf(groups: number[]): number[] {
  const found: number[] = [];
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, "utf8");
      // pid (comm) state ppid pgrp ...; comm may contain spaces and parentheses.
      const pgrp = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[2]);
      if (groups.includes(pgrp)) found.push(Number(entry));
    } catch {
      // exited while we looked
    }
  }
  return found;
}

function portAnswers(port: number): Promise<boolean> {
  return new Promise((done) => {
    const socket = connect({ host: "127.0.0.1", port });
    socket.once("connect", () => {
      socket.destroy();
      done(true);
    });
    socket.once("error", () => done(false));
  });
}

async function eventually<T>(probe: () => Promise<T | undefined> | T | undefined, what: string, ms = 30_000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await probe();
    if (v !== undefined && v !== false) return v as T;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

let stackDir: string;
let dbName: string;
let dbUrl: string;
let webhookPort: number;
let litellmPort: number;
let upstreamPort: number;
let lagoPort: number;
let prometheusPort: number;
let callbackMetricsPort: number;
let stackEnv: Record<string, string>;
let up: Run | undefined;
let downDone = false;

const stack = (command: "up --demo" | "down" | "status", timeoutMs = 60_000) =>
  run(STACK, command.split(" "), stackEnv, timeoutMs);

/** What the demo's Lago double received for the customer. */
async function lagoEvents(): Promise<StoredEvent[]> {
  const res = await fetch(`http://127.0.0.1:${lagoPort}/__events`);
  const { events } = (await res.json()) as { events: StoredEvent[] };
  return events.filter((e) => e.external_subscription_id === CUSTOMER);
}

const pidFiles = () =>
  readdirSync(stackDir)
    .filter((f) => f.endsWith(".pid"))
    .map((f) => ({ file: f, pid: Number(readFileSync(join(stackDir, f), "utf8").trim()) }));

beforeAll(async () => {
  stackDir = mkdtempSync(join(tmpdir(), "stack-e2e-"));
  // stack.sh creates the database when it is missing; the test only drops it.
  dbName = `stack_e2e_${randomBytes(5).toString("hex")}`;
  dbUrl = databaseUrl(dbName);
  const ports = new Set<number>();
  while (ports.size < 6) ports.add(await freePort());
  [webhookPort, litellmPort, upstreamPort, lagoPort, prometheusPort, callbackMetricsPort] = [...ports] as [
    number,
    number,
    number,
    number,
    number,
    number,
  ];

  // A clean environment: nothing of the caller's (no WEBHOOK_SECRET, LITELLM_MASTER_KEY, provider
  // keys, NODE_ENV, LAGO_* ...), no .env from the repository, the repository's own config.yaml.
  stackEnv = {
    PATH: process.env.PATH ?? "/usr/bin:/bin",
    HOME: process.env.HOME ?? stackDir,
    LANG: "C.UTF-8",
    STACK_ENV_FILE: "/dev/null",
    STACK_DIR: stackDir,
    WEBHOOK_PORT: String(webhookPort),
    LITELLM_PORT: String(litellmPort),
    DEMO_UPSTREAM_PORT: String(upstreamPort),
    DEMO_LAGO_PORT: String(lagoPort),
    PROMETHEUS_PORT: String(prometheusPort),
    PROMETHEUS_SCRAPE_INTERVAL: "1s",
    CALLBACK_METRICS_PORT: String(callbackMetricsPort),
    DATABASE_URL: dbUrl,
    STACK_TIMEOUT: "70",
    LITELLM_TELEMETRY: "False",
  };
  up = await stack("up --demo", 95_000);
}, 110_000);

afterAll(async () => {
  if (stackEnv && !downDone) {
    const pids = existsSync(stackDir) ? pidFiles() : [];
    await stack("down", 40_000).catch(() => undefined);
    for (const { pid } of pids) if (pid > 0 && alive(pid)) process.kill(pid, "SIGKILL");
  }
  if (dbName) {
    const admin = postgres(PG_ADMIN_URL, { max: 1, onnotice: () => {} });
    try {
      await admin.unsafe(`DROP DATABASE IF EXISTS ${dbName} WITH (FORCE)`);
    } finally {
      await admin.end();
    }
  }
  if (stackDir) rmSync(stackDir, { recursive: true, force: true });
}, 60_000);

describe("the native stack (scripts/stack.sh)", () => {
  it("starts everything on the given free ports, healthy", async () => {
    expect(up, "stack.sh up ran").toBeDefined();
    expect(up?.code, show(up as Run)).toBe(0);
    expect(up?.stdout).toContain(`http://127.0.0.1:${litellmPort}`);
    expect(up?.stdout).toContain(`http://127.0.0.1:${webhookPort}`);
    expect(up?.stdout).toContain(`demo Lago        http://127.0.0.1:${lagoPort}`);

    const health = await fetch(`http://127.0.0.1:${webhookPort}/health`);
    expect(health.status).toBe(200);
    expect(await health.json()).toMatchObject({ database: "up", worker: true });
    const ready = await fetch(`http://127.0.0.1:${webhookPort}/health/ready`);
    expect(ready.status).toBe(200);
    const live = await fetch(`http://127.0.0.1:${litellmPort}/health/liveliness`);
    expect(live.status).toBe(200);

    const status = await stack("status");
    expect(status.code, show(status)).toBe(0);
    expect(status.stdout).toMatch(/webhook\s+running/);
    expect(status.stdout).toMatch(/litellm\s+running/);
  });

  it("runs the README's quick-start call, and the call is billed", async () => {
    expect(up?.code).toBe(0);
    const readme = readFileSync("README.md", "utf8");
    const at = readme.indexOf(MARKER);
    expect(at, "the README carries the marker").toBeGreaterThan(-1);
    const block = /```bash\n([\s\S]*?)\n```/.exec(readme.slice(at))?.[1];
    expect(block, "a bash block follows the marker").toBeDefined();
    const script = (block as string)
      .replaceAll("localhost:4000", `localhost:${litellmPort}`)
      .replaceAll("localhost:3001", `localhost:${webhookPort}`);
    expect(script).toContain(`localhost:${litellmPort}`);

    const result = await run(
      "bash",
      ["-euo", "pipefail", "-c", script],
      {
        PATH: process.env.PATH ?? "/usr/bin:/bin",
        HOME: process.env.HOME ?? stackDir,
        LITELLM_MASTER_KEY: readFileSync(join(stackDir, "master_key"), "utf8").trim(),
        WEBHOOK_SECRET: readFileSync(join(stackDir, "secret"), "utf8").trim(),
      },
      30_000,
    );
    expect(result.code, show(result)).toBe(0);
    const [chat, stats] = jsonDocuments(result.stdout) as [
      { choices?: { message?: { content?: string } }[] },
      Record<string, unknown>,
    ];
    expect(chat?.choices?.[0]?.message?.content, show(result)).toBe(FAKE_REPLY);
    expect(stats, show(result)).toMatchObject({ events: expect.any(Object), sink: expect.any(Object) });

    // Billed: a ledger row for the request's user, and its token events accepted by Lago.
    const sql = postgres(dbUrl, { max: 1, onnotice: () => {} });
    try {
      const row = await eventually(
        async () => (await sql`SELECT * FROM usage_events WHERE customer_id = ${CUSTOMER}`)[0],
        "a usage_events row",
      );
      expect(row).toMatchObject({ model: "gpt-4o", tokens_input: "12", tokens_output: "8", billable: true });
      const sent = await eventually(
        async () => ((await lagoEvents()).length === 2 ? lagoEvents() : undefined),
        "2 events in the demo's Lago double",
      );
      expect(sent.map((e) => [e.code, e.properties.type, e.properties.tokens]).sort()).toEqual([
        ["llm_tokens", "input", 12],
        ["llm_tokens", "output", 8],
      ]);
      const states = await eventually(async () => {
        const r = await sql`SELECT state FROM lago_events WHERE customer_id = ${CUSTOMER}`;
        return r.length === 2 && r.every((e) => e.state === "delivered") ? r : undefined;
      }, "both lago_events delivered");
      expect(states).toHaveLength(2);
    } finally {
      await sql.end({ timeout: 2 });
    }
  });

  it("serves the openai SDK, streamed too, and bills the streamed call", async () => {
    expect(up?.code).toBe(0);
    const client = new OpenAI({
      baseURL: `http://127.0.0.1:${litellmPort}/v1`,
      apiKey: readFileSync(join(stackDir, "master_key"), "utf8").trim(),
    });
    const before = (await lagoEvents()).length;
    const stream = await client.chat.completions.create({
      model: "claude-3-5-sonnet",
      messages: [{ role: "user", content: "Hello, streamed" }],
      user: CUSTOMER,
      stream: true,
      stream_options: { include_usage: true },
    });
    let text = "";
    for await (const chunk of stream) text += chunk.choices[0]?.delta?.content ?? "";
    expect(text).toBe(FAKE_REPLY);
    const events = await eventually(
      async () => ((await lagoEvents()).length >= before + 2 ? lagoEvents() : undefined),
      "the streamed call's events in the demo's Lago double",
    );
    expect(events.filter((e) => e.properties.model === "claude-3-5-sonnet")).toHaveLength(2);
  });

  it("answers a wrong proxy key as the README says (LiteLLM without its database: 400 no_db_connection)", async () => {
    expect(up?.code).toBe(0);
    const res = await fetch(`http://127.0.0.1:${litellmPort}/v1/chat/completions`, {
      method: "POST",
      headers: { authorization: "Bearer sk-not-the-master-key", "content-type": "application/json" },
      body: JSON.stringify({ model: "gpt-4o", messages: [{ role: "user", content: "Hi" }] }),
    });
    expect(res.status).toBe(400);
    expect(await res.json()).toMatchObject({
      error: { type: "no_db_connection", message: "No connected db." },
    });
    expect(readFileSync("README.md", "utf8")).toContain("No connected db.");
    // /v1/models: LiteLLM 1.106 reports owned_by "openai" for every model (hard-coded), as documented.
    const models = (await (
      await fetch(`http://127.0.0.1:${litellmPort}/v1/models`, {
        headers: { authorization: `Bearer ${readFileSync(join(stackDir, "master_key"), "utf8").trim()}` },
      })
    ).json()) as { data: { id: string; owned_by: string }[] };
    expect(models.data.find((m) => m.id === "claude-3-5-sonnet")?.owned_by).toBe("openai");
  });

  it("runs the README's operations commands: validate and a reprocess dry run", async () => {
    expect(up?.code).toBe(0);
    const readme = readFileSync("README.md", "utf8");
    const at = readme.indexOf("<!-- executed by test/e2e/stack.test.ts (operations) -->");
    expect(at, "the README carries the marker").toBeGreaterThan(-1);
    const block = /```bash\n([\s\S]*?)\n```/.exec(readme.slice(at))?.[1] as string;
    const result = await run(
      "bash",
      ["-euo", "pipefail", "-c", block.replaceAll("localhost:3001", `localhost:${webhookPort}`)],
      {
        PATH: process.env.PATH ?? "/usr/bin:/bin",
        HOME: process.env.HOME ?? stackDir,
        WEBHOOK_SECRET: readFileSync(join(stackDir, "secret"), "utf8").trim(),
      },
      30_000,
    );
    expect(result.code, show(result)).toBe(0);
    const [validate, reprocess] = jsonDocuments(result.stdout) as [
      { checks?: { name: string; ok: boolean }[] },
      Record<string, unknown>,
    ];
    expect(validate?.checks?.find((c) => c.name === "api_key")?.ok, show(result)).toBe(true);
    expect(reprocess, show(result)).toMatchObject({ dry_run: true, moved: 0 });
  });

  it.runIf(HAS_PROMETHEUS)(
    "starts Prometheus, which scrapes the webhook service and the billing callback (targets up) with our rules",
    async () => {
      expect(up?.code).toBe(0);
      expect(up?.stdout).toContain(`Prometheus       http://127.0.0.1:${prometheusPort}`);
      const base = `http://127.0.0.1:${prometheusPort}`;
      type Target = { labels: { job: string }; health: string; scrapeUrl: string; lastError: string };
      const targets = async () =>
        ((await (await fetch(`${base}/api/v1/targets`)).json()) as { data: { activeTargets: Target[] } }).data
          .activeTargets;
      const upFor = async (job: string) => {
        const t = (await targets()).find((x) => x.labels.job === job);
        return t?.health === "up" ? t : undefined;
      };
      const service = await eventually(() => upFor("webhook-service"), "the webhook-service target up");
      expect(service.scrapeUrl).toBe(`http://127.0.0.1:${webhookPort}/health/metrics`);
      const callback = await eventually(() => upFor("litellm-callback"), "the litellm-callback target up");
      expect(callback.scrapeUrl).toBe(`http://127.0.0.1:${callbackMetricsPort}/metrics`);
      // The query API agrees, and the callback's and the service's own series are in.
      const query = async (q: string) =>
        (
          (await (await fetch(`${base}/api/v1/query?query=${encodeURIComponent(q)}`)).json()) as {
            data: { result: { metric: Record<string, string>; value: [number, string] }[] };
          }
        ).data.result;
      expect((await query('up{job="webhook-service"}'))[0]?.value[1]).toBe("1");
      expect((await query("lago_billing_callback_queue_max"))[0]?.value[1]).toBeDefined();
      // The repository's rule files are loaded (the same groups as in compose).
      const rules = (await (await fetch(`${base}/api/v1/rules`)).json()) as {
        data: { groups: { name: string }[] };
      };
      expect(rules.data.groups.map((g) => g.name)).toEqual(
        expect.arrayContaining(["lago-billing-recording", "lago-billing-delivery", "lago-billing-callback"]),
      );
      const status = await stack("status");
      expect(status.stdout).toMatch(/prometheus\s+running/);
    },
  );

  it("stops everything it started: no process left, the ports free again", async () => {
    expect(up?.code).toBe(0);
    const pids = pidFiles();
    expect(pids.map((p) => p.file).sort()).toEqual([
      "demo-lago.pid",
      "demo-upstream.pid",
      "litellm.pid",
      ...(HAS_PROMETHEUS ? ["prometheus.pid"] : []),
      "webhook.pid",
    ]);
    for (const { pid } of pids) expect(alive(pid)).toBe(true);

    const down = await stack("down", 50_000);
    downDone = true;
    expect(down.code, show(down)).toBe(0);
    for (const { file, pid } of pids) expect(alive(pid), `${file}: pid ${pid}`).toBe(false);
    expect(membersOf(pids.map((p) => p.pid)), "processes left in the services' groups").toEqual([]);
    expect(await portAnswers(webhookPort)).toBe(false);
    expect(await portAnswers(litellmPort)).toBe(false);
    expect(await portAnswers(upstreamPort)).toBe(false);
    expect(await portAnswers(lagoPort)).toBe(false);
    expect(await portAnswers(prometheusPort)).toBe(false);
    expect(await portAnswers(callbackMetricsPort)).toBe(false);
    expect(pidFiles()).toEqual([]);

    const status = await stack("status");
    expect(status.code).not.toBe(0);
  });
});
