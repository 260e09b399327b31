/**
 * FakeOpenAI: a fake OpenAI-compatible upstream for the real LiteLLM proxy (and for unit tests).
 *
 * Usage is deterministic and can be dictated by the request: any message content containing
 *   usage:prompt=120,completion=30,cached=100,reasoning=5
 * sets the reported usage (missing parts default to prompt=12, completion=8, cached=0, reasoning=0).
 * A message content containing `fail:429` / `fail:500` (any 4xx/5xx code) answers that status with an
 * OpenAI-style error body. setMode("error") makes every completion/embedding answer 500.
 *
 * Endpoints (with or without the /v1 prefix): POST /v1/chat/completions (JSON or SSE when
 * stream: true; a final usage chunk only when stream_options.include_usage is true),
 * POST /v1/embeddings (5 prompt tokens per input; encoding_format "base64" supported), GET /v1/models.
 *
 * Standalone: `node test/support/fake-openai.ts --port 0 [--host 127.0.0.1] [--latency-ms 0]` prints one
 * line `{"url":"http://127.0.0.1:PORT/v1"}`. Control API: POST /__control {mode?, latencyMs?, reset?},
 * GET /__stats.
 */
import { randomUUID } from "node:crypto";
import {
  createServer,
  type IncomingMessage,
  type Server,
  type ServerResponse,
  STATUS_CODES,
} from "node:http";
import type { AddressInfo } from "node:net";
import { pathToFileURL } from "node:url";
import { parseArgs } from "node:util";

export type FakeOpenAIMode = "ok" | "error";

export interface FakeOpenAIOptions {
  port?: number;
  host?: string;
  latencyMs?: number;
}

export interface FakeUsage {
  prompt: number;
  completion: number;
  cached: number;
  reasoning: number;
}

export interface FakeRequestRecord {
  method: string;
  path: string;
  body: unknown;
  authorization: string | undefined;
  receivedAt: number;
}

export interface FakeRequests {
  /** All requests received (control endpoints excluded). */
  count: number;
  /** Requests per normalized path, e.g. "/v1/chat/completions". */
  byPath: Record<string, number>;
  /** The most recent requests (at most FakeOpenAI.keepLast), oldest first. */
  last: FakeRequestRecord[];
}

export const DEFAULT_USAGE: Readonly<FakeUsage> = Object.freeze({
  prompt: 12,
  completion: 8,
  cached: 0,
  reasoning: 0,
});

export const FAKE_REPLY = "Hello from the fake upstream.";
export const FAKE_MODELS = ["gpt-4o-mini", "gpt-4o", "text-embedding-3-small"];

const USAGE_DIRECTIVE =
  /usage:((?:prompt|completion|cached|reasoning)=\d+(?:\s*,\s*(?:prompt|completion|cached|reasoning)=\d+)*)/;
const FAIL_DIRECTIVE = /fail:([45]\d\d)\b/;

type Json = Record<string, unknown>;

function isObject(v: unknown): v is Json {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** All text carried by the request's messages (string contents and text parts of array contents). */
export function messageText(body: unknown): string {
  if (!isObject(body)) return "";
  const parts: string[] = [];
  const messages = Array.isArray(body.messages) ? body.messages : [];
  for (const m of messages) {
    if (!isObject(m)) continue;
    const c = m.content;
    if (typeof c === "string") parts.push(c);
    else if (Array.isArray(c)) {
      for (const p of c) if (isObject(p) && typeof p.text === "string") parts.push(p.text);
    }
  }
  if (typeof body.prompt === "string") parts.push(body.prompt);
  const input = body.input;
  if (typeof input === "string") parts.push(input);
  else if (Array.isArray(input)) for (const i of input) if (typeof i === "string") parts.push(i);
  return parts.join("\n");
}

/** Usage dictated by a `usage:prompt=..,completion=..,cached=..,reasoning=..` directive, else defaults. */
export function parseUsageDirective(text: string): FakeUsage {
  const usage: FakeUsage = { ...DEFAULT_USAGE };
  const m = USAGE_DIRECTIVE.exec(text);
  if (m?.[1]) {
    for (const pair of m[1].split(",")) {
      const [k, v] = pair.trim().split("=");
      if (k === "prompt" || k === "completion" || k === "cached" || k === "reasoning") usage[k] = Number(v);
    }
  }
  return usage;
}

function usageBody(u: FakeUsage): Json {
  return {
    prompt_tokens: u.prompt,
    completion_tokens: u.completion,
    total_tokens: u.prompt + u.completion,
    prompt_tokens_details: { cached_tokens: u.cached, audio_tokens: 0 },
    completion_tokens_details: {
      reasoning_tokens: u.reasoning,
      audio_tokens: 0,
      accepted_prediction_tokens: 0,
      rejected_prediction_tokens: 0,
    },
  };
}

function errorBody(status: number): Json {
  if (status === 429) {
    return {
      error: {
        message: "Rate limit reached (fake upstream)",
        type: "requests",
        param: null,
        code: "rate_limit_exceeded",
      },
    };
  }
  if (status >= 500)
    return { error: { message: "upstream failure", type: "server_error", param: null, code: null } };
  return {
    error: {
      message: `fake upstream error ${status}`,
      type: "invalid_request_error",
      param: null,
      code: STATUS_CODES[status] ?? null,
    },
  };
}

/** Deterministic 8-float embedding for an input. */
function embeddingFor(input: unknown, index: number): number[] {
  const s = typeof input === "string" ? input : JSON.stringify(input);
  let h = 2166136261 ^ index;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 16777619);
  const out: number[] = [];
  for (let i = 0; i < 8; i++) {
    h = Math.imul(h ^ (h >>> 15), 2246822507);
    out.push(Math.round((((h >>> 0) % 2000) / 1000 - 1) * 1e6) / 1e6);
  }
  return out;
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

export class FakeOpenAI {
  /** Base URL including /v1, e.g. http://127.0.0.1:PORT/v1 (what LiteLLM's api_base wants). */
  readonly url: string;
  readonly port: number;
  latencyMs: number;
  keepLast = 200;
  readonly requests: FakeRequests = { count: 0, byPath: {}, last: [] };

  private readonly server: Server;
  private modeValue: FakeOpenAIMode = "ok";

  private constructor(server: Server, url: string, port: number, opts: FakeOpenAIOptions) {
    this.server = server;
    this.url = url;
    this.port = port;
    this.latencyMs = opts.latencyMs ?? 0;
  }

  static async start(opts: FakeOpenAIOptions = {}): Promise<FakeOpenAI> {
    const host = opts.host ?? "127.0.0.1";
    let self: FakeOpenAI | undefined;
    const server = createServer((req, res) => {
      if (!self) {
        res.writeHead(503).end();
        return;
      }
      self.handle(req, res).catch((err: unknown) => {
        if (!res.headersSent && !res.destroyed) {
          res.writeHead(500, { "content-type": "application/json" });
          res.end(JSON.stringify({ error: { message: String(err), type: "server_error" } }));
        } else {
          res.destroy();
        }
      });
    });
    server.keepAliveTimeout = 65_000;
    server.headersTimeout = 66_000;
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(opts.port ?? 0, host, () => {
        server.off("error", reject);
        resolve();
      });
    });
    const port = (server.address() as AddressInfo).port;
    self = new FakeOpenAI(server, `http://${host}:${port}/v1`, port, opts);
    return self;
  }

  get mode(): FakeOpenAIMode {
    return this.modeValue;
  }

  setMode(mode: FakeOpenAIMode): void {
    this.modeValue = mode;
  }

  /** Body of the most recent request (undefined if none). */
  get lastBody(): unknown {
    return this.requests.last[this.requests.last.length - 1]?.body;
  }

  resetRequests(): void {
    this.requests.count = 0;
    this.requests.byPath = {};
    this.requests.last = [];
  }

  async close(): Promise<void> {
    await new Promise<void>((resolve) => {
      this.server.close(() => resolve());
      this.server.closeAllConnections();
    });
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const method = req.method ?? "GET";
    let path = new URL(req.url ?? "/", "http://localhost").pathname.replace(/\/{2,}/g, "/");
    if (path.length > 1 && path.endsWith("/")) path = path.slice(0, -1);
    const raw = await readBody(req);

    if (path.startsWith("/__")) {
      this.handleControl(method, path, raw, res);
      return;
    }
    if (!path.startsWith("/v1/") && path !== "/v1") path = `/v1${path}`;

    let body: unknown;
    if (raw.length > 0) {
      try {
        body = JSON.parse(raw.toString("utf8"));
      } catch {
        sendJson(res, 400, { error: { message: "invalid JSON body", type: "invalid_request_error" } });
        return;
      }
    }
    this.requests.count++;
    this.requests.byPath[path] = (this.requests.byPath[path] ?? 0) + 1;
    this.requests.last.push({
      method,
      path,
      body,
      authorization: req.headers.authorization,
      receivedAt: Date.now(),
    });
    if (this.requests.last.length > this.keepLast)
      this.requests.last.splice(0, this.requests.last.length - this.keepLast);

    if (this.latencyMs > 0) await sleep(this.latencyMs);

    if (method === "GET" && path === "/v1/models") {
      const created = Math.floor(Date.now() / 1000);
      sendJson(res, 200, {
        object: "list",
        data: FAKE_MODELS.map((id) => ({ id, object: "model", created, owned_by: "fake-openai" })),
      });
      return;
    }
    const isChat = method === "POST" && path === "/v1/chat/completions";
    const isEmbeddings = method === "POST" && path === "/v1/embeddings";
    if (!isChat && !isEmbeddings) {
      sendJson(res, 404, {
        error: { message: `unknown route ${method} ${path}`, type: "invalid_request_error" },
      });
      return;
    }
    if (!isObject(body)) {
      sendJson(res, 400, {
        error: { message: "expected a JSON object body", type: "invalid_request_error" },
      });
      return;
    }
    if (this.modeValue === "error") {
      sendJson(res, 500, errorBody(500));
      return;
    }
    const text = messageText(body);
    const fail = FAIL_DIRECTIVE.exec(text);
    if (fail?.[1]) {
      const status = Number(fail[1]);
      sendJson(res, status, errorBody(status));
      return;
    }
    if (isEmbeddings) this.embeddings(body, res);
    else if (body.stream === true) await this.chatStream(body, text, res);
    else this.chat(body, text, res);
  }

  private chat(body: Json, text: string, res: ServerResponse): void {
    const usage = parseUsageDirective(text);
    sendJson(res, 200, {
      id: `chatcmpl-${randomUUID()}`,
      object: "chat.completion",
      created: Math.floor(Date.now() / 1000),
      model: typeof body.model === "string" ? body.model : "gpt-4o-mini",
      system_fingerprint: "fp_fake",
      choices: [
        {
          index: 0,
          message: { role: "assistant", content: FAKE_REPLY, refusal: null },
          logprobs: null,
          finish_reason: "stop",
        },
      ],
      usage: usageBody(usage),
    });
  }

  private async chatStream(body: Json, text: string, res: ServerResponse): Promise<void> {
    const usage = parseUsageDirective(text);
    const includeUsage = isObject(body.stream_options) && body.stream_options.include_usage === true;
    const id = `chatcmpl-${randomUUID()}`;
    const created = Math.floor(Date.now() / 1000);
    const model = typeof body.model === "string" ? body.model : "gpt-4o-mini";
    const base = { id, object: "chat.completion.chunk", created, model, system_fingerprint: "fp_fake" };
    const extra = includeUsage ? { usage: null } : {};
    res.writeHead(200, {
      "content-type": "text/event-stream; charset=utf-8",
      "cache-control": "no-cache",
      connection: "keep-alive",
    });
    const write = (obj: unknown): void => {
      res.write(`data: ${JSON.stringify(obj)}\n\n`);
    };
    write({
      ...base,
      choices: [
        {
          index: 0,
          delta: { role: "assistant", content: "", refusal: null },
          logprobs: null,
          finish_reason: null,
        },
      ],
      ...extra,
    });
    const words = FAKE_REPLY.split(/(?<= )/);
    for (const w of words) {
      write({
        ...base,
        choices: [{ index: 0, delta: { content: w }, logprobs: null, finish_reason: null }],
        ...extra,
      });
    }
    write({ ...base, choices: [{ index: 0, delta: {}, logprobs: null, finish_reason: "stop" }], ...extra });
    if (includeUsage) write({ ...base, choices: [], usage: usageBody(usage) });
    res.end("data: [DONE]\n\n");
  }

  private embeddings(body: Json, res: ServerResponse): void {
    const input = body.input;
    // A string, an array of strings, an array of token ids, or an array of token-id arrays.
    let inputs: unknown[];
    if (Array.isArray(input)) {
      inputs = input.length > 0 && input.every((x) => typeof x === "number") ? [input] : input;
    } else {
      inputs = [input ?? ""];
    }
    const base64 = body.encoding_format === "base64";
    const data = inputs.map((inp, index) => {
      const vec = embeddingFor(inp, index);
      const embedding = base64 ? Buffer.from(new Float32Array(vec).buffer).toString("base64") : vec;
      return { object: "embedding", index, embedding };
    });
    const promptTokens = 5 * inputs.length;
    sendJson(res, 200, {
      object: "list",
      data,
      model: typeof body.model === "string" ? body.model : "text-embedding-3-small",
      usage: { prompt_tokens: promptTokens, total_tokens: promptTokens },
    });
  }

  private handleControl(method: string, path: string, raw: Buffer, res: ServerResponse): void {
    const stats = (): Json => ({ mode: this.modeValue, latencyMs: this.latencyMs, requests: this.requests });
    if (method === "GET" && path === "/__stats") {
      sendJson(res, 200, stats());
      return;
    }
    if (method === "POST" && path === "/__control") {
      let c: unknown;
      try {
        c = raw.length > 0 ? JSON.parse(raw.toString("utf8")) : {};
      } catch {
        sendJson(res, 400, { error: "invalid JSON" });
        return;
      }
      if (!isObject(c)) {
        sendJson(res, 400, { error: "expected a JSON object" });
        return;
      }
      if (c.mode !== undefined) {
        if (c.mode !== "ok" && c.mode !== "error") {
          sendJson(res, 400, { error: `unknown mode ${String(c.mode)}` });
          return;
        }
        this.setMode(c.mode);
      }
      if (typeof c.latencyMs === "number") this.latencyMs = c.latencyMs;
      if (c.reset === true) this.resetRequests();
      sendJson(res, 200, stats());
      return;
    }
    sendJson(res, 404, { error: "Not Found" });
  }
}

function sendJson(res: ServerResponse, status: number, body: unknown): void {
  const payload = JSON.stringify(body);
  res.writeHead(status, {
    "content-type": "application/json; charset=utf-8",
    "content-length": String(Buffer.byteLength(payload)),
  });
  res.end(payload);
}

function readBody(req: IncomingMessage): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => resolve(Buffer.concat(chunks)));
    req.on("error", reject);
  });
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      port: { type: "string", default: "0" },
      host: { type: "string", default: "127.0.0.1" },
      "latency-ms": { type: "string", default: "0" },
    },
    strict: true,
  });
  const fake = await FakeOpenAI.start({
    port: Number(values.port),
    host: values.host,
    latencyMs: Number(values["latency-ms"]),
  });
  process.stdout.write(`${JSON.stringify({ url: fake.url })}\n`);
  const stop = (): void => {
    fake.close().then(
      () => process.exit(0),
      () => process.exit(1),
    );
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

if (
  import.meta.main ||
  (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href)
) {
  main().catch((err: unknown) => {
    process.stderr.write(`${String(err)}\n`);
    process.exit(1);
  });
}
