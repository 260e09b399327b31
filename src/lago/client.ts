import { Pool, errors as undiciErrors } from "undici";

/** What one POST /api/v1/events/batch came to, classified for the delivery worker. */
export type BatchOutcome =
  | { kind: "ok"; status: number }
  /** 422: index-keyed error_details; nothing was stored by Lago. */
  | { kind: "rejected"; status: number; details: Record<string, unknown> }
  /**
   * wait: how long the answer asked us to wait (null: a bare 429, back off); limit: X-RateLimit-Limit
   * (requests per window), when it said.
   */
  | { kind: "rate_limited"; status: number; wait: RateLimitWait | null; limit: number | null }
  /** 401/403: the key is wrong or lacks the right; nothing will succeed until an operator fixes it. */
  | { kind: "auth"; status: number; error: string }
  /** 5xx, timeouts, connection errors: try again later. */
  | { kind: "retryable"; status: number | null; error: string }
  /** Other 4xx: this request will never succeed as it is. */
  | { kind: "invalid"; status: number; error: string };

export interface LagoEventBody {
  transaction_id: string;
  external_subscription_id: string;
  code: string;
  timestamp: number;
  /** The properties object as JSON text, as PostgreSQL printed the jsonb (spliced in, not re-encoded). */
  properties_json: string;
  precise_total_amount_cents?: string;
}

/**
 * The batch body, written directly: the properties come from PostgreSQL as JSON text and go out as
 * they are, without a parse and a re-serialisation per event.
 */
export function batchBody(events: LagoEventBody[]): string {
  let out = '{"events":[';
  for (let i = 0; i < events.length; i++) {
    const e = events[i] as LagoEventBody;
    if (i > 0) out += ",";
    out += `{"transaction_id":${JSON.stringify(e.transaction_id)},"external_subscription_id":${JSON.stringify(e.external_subscription_id)},"code":${JSON.stringify(e.code)},"timestamp":${JSON.stringify(e.timestamp)},"properties":${e.properties_json}`;
    if (e.precise_total_amount_cents !== undefined)
      out += `,"precise_total_amount_cents":${JSON.stringify(e.precise_total_amount_cents)}`;
    out += "}";
  }
  return `${out}]}`;
}

export interface LagoResponse {
  status: number;
  body: unknown;
  headers: Record<string, string | string[] | undefined>;
}

// undici error codes that mean "the request may not have reached Lago or its answer was lost".
const RETRYABLE_CODES = new Set([
  "UND_ERR_CONNECT_TIMEOUT",
  "UND_ERR_HEADERS_TIMEOUT",
  "UND_ERR_BODY_TIMEOUT",
  "UND_ERR_SOCKET",
  "UND_ERR_CLOSED",
  "UND_ERR_ABORTED",
  "UND_ERR_REQ_RETRY",
  "ECONNREFUSED",
  "ECONNRESET",
  "EPIPE",
  "ETIMEDOUT",
  "ENOTFOUND",
  "EAI_AGAIN",
  "EHOSTUNREACH",
  "ENETUNREACH",
]);

function errorSummary(err: unknown): string {
  if (err instanceof Error) {
    const code = (err as { code?: string }).code;
    return code ? `${code}: ${err.message}` : err.message;
  }
  return String(err);
}

export function isRetryableNetworkError(err: unknown): boolean {
  const code = (err as { code?: string } | null)?.code;
  return (typeof code === "string" && RETRYABLE_CODES.has(code)) || err instanceof undiciErrors.UndiciError;
}

function truncate(s: string, n = 500): string {
  return s.length > n ? `${s.slice(0, n)}…` : s;
}

export interface LagoClientOptions {
  url: string;
  apiKey: string;
  timeoutMs: number;
  connections?: number;
}

/** A small Lago REST client on a dedicated undici pool with short, explicit timeouts. */
export class LagoClient {
  readonly #pool: Pool;
  readonly #auth: string;
  readonly url: string;

  constructor(opts: LagoClientOptions) {
    this.url = opts.url;
    this.#auth = `Bearer ${opts.apiKey}`;
    this.#pool = new Pool(opts.url, {
      connections: opts.connections ?? 16,
      connectTimeout: Math.min(opts.timeoutMs, 5000),
      headersTimeout: opts.timeoutMs,
      bodyTimeout: opts.timeoutMs,
      keepAliveTimeout: 30_000,
    });
  }

  /**
   * One request; the body is always consumed. Throws only on network errors and timeouts. A string
   * body is sent as it is (already JSON). With skipOkBody, a 2xx answer's body is read and dropped
   * unparsed (Lago answers a batch with every event echoed; nothing in it is needed).
   */
  async request(
    method: "GET" | "POST" | "PUT",
    path: string,
    body?: unknown,
    opts: { skipOkBody?: boolean } = {},
  ): Promise<LagoResponse> {
    const res = await this.#pool.request({
      method,
      path,
      headers: {
        authorization: this.#auth,
        accept: "application/json",
        ...(body === undefined ? {} : { "content-type": "application/json" }),
      },
      body: body === undefined ? undefined : typeof body === "string" ? body : JSON.stringify(body),
    });
    if (opts.skipOkBody && res.statusCode >= 200 && res.statusCode < 300) {
      await res.body.dump({ limit: Number.POSITIVE_INFINITY });
      return { status: res.statusCode, body: null, headers: res.headers };
    }
    const text = await res.body.text();
    let parsed: unknown = text;
    try {
      parsed = text ? JSON.parse(text) : null;
    } catch {
      // Not JSON (a proxy's HTML error page): keep the text for the error summary.
    }
    return { status: res.statusCode, body: parsed, headers: res.headers };
  }

  /** POST /api/v1/events/batch, classified. Never throws. */
  async sendBatch(events: LagoEventBody[]): Promise<BatchOutcome> {
    let res: LagoResponse;
    try {
      res = await this.request("POST", "/api/v1/events/batch", batchBody(events), { skipOkBody: true });
    } catch (err) {
      return { kind: "retryable", status: null, error: errorSummary(err) };
    }
    return classify(res);
  }

  close(): Promise<void> {
    return this.#pool.close();
  }
}

/** How long a 429 asked us to wait, and which header said so. */
export interface RateLimitWait {
  seconds: number;
  source: "retry-after" | "x-ratelimit-reset" | "x-ratelimit-reset-epoch";
}

/** Values above this are points in time (Unix seconds), not durations: 1e9 s is 2001-09-09. */
const EPOCH_THRESHOLD = 1e9;

function header(headers: LagoResponse["headers"], name: string): string | undefined {
  const raw = headers[name];
  return Array.isArray(raw) ? raw[0] : raw;
}

/**
 * Reads a 429's wait. Lago Cloud sends X-RateLimit-Reset as seconds until the reset; self-hosted
 * Lago sends no rate-limit headers at all, so whatever arrives came from a proxy in front, which may
 * send Retry-After (seconds or an HTTP date, RFC 9110) or an epoch X-RateLimit-Reset. Retry-After
 * wins when present; an X-RateLimit-Reset above 1e9 is an epoch (in ms above 1e12). Never negative;
 * the caller clamps the maximum.
 */
export function rateLimitWait(headers: LagoResponse["headers"], nowMs: number): RateLimitWait | null {
  const retryAfter = header(headers, "retry-after")?.trim();
  if (retryAfter) {
    if (/^\d+(\.\d+)?$/.test(retryAfter)) return { seconds: Number(retryAfter), source: "retry-after" };
    const at = Date.parse(retryAfter);
    if (Number.isFinite(at)) return { seconds: Math.max(0, (at - nowMs) / 1000), source: "retry-after" };
  }
  const reset = Number(header(headers, "x-ratelimit-reset")?.trim() || Number.NaN);
  if (Number.isFinite(reset) && reset >= 0) {
    if (reset > EPOCH_THRESHOLD) {
      const atMs = reset > EPOCH_THRESHOLD * 1000 ? reset : reset * 1000;
      return { seconds: Math.max(0, (atMs - nowMs) / 1000), source: "x-ratelimit-reset-epoch" };
    }
    return { seconds: reset, source: "x-ratelimit-reset" };
  }
  return null;
}

/** Maps a Lago answer to what the worker must do with the batch. */
export function classify(res: LagoResponse, nowMs: number = Date.now()): BatchOutcome {
  const { status } = res;
  const bodyText = typeof res.body === "string" ? res.body : JSON.stringify(res.body);
  if (status >= 200 && status < 300) return { kind: "ok", status };
  if (status === 422) {
    const details = (res.body as { error_details?: unknown } | null)?.error_details;
    if (details && typeof details === "object")
      return { kind: "rejected", status, details: details as Record<string, unknown> };
    return { kind: "invalid", status, error: truncate(`422 without error_details: ${bodyText}`) };
  }
  if (status === 429) {
    const limit = Number(header(res.headers, "x-ratelimit-limit"));
    return {
      kind: "rate_limited",
      status,
      wait: rateLimitWait(res.headers, nowMs),
      limit: Number.isFinite(limit) && limit > 0 ? limit : null,
    };
  }
  if (status === 401 || status === 403) {
    return { kind: "auth", status, error: truncate(`${status} from Lago: ${bodyText}`) };
  }
  if (status === 408 || status >= 500)
    return { kind: "retryable", status, error: truncate(`${status} from Lago: ${bodyText}`) };
  return { kind: "invalid", status, error: truncate(`${status} from Lago: ${bodyText}`) };
}
