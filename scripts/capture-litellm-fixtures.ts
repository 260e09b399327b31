/**
 * Captures real LiteLLM StandardLoggingPayloads as test fixtures (test/fixtures/litellm/*.json).
 *
 * Regenerate: `node scripts/capture-litellm-fixtures.ts` (needs .venv/litellm and Redis on 127.0.0.1:6379).
 *
 * Starts the fake OpenAI upstream, a capture server standing in for the webhook service (it records
 * every JSON / NDJSON body POSTed to /webhooks/litellm and answers 202), and the real LiteLLM proxy
 * with our billing callback (proxy/lago_billing.py). It then makes five calls through the `openai`
 * SDK — non-streamed, streamed with include_usage, with cached prompt tokens, failed upstream, and an
 * embedding — waits for each call's payload and writes it as pretty JSON (formatted by Biome).
 * Payloads are kept as captured (ids, times); only raw keys (the master key, the upstream key,
 * anything "sk-...") are replaced by "<redacted>", and the script fails if one would end up in a file.
 */
import { execFileSync } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import { createServer, type IncomingMessage, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import OpenAI from "openai";
import { FakeOpenAI } from "../test/support/fake-openai.ts";
import { type LiteLLMProxy, MASTER_KEY, startProxy } from "../test/support/litellm-proxy.ts";

type Payload = Record<string, unknown>;

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const OUT_DIR = join(ROOT, "test/fixtures/litellm");
/** The upstream api_key testConfig() gives every model. */
const UPSTREAM_KEY = "fake-key";
const REDACTED = "<redacted>";
const RAW_KEY = /\bsk-[A-Za-z0-9_-]{4,}/g;

/** Records every payload POSTed to /webhooks/litellm (a JSON object, a JSON list, or NDJSON). */
class CaptureServer {
  readonly payloads: Payload[] = [];
  posts = 0;
  readonly url: string;
  private readonly server: Server;

  private constructor(server: Server, url: string) {
    this.server = server;
    this.url = url;
  }

  static async start(): Promise<CaptureServer> {
    let self: CaptureServer | undefined;
    const server = createServer((req, res) => {
      readBody(req).then(
        (raw) => {
          if (req.method !== "POST" || new URL(req.url ?? "/", "http://x").pathname !== "/webhooks/litellm") {
            res.writeHead(404).end();
            return;
          }
          try {
            const items = parseBody(raw);
            if (self) {
              self.posts++;
              self.payloads.push(...items);
            }
            res.writeHead(202, { "content-type": "application/json" });
            res.end(JSON.stringify({ accepted: items.length }));
          } catch (err) {
            res.writeHead(400, { "content-type": "application/json" });
            res.end(JSON.stringify({ error: String(err) }));
          }
        },
        () => res.writeHead(400).end(),
      );
    });
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(0, "127.0.0.1", () => resolve());
    });
    const { port } = server.address() as AddressInfo;
    self = new CaptureServer(server, `http://127.0.0.1:${port}`);
    return self;
  }

  /** Waits until a payload matching `pred` has arrived and returns it. */
  async waitFor(pred: (p: Payload) => boolean, what: string, timeoutMs = 30_000): Promise<Payload> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const found = this.payloads.find(pred);
      if (found) return found;
      if (Date.now() > deadline) {
        throw new Error(`no payload for ${what} after ${timeoutMs} ms (${this.payloads.length} captured)`);
      }
      await sleep(100);
    }
  }

  async close(): Promise<void> {
    await new Promise<void>((resolve) => {
      this.server.close(() => resolve());
      this.server.closeAllConnections();
    });
  }
}

function parseBody(raw: string): Payload[] {
  const text = raw.trim();
  if (text === "") return [];
  let values: unknown[];
  try {
    const v: unknown = JSON.parse(text);
    values = Array.isArray(v) ? v : [v];
  } catch {
    values = text
      .split("\n")
      .filter((l) => l.trim() !== "")
      .map((l) => JSON.parse(l) as unknown);
  }
  return values.filter((v): v is Payload => typeof v === "object" && v !== null && !Array.isArray(v));
}

function readBody(req: IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => resolve(Buffer.concat(chunks).toString("utf8")));
    req.on("error", reject);
  });
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Replaces raw keys anywhere in the payload (values and object keys); returns what was replaced. */
function scrub(value: unknown, found: Set<string>): unknown {
  if (typeof value === "string") {
    let s = value;
    for (const secret of [MASTER_KEY, UPSTREAM_KEY]) {
      if (s.includes(secret)) {
        found.add(secret);
        s = s.split(secret).join(REDACTED);
      }
    }
    return s.replace(RAW_KEY, (m) => {
      found.add(m);
      return REDACTED;
    });
  }
  if (Array.isArray(value)) return value.map((v) => scrub(v, found));
  if (typeof value === "object" && value !== null) {
    return Object.fromEntries(
      Object.entries(value).map(([k, v]) => [scrub(k, found) as string, scrub(v, found)]),
    );
  }
  return value;
}

const byUser =
  (user: string, status?: string) =>
  (p: Payload): boolean =>
    p.end_user === user && (status === undefined || p.status === status);

async function main(): Promise<void> {
  process.chdir(ROOT); // startProxy reads config.yaml and .venv/litellm relative to the repository
  const upstream = await FakeOpenAI.start();
  const capture = await CaptureServer.start();
  let proxy: LiteLLMProxy | undefined;
  try {
    proxy = await startProxy({ upstream: upstream.url, callbacks: "ours", webhookUrl: capture.url });
    const client = new OpenAI({ apiKey: MASTER_KEY, baseURL: `${proxy.url}/v1`, maxRetries: 0 });
    const fixtures: Record<string, Payload> = {};

    // (a) non-streamed chat call, billed to the request's user
    await client.chat.completions.create({
      model: "gpt-4o",
      messages: [{ role: "user", content: "Hello usage:prompt=120,completion=30" }],
      user: "customer-123",
    });
    fixtures.nonstream = await capture.waitFor(byUser("customer-123"), "the non-streamed call");

    // (b) streamed call; the usage arrives in the final chunk
    const stream = await client.chat.completions.create({
      model: "gpt-4o",
      messages: [{ role: "user", content: "stream usage:prompt=50,completion=20" }],
      user: "customer-stream",
      stream: true,
      stream_options: { include_usage: true },
    });
    for await (const _ of stream) {
      // drain the stream: LiteLLM logs the call when it ends
    }
    fixtures.stream = await capture.waitFor(byUser("customer-stream"), "the streamed call");

    // (c) prompt-cache reads reported by the upstream (usage.prompt_tokens_details.cached_tokens)
    await client.chat.completions.create({
      model: "gpt-4o-mini",
      messages: [{ role: "user", content: "cached usage:prompt=1000,completion=100,cached=800" }],
      user: "customer-cache",
    });
    fixtures.cached = await capture.waitFor(byUser("customer-cache"), "the cached-tokens call");

    // (d) failed call: the upstream answers 500 to everything
    upstream.setMode("error");
    const failed = await client.chat.completions
      .create({
        model: "gpt-4o",
        messages: [{ role: "user", content: "this call fails" }],
        user: "customer-fail",
      })
      .then(
        () => false,
        () => true,
      );
    upstream.setMode("ok");
    if (!failed) throw new Error("the failed call did not fail");
    fixtures.failure = await capture.waitFor(byUser("customer-fail", "failure"), "the failed call");

    // (e) embeddings, billed on input tokens
    await client.embeddings.create({
      model: "text-embedding-3-small",
      input: ["first input", "second input"],
      user: "customer-embed",
    });
    fixtures.embedding = await capture.waitFor(byUser("customer-embed"), "the embedding call");

    // Late duplicates (a second payload for one call) would be worth knowing about.
    await sleep(1500);
    const perUser = new Map<unknown, number>();
    for (const p of capture.payloads) perUser.set(p.end_user, (perUser.get(p.end_user) ?? 0) + 1);
    process.stdout.write(
      `captured ${capture.payloads.length} payloads in ${capture.posts} POSTs: ${JSON.stringify(Object.fromEntries(perUser))}\n`,
    );

    mkdirSync(OUT_DIR, { recursive: true });
    for (const [name, payload] of Object.entries(fixtures)) {
      const found = new Set<string>();
      const clean = scrub(payload, found);
      const json = `${JSON.stringify(clean, null, 2)}\n`;
      if (json.includes(MASTER_KEY) || json.includes(UPSTREAM_KEY) || new RegExp(RAW_KEY.source).test(json)) {
        throw new Error(`${name}: a raw key survived scrubbing`);
      }
      const file = join(OUT_DIR, `${name}.json`);
      writeFileSync(file, json);
      const note = found.size ? ` (redacted ${found.size} distinct key value(s))` : "";
      process.stdout.write(`wrote ${file}${note}\n`);
    }
    // Biome's layout (short arrays on one line), so `biome check .` stays clean after a regeneration.
    execFileSync(join(ROOT, "node_modules/.bin/biome"), ["format", "--write", OUT_DIR], { stdio: "inherit" });
  } finally {
    await proxy?.stop();
    await capture.close();
    await upstream.close();
  }
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    process.stderr.write(`${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exit(1);
  },
);
