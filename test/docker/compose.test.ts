/**
 * The Docker deployment for real: `./deploy.sh` with the real docker-compose.yml, its images mapped
 * to locally built stand-ins (test/docker/compose.standins.yml, test/docker/standins), on a Docker
 * engine started by scripts/ensure-docker.sh. Run by `./test.sh --docker`; skipped, with the reason
 * printed, where no engine can run.
 *
 * Through nginx a chat completion goes to the fake upstream and is billed into the Lago double; with
 * three LiteLLM replicas every replica serves and bills; a restart and a SIGKILL of the webhook
 * service lose nothing and bill nothing twice; scripts/backup.sh and scripts/restore.sh round-trip
 * the database; `down -v` leaves no container, volume or network behind.
 */
import { type SpawnOptions, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { FAKE_REPLY } from "../support/fake-openai.ts";
import type { StoredEvent } from "../support/lago-double.ts";
import { freePort } from "../support/process.ts";

const SKIP =
  process.env.DOCKER_TEST_SKIP || (process.env.DOCKER_HOST ? "" : "run it with ./test.sh --docker");
if (SKIP) console.warn(`compose test SKIPPED: ${SKIP}`);

const REPO = resolve(".");
const CUSTOMER = "customer-123";
const LAGO_KEY = `lago-docker-${randomBytes(4).toString("hex")}`;
const PROJECT = `lagobilling${randomBytes(3).toString("hex")}`;

interface Run {
  code: number | null;
  out: string;
}

let dir = "";
let env: Record<string, string> = {};
let lbPort = 0;
let webhookPort = 0;
let lagoPort = 0;
let calls = 0;

function run(cmd: string, args: string[], timeoutMs = 600_000, opts: SpawnOptions = {}): Promise<Run> {
  return new Promise((done, fail) => {
    const child = spawn(cmd, args, { cwd: dir, env, stdio: ["ignore", "pipe", "pipe"], ...opts });
    let out = "";
    child.stdout?.on("data", (d: Buffer) => {
      out += d.toString();
    });
    child.stderr?.on("data", (d: Buffer) => {
      out += d.toString();
    });
    const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
    child.on("error", fail);
    child.on("close", (code) => {
      clearTimeout(timer);
      done({ code, out });
    });
  });
}

const compose = (...args: string[]) => run("docker-compose", args, 300_000);

async function must(r: Promise<Run>, what: string): Promise<string> {
  const res = await r;
  if (res.code !== 0) throw new Error(`${what} exited ${res.code}:\n${res.out.slice(-4000)}`);
  return res.out;
}

function dotenv(name: string): string {
  const line = readFileSync(join(dir, ".env"), "utf8")
    .split("\n")
    .filter((l) => l.startsWith(`${name}=`))
    .at(-1);
  return line?.slice(name.length + 1) ?? "";
}

async function eventually<T>(
  probe: () => Promise<T | undefined | false>,
  what: string,
  ms = 120_000,
): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await probe().catch(() => undefined);
    if (v !== undefined && v !== false) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 500));
  }
}

/**
 * One chat completion through nginx, billed to the customer; counts it. Each prompt is unique: a
 * repeated one is a hit of LiteLLM's response cache, which is not billed (BILL_CACHE_HITS=false).
 */
async function chat(prompt: string): Promise<{ status: number; content?: string }> {
  const text = `${prompt} (${randomBytes(6).toString("hex")})`;
  const res = await fetch(`http://127.0.0.1:${lbPort}/v1/chat/completions`, {
    method: "POST",
    headers: { authorization: `Bearer ${dotenv("LITELLM_MASTER_KEY")}`, "content-type": "application/json" },
    body: JSON.stringify({ model: "gpt-4o", messages: [{ role: "user", content: text }], user: CUSTOMER }),
  });
  const raw = await res.text();
  let body: { choices?: { message?: { content?: string } }[] } = {};
  try {
    body = JSON.parse(raw);
  } catch {
    // nginx's own error page (502 while no replica is up)
  }
  if (res.status === 200) calls++;
  return { status: res.status, content: body.choices?.[0]?.message?.content };
}

async function lagoEvents(): Promise<StoredEvent[]> {
  const res = await fetch(`http://127.0.0.1:${lagoPort}/__events`);
  return ((await res.json()) as { events: StoredEvent[] }).events.filter(
    (e) => e.external_subscription_id === CUSTOMER,
  );
}

/** Every successful call billed: two token events each, each transaction id stored once. */
async function allBilledOnce(): Promise<void> {
  const events = await eventually(
    async () => {
      const e = await lagoEvents();
      return e.length >= calls * 2 ? e : undefined;
    },
    `${calls * 2} events in the Lago double`,
  ).catch(async (err: Error) => {
    // Say where the missing events are: the outbox, and the services' last words.
    const outbox = await psql(
      "SELECT state || ' ' || count(*) || ' ' || coalesce(max(last_error), '') FROM lago_events GROUP BY state",
    ).catch((e: Error) => e.message);
    const ledger = await psql("SELECT count(*) FROM usage_events").catch((e: Error) => e.message);
    const logs = (await compose("logs", "--no-color", "--tail", "40", "webhook-service", "litellm")).out;
    throw new Error(
      `${err.message}; Lago has ${(await lagoEvents()).length}; ledger ${ledger} calls; outbox:\n${outbox}\n${logs}`,
    );
  });
  const ids = new Set(events.map((e) => e.transaction_id));
  expect(ids.size).toBe(events.length);
  expect(events.length).toBe(calls * 2);
}

async function psql(query: string): Promise<string> {
  return (
    await must(
      compose("exec", "-T", "postgres", "psql", "-U", "litellm", "-d", "litellm", "-qAtc", query),
      query,
    )
  ).trim();
}

async function containerIds(service: string): Promise<string[]> {
  return (await must(compose("ps", "-q", service), `ps ${service}`)).split("\n").filter(Boolean);
}

async function inspect(id: string, format: string): Promise<string> {
  return (await must(run("docker", ["inspect", "-f", format, id]), "docker inspect")).trim();
}

/** Sends `n` calls one after another while `during` runs; returns how many answered 200. */
async function trafficDuring(n: number, during: () => Promise<void>): Promise<number> {
  let ok = 0;
  const traffic = (async () => {
    for (let i = 0; i < n; i++) {
      if ((await chat(`traffic ${i}`)).status === 200) ok++;
      await new Promise((r) => setTimeout(r, 100));
    }
  })();
  await during();
  await traffic;
  return ok;
}

describe.skipIf(SKIP !== "")("the compose stack through ./deploy.sh (stand-in images)", () => {
  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "compose-e2e-"));
    // The working tree as a fresh clone would have it (tracked and new files, nothing ignored).
    const files = await must(
      run("git", ["ls-files", "-co", "--exclude-standard", "-z"], 30_000, { cwd: REPO }),
      "git ls-files",
    );
    // tar reads the file list on stdin.
    await new Promise<void>((done, fail) => {
      const child = spawn("bash", ["-c", `tr '\\0' '\\n' | tar -cf - -T - | tar -xf - -C "${dir}"`], {
        cwd: REPO,
      });
      child.on("error", fail);
      child.on("close", (code) => (code === 0 ? done() : fail(new Error(`copying the tree exited ${code}`))));
      child.stdin.end(files);
    });
    const ports = new Set<number>();
    while (ports.size < 3) ports.add(await freePort());
    [lbPort, webhookPort, lagoPort] = [...ports] as [number, number, number];
    // Settings as an operator would put them in .env; from the environment, which compose (and
    // deploy.sh) let win over .env, so deploy.sh --generate-secrets writes the secrets there.
    env = {
      PATH: process.env.PATH ?? "/usr/bin:/bin",
      HOME: process.env.HOME ?? dir,
      DOCKER_HOST: process.env.DOCKER_HOST ?? "",
      DOCKER_BUILDKIT: "0",
      COMPOSE_DOCKER_CLI_BUILD: "0",
      COMPOSE_CMD: "docker-compose",
      COMPOSE_PROJECT_NAME: PROJECT,
      COMPOSE_FILE: "docker-compose.yml:test/docker/compose.standins.yml",
      OPENAI_API_KEY: "sk-fake-upstream",
      LAGO_API_URL: "http://lago-double:3000",
      LAGO_API_KEY: LAGO_KEY,
      LB_BIND_ADDRESS: "127.0.0.1",
      WEBHOOK_BIND_ADDRESS: "127.0.0.1",
      LB_PORT: String(lbPort),
      WEBHOOK_PORT: String(webhookPort),
      LAGO_DOUBLE_PORT: String(lagoPort),
      // Short retry backoff, so that events retried across the outages below go out within the test.
      LAGO_RETRY_MAX_MS: "5000",
    };
  }, 120_000);

  afterAll(async () => {
    if (!dir) return;
    await compose("down", "-v", "--remove-orphans").catch(() => undefined);
    rmSync(dir, { recursive: true, force: true });
  }, 300_000);

  it("deploys: preflight, secret generation, build, up, health wait", async () => {
    const out = await must(
      run("./deploy.sh", ["--generate-secrets", "--timeout", "600"], 900_000),
      "deploy.sh",
    );
    expect(out).toContain("all services healthy");
    expect(out).toContain(`http://localhost:${lbPort}`);
    expect(dotenv("LITELLM_MASTER_KEY")).toMatch(/^sk-[0-9a-f]{64}$/);
    expect(dotenv("WEBHOOK_SECRET")).toMatch(/^[0-9a-f]{64}$/);
    for (const service of ["postgres", "redis", "webhook-service", "litellm", "litellm-lb"]) {
      const [id] = await containerIds(service);
      expect(await inspect(id as string, "{{.State.Health.Status}}"), service).toBe("healthy");
    }
    // Only the load balancer and the webhook service are published (plus the test's Lago double).
    const published = await must(
      run("docker", [
        "ps",
        "--filter",
        `label=com.docker.compose.project=${PROJECT}`,
        "--format",
        "{{.Ports}}",
      ]),
      "ps",
    );
    expect(published).not.toMatch(/->(5432|6379)\//);
  }, 900_000);

  it("bills a chat completion through nginx into Lago", async () => {
    await must(
      compose("exec", "-T", "webhook-service", "node", "dist/cli.js", "lago", "setup", "--plan", "llm"),
      "lago setup",
    );
    const since = new Date(Date.now() - 86_400_000).toISOString();
    await must(
      compose(
        "exec",
        "-T",
        "webhook-service",
        "node",
        "dist/cli.js",
        "lago",
        "customer",
        "add",
        CUSTOMER,
        "--plan",
        "llm",
        "--subscription-at",
        since,
      ),
      "lago customer add",
    );
    const r = await chat("Hello");
    expect(r).toEqual({ status: 200, content: FAKE_REPLY });
    await allBilledOnce();
    const stats = (await (
      await fetch(`http://127.0.0.1:${webhookPort}/webhooks/stats`, {
        headers: { authorization: `Bearer ${dotenv("WEBHOOK_SECRET")}` },
      })
    ).json()) as { events: Record<string, number> };
    expect(stats.events).toMatchObject({ delivered: 2, pending: 0, failed: 0, unbillable: 0 });
  }, 180_000);

  it("with three LiteLLM replicas, every replica serves and bills", async () => {
    const out = await must(
      run("./deploy.sh", ["--scale", "3", "--no-build", "--timeout", "600"], 900_000),
      "deploy.sh --scale 3",
    );
    expect(out).toContain("all services healthy");
    const replicas = await containerIds("litellm");
    expect(replicas).toHaveLength(3);
    const addresses = new Set<string>();
    for (const id of replicas) {
      addresses.add(await inspect(id, "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}"));
    }
    for (let i = 0; i < 30; i++) expect((await chat(`replica ${i}`)).status).toBe(200);
    await allBilledOnce();
    // nginx logs the replica of every request: each of the three served some of the billed calls.
    const log = await must(compose("logs", "--no-color", "litellm-lb"), "nginx logs");
    const served = new Set(
      [...log.matchAll(/"POST \/v1\/chat\/completions[^"]*" 200 .*upstream=([\d.]+):4000/g)].map((m) => m[1]),
    );
    expect([...served].sort()).toEqual([...addresses].sort());
  }, 900_000);

  it("loses nothing when the webhook service is restarted under traffic", async () => {
    const ok = await trafficDuring(30, async () => {
      await new Promise((r) => setTimeout(r, 500));
      await must(compose("restart", "webhook-service"), "restart");
    });
    expect(ok).toBe(30);
    await allBilledOnce();
  }, 300_000);

  it("loses nothing when the webhook service's container is killed with SIGKILL", async () => {
    const [id] = await containerIds("webhook-service");
    const restarts = Number(await inspect(id as string, "{{.RestartCount}}"));
    const ok = await trafficDuring(30, async () => {
      await new Promise((r) => setTimeout(r, 500));
      // The container's PID 1 (tini, `init: true`) from the host: the whole container dies at once.
      process.kill(Number(await inspect(id as string, "{{.State.Pid}}")), "SIGKILL");
    });
    expect(ok).toBe(30);
    // restart: unless-stopped brings it back; it turns healthy again.
    await eventually(
      async () => Number(await inspect(id as string, "{{.RestartCount}}")) > restarts,
      "a restart",
    );
    await eventually(
      async () => (await inspect(id as string, "{{.State.Health.Status}}")) === "healthy",
      "healthy again",
    );
    await allBilledOnce();
  }, 300_000);

  it("round-trips the database through scripts/backup.sh and scripts/restore.sh", async () => {
    const count = () =>
      psql(
        "SELECT (SELECT count(*) FROM usage_events) || '/' || (SELECT count(*) FROM lago_events WHERE state = 'delivered')",
      );
    const before = await count();
    expect(before).toBe(`${calls}/${calls * 2}`);
    const file = (await must(run("scripts/backup.sh", []), "backup.sh")).trim().split("\n").at(-1) as string;
    expect(file).toMatch(/backups\/litellm-\d{8}T\d{6}Z\.sql\.gz$/);
    // Damage: the ledger emptied.
    await psql("TRUNCATE lago_events, usage_events, webhook_logs");
    expect(await count()).toBe("0/0");
    await must(run("scripts/restore.sh", ["--yes", file]), "restore.sh");
    expect(await count()).toBe(before);
    // The stack works on after the restore (restore.sh starts LiteLLM and the webhook service again;
    // they take their health checks' time), and the restored ledger sends nothing again.
    for (const service of ["webhook-service", "litellm"]) {
      for (const id of await containerIds(service)) {
        await eventually(
          async () => (await inspect(id, "{{.State.Health.Status}}")) === "healthy",
          `${service} healthy after restore`,
        );
      }
    }
    expect((await chat("after restore")).status).toBe(200);
    await allBilledOnce();
  }, 300_000);

  it("down -v leaves no container, volume or network", async () => {
    await must(compose("down", "-v", "--remove-orphans"), "down -v");
    for (const kind of ["ps -a", "volume ls", "network ls"]) {
      const left = await must(
        run("docker", [...kind.split(" "), "-q", "--filter", `label=com.docker.compose.project=${PROJECT}`]),
        kind,
      );
      expect(left.trim(), kind).toBe("");
    }
  }, 300_000);
});
