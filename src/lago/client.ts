import { Pool, errors as undiciErrors } from "undici";

/** What one POST /api/v1/events/batch came to, classified for the delivery worker. */
export type BatchOutcome =
  | { kind: "ok"; status: number }
  /** 422: index-keyed error_details; nothing was stored by Lago. */
  | { kind: "rejected"; status: number; details: Record<string, unknown> }
  /** limit: Lago's X-RateLimit-Limit (requests per window), when it said. */
  | { kind: "rate_limited"; status: number; resetSeconds: number; limit: number | null }
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
  properties: Record<string, unknown>;
  precise_total_amount_cents?: string;
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

  /** One request; the body is always consumed. Throws only on network errors and timeouts. */
  async request(method: "GET" | "POST" | "PUT", path: string, body?: unknown): Promise<LagoResponse> {
    const res = await this.#pool.request({
      method,
      path,
      headers: {
        authorization: this.#auth,
        accept: "application/json",
        ...(body === undefined ? {} : { "content-type": "application/json" }),
      },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
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
      res = await this.request("POST", "/api/v1/events/batch", { events });
    } catch (err) {
      return { kind: "retryable", status: null, error: errorSummary(err) };
    }
    return classify(res);
  }

  close(): Promise<void> {
    return this.#pool.close();
  }
}

/** Maps a Lago answer to what the worker must do with the batch. */
export function classify(res: LagoResponse): BatchOutcome {
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
    const header = (name: string) => {
      const raw = res.headers[name];
      const n = Number(Array.isArray(raw) ? raw[0] : raw);
      return Number.isFinite(n) && n > 0 ? n : null;
    };
    return {
      kind: "rate_limited",
      status,
      resetSeconds: header("x-ratelimit-reset") ?? 1,
      limit: header("x-ratelimit-limit"),
    };
  }
  if (status === 401 || status === 403) {
    return { kind: "auth", status, error: truncate(`${status} from Lago: ${bodyText}`) };
  }
  if (status === 408 || status >= 500)
    return { kind: "retryable", status, error: truncate(`${status} from Lago: ${bodyText}`) };
  return { kind: "invalid", status, error: truncate(`${status} from Lago: ${bodyText}`) };
}
