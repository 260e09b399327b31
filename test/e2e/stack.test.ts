/**
 * The native stack end to end: `scripts/stack.sh up` on free ports with a fresh database, the README's
 * quick-start call through it (LiteLLM → fake upstream, our callback → the webhook service → the Lago
 * double), then `scripts/stack.sh down` leaving no process behind.
 */
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import postgres from "postgres";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import YAML from "yaml";
import { databaseUrl, PG_ADMIN_URL } from "../support/env.ts";
import { FAKE_REPLY, FakeOpenAI } from "../support/fake-openai.ts";
import { LagoDouble } from "../support/lago-double.ts";
import { testConfig } from "../support/litellm-proxy.ts";
import { freePort } from "../support/process.ts";

const STACK = resolve("scripts/stack.sh");
const MARKER = "<!-- executed by test/e2e/stack.test.ts against the native stack -->";
const LAGO_KEY = `lago-stack-${randomBytes(4).toString("hex")}`;
const CUSTOMER = "customer-123";

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

let upstream: FakeOpenAI | undefined;
let lago: LagoDouble | undefined;
let stackDir: string;
let configDir: string;
let dbName: string;
let dbUrl: string;
let webhookPort: number;
let litellmPort: number;
let stackEnv: Record<string, string>;
let up: Run | undefined;
let downDone = false;

const stack = (command: "up" | "down" | "status", timeoutMs = 60_000) =>
  run(STACK, [command], stackEnv, timeoutMs);

const pidFiles = () =>
  readdirSync(stackDir)
    .filter((f) => f.endsWith(".pid"))
    .map((f) => ({ file: f, pid: Number(readFileSync(join(stackDir, f), "utf8").trim()) }));

beforeAll(async () => {
  upstream = await FakeOpenAI.start();
  lago = await LagoDouble.start({ apiKey: LAGO_KEY });
  lago.addMetric("llm_tokens");
  lago.addSubscription(CUSTOMER, CUSTOMER);

  stackDir = mkdtempSync(join(tmpdir(), "stack-e2e-"));
  configDir = mkdtempSync(join(tmpdir(), "stack-e2e-config-"));
  // stack.sh creates the database when it is missing; the test only drops it.
  dbName = `stack_e2e_${randomBytes(5).toString("hex")}`;
  dbUrl = databaseUrl(dbName);
  webhookPort = await freePort();
  do litellmPort = await freePort();
  while (litellmPort === webhookPort);

  // The repo's config re-pointed at the fake upstream, with our callback; the master key comes from
  // the environment as in config.yaml, so the stack's generated $STACK_DIR/master_key is the one.
  const config = testConfig({ upstream: upstream.url, callbacks: "ours" }) as {
    general_settings: Record<string, unknown>;
  };
  config.general_settings.master_key = "os.environ/LITELLM_MASTER_KEY";
  writeFileSync(join(configDir, "config.yaml"), YAML.stringify(config));

  // A clean environment: nothing of the caller's (no WEBHOOK_SECRET, LITELLM_MASTER_KEY, NODE_ENV,
  // DATABASE_URL ...) and no .env from the repository.
  stackEnv = {
    PATH: process.env.PATH ?? "/usr/bin:/bin",
    HOME: process.env.HOME ?? stackDir,
    LANG: "C.UTF-8",
    STACK_ENV_FILE: "/dev/null",
    STACK_DIR: stackDir,
    WEBHOOK_PORT: String(webhookPort),
    LITELLM_PORT: String(litellmPort),
    LITELLM_CONFIG: join(configDir, "config.yaml"),
    DATABASE_URL: dbUrl,
    LAGO_WEBHOOK_URL: lago.url,
    LAGO_API_KEY: LAGO_KEY,
    STACK_TIMEOUT: "70",
    LITELLM_TELEMETRY: "False",
  };
  up = await stack("up", 85_000);
}, 100_000);

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
  await lago?.close();
  await upstream?.close();
  for (const dir of [stackDir, configDir]) if (dir) rmSync(dir, { recursive: true, force: true });
}, 60_000);

describe("the native stack (scripts/stack.sh)", () => {
  it("starts everything on the given free ports, healthy", async () => {
    expect(up, "stack.sh up ran").toBeDefined();
    expect(up?.code, show(up as Run)).toBe(0);
    expect(up?.stdout).toContain(`http://127.0.0.1:${litellmPort}`);
    expect(up?.stdout).toContain(`http://127.0.0.1:${webhookPort}`);

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
      await eventually(
        () => (lago as LagoDouble).events.filter((e) => e.external_subscription_id === CUSTOMER).length === 2,
        "2 events in the Lago double",
      );
      const sent = (lago as LagoDouble).events.filter((e) => e.external_subscription_id === CUSTOMER);
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

  it("stops everything it started: no process left, the ports free again", async () => {
    expect(up?.code).toBe(0);
    const pids = pidFiles();
    expect(pids.map((p) => p.file).sort()).toEqual(["litellm.pid", "webhook.pid"]);
    for (const { pid } of pids) expect(alive(pid)).toBe(true);

    const down = await stack("down", 50_000);
    downDone = true;
    expect(down.code, show(down)).toBe(0);
    for (const { file, pid } of pids) expect(alive(pid), `${file}: pid ${pid}`).toBe(false);
    expect(membersOf(pids.map((p) => p.pid)), "processes left in the services' groups").toEqual([]);
    expect(await portAnswers(webhookPort)).toBe(false);
    expect(await portAnswers(litellmPort)).toBe(false);
    expect(pidFiles()).toEqual([]);

    const status = await stack("status");
    expect(status.code).not.toBe(0);
  });
});
