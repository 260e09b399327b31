/**
 * LagoDouble: an in-process HTTP server that behaves like Lago's REST API, for tests and benchmarks.
 *
 * It enforces the contract written down in shared/reference/lago-api.md (events endpoints, batch
 * limits, all-or-nothing batches, index-keyed 422s, (external_subscription_id, transaction_id)
 * dedupe forever with NULL subscriptions never deduplicated, Unix-seconds timestamps, 401/403/429)
 * and adds fault injection and inspection helpers.
 *
 * Like real Lago, events for an unknown (or missing) subscription, an unknown metric code, or a
 * timestamp outside every span of the subscription (before started_at, after terminated_at) get 200
 * and are silently unbilled: use unbilledEvents() (or eventsWithUnknownSubscription() /
 * eventsWithUnknownCode()) to assert that a sender never sent blind.
 *
 * Configurable to each real mode of Lago (each named after the Lago source it follows, see
 * test/unit/lago-double.test.ts):
 *   eventStore "postgres" (default): duplicates are 422 value_already_exist, reported only when every
 *     event of the batch is valid (app/services/events/create_batch_service.rb checks them in the insert);
 *   eventStore "clickhouse": nothing is checked on arrival, duplicates get 200 and are stored again;
 *     billedEvents() dedupes at query time on (code, subscription, transaction_id, timestamp);
 *   batchMax: LAGO_EVENTS_BATCH_MAX_LENGTH (too_many_events above it);
 *   subscriptions with status, started_at, terminated_at; GET /subscriptions/:id finds only active
 *     ones unless ?status= says otherwise (app/controllers/api/v1/subscriptions_controller.rb);
 *   rateLimitHeaders "cloud" (X-RateLimit-Reset in seconds), "none" (self-hosted: a bare 429),
 *     "epoch" (a proxy's X-RateLimit-Reset as a Unix time), "retry-after" (a proxy's Retry-After);
 *   loseResponses(n): the next n event requests are processed and stored, then the connection is
 *     dropped before the answer (a sender must resend, and must not double-bill).
 *
 * Standalone:
 *   node test/support/lago-double.ts --port 0 --api-key K --latency-ms 20 --rate-limit 500 --batch-max 100
 * prints one line `{"url":"http://127.0.0.1:PORT"}` once listening. Control API (no auth):
 *   POST /__control {mode?, latencyMs?, rateLimitPerSecond?, apiKey?, forbid?, batchMax?, eventStore?,
 *                    rateLimitHeaders?, failNext?: {n, status}, loseResponses?: n, reset?: true,
 *                    resetEntities?: true}
 *   GET  /__stats   counters (see LagoDouble.stats())
 *   GET  /__events  all stored events
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
import { LagoPrepaid } from "./lago-prepaid.ts";

export type LagoMode = "ok" | "error500" | "reset" | "hang";
/** Where a Lago organisation stores events: the default PostgreSQL store, or ClickHouse (high volume). */
export type EventStore = "postgres" | "clickhouse";
/** What a 429 carries: Lago Cloud's headers, none (self-hosted), or what a proxy in front may send. */
export type RateLimitHeaders = "cloud" | "none" | "epoch" | "retry-after";

export interface LagoDoubleOptions {
  port?: number;
  host?: string;
  apiKey?: string;
  latencyMs?: number;
  batchMax?: number;
  /** Requests per second accepted on the event ingestion endpoints; null/0/undefined = unlimited. */
  rateLimitPerSecond?: number | null;
  eventStore?: EventStore;
  rateLimitHeaders?: RateLimitHeaders;
}

export interface StoredEvent {
  lago_id: string;
  transaction_id: string;
  code: string;
  /** null when the event carried no external_subscription_id (Lago never bills or dedupes those). */
  external_subscription_id: string | null;
  /** Dropped by Lago since 2024; kept here only for inspection (e.g. LiteLLM's built-in callback). */
  external_customer_id: string | null;
  /** Unix seconds (float). */
  timestamp: number;
  /** True when the event had no timestamp and the receive time was used (a retry would get a new one). */
  timestampDefaulted: boolean;
  precise_total_amount_cents: string | null;
  properties: Record<string, unknown>;
  endpoint: "batch" | "single";
  /** Date.now() when the request carrying this event was received. */
  receivedAt: number;
}

export interface RequestRecord {
  method: string;
  path: string;
  /** HTTP status answered; 0 when the socket was destroyed without an answer (reset mode). */
  status: number;
  /** Events in the request body (batch length, 1 for the single endpoint, 0 otherwise). */
  eventCount: number;
  receivedAt: number;
  durationMs: number;
}

export interface CustomerRecord {
  lago_id: string;
  external_id: string;
  name: string | null;
  currency: string | null;
  created_at: string;
  [key: string]: unknown;
}

export interface SubscriptionRecord {
  lago_id: string;
  external_id: string;
  external_customer_id: string;
  lago_customer_id: string;
  plan_code: string;
  name: string | null;
  status: "active" | "pending" | "terminated" | "canceled";
  billing_time: string;
  subscription_at: string;
  started_at: string | null;
  terminated_at: string | null;
  canceled_at: string | null;
  ending_at: string | null;
  created_at: string;
}

export interface BillableMetricRecord {
  lago_id: string;
  name: string;
  code: string;
  description: string | null;
  aggregation_type: string;
  field_name: string | null;
  recurring: boolean;
  weighted_interval: string | null;
  expression: string | null;
  filters: Array<{ key: string; values: string[] }>;
  created_at: string;
  [key: string]: unknown;
}

export interface PlanRecord {
  lago_id: string;
  name: string;
  code: string;
  interval: string;
  amount_cents: number;
  amount_currency: string;
  charges: Array<Record<string, unknown>>;
  created_at: string;
  [key: string]: unknown;
}

export interface LagoStats {
  mode: LagoMode;
  eventStore: EventStore;
  batchMax: number;
  latencyMs: number;
  rateLimitPerSecond: number | null;
  forbidden: boolean;
  failNextRemaining: number;
  eventCount: number;
  requestCount: number;
  batchRequests: number;
  singleRequests: number;
  accepted200: number;
  rejected422: number;
  rejected401: number;
  rejected403: number;
  count429: number;
  injectedFailures: number;
  resets: number;
  /** (subscription, transaction_id) keys stored more than once: only possible with a NULL subscription. */
  duplicatesStored: number;
  /** transaction_ids accepted (stored) more than once under any subscription/timestamp: 0 when exactly-once holds. */
  acceptedTwice: number;
  eventsWithUnknownSubscription: number;
  eventsWithoutSubscription: number;
  /** Stored events Lago would never bill: no (matching) subscription span, or an unknown code. */
  unbilled: number;
  responsesLost: number;
}

type Json = Record<string, unknown>;
type ErrorMap = Record<string, unknown>;

const METRIC_AGGREGATIONS = new Set([
  "count_agg",
  "sum_agg",
  "max_agg",
  "unique_count_agg",
  "weighted_sum_agg",
  "latest_agg",
  "custom_agg",
]);
const FIELD_REQUIRED_AGGREGATIONS = new Set([
  "sum_agg",
  "max_agg",
  "unique_count_agg",
  "weighted_sum_agg",
  "latest_agg",
]);
const NUMERIC_STRING = /^\s*[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?\s*$/;
const DECIMAL_STRING = /^\s*[+-]?(?:\d+(?:\.\d*)?|\.\d+)\s*$/;
const EVENT_PATHS = new Set(["/api/v1/events", "/api/v1/events/batch"]);

class HttpError extends Error {
  readonly status: number;
  readonly body: Json;
  readonly headers: Record<string, string> | undefined;
  constructor(status: number, body: Json, headers?: Record<string, string>) {
    super(`HTTP ${status}`);
    this.status = status;
    this.body = body;
    this.headers = headers;
  }
}

const notFound = (resource: string): HttpError =>
  new HttpError(404, { status: 404, error: "Not Found", code: `${resource}_not_found` });
const validationError = (details: ErrorMap): HttpError =>
  new HttpError(422, {
    status: 422,
    error: "Unprocessable Entity",
    code: "validation_errors",
    error_details: details,
  });
const badRequest = (message: string): HttpError =>
  new HttpError(400, { status: 400, error: "BadRequest", message });

function isObject(v: unknown): v is Json {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function isBlank(v: unknown): boolean {
  return v === undefined || v === null || (typeof v === "string" && v.trim() === "");
}

/** Rails-style cast of a permitted scalar to string; non-scalars are dropped (null). */
function scalarToString(v: unknown): string | null {
  if (typeof v === "string") return v;
  if (typeof v === "number" && Number.isFinite(v)) return String(v);
  return null;
}

function isoSeconds(tsSeconds: number): string {
  const d = new Date(tsSeconds * 1000);
  return Number.isNaN(d.getTime()) ? String(tsSeconds) : d.toISOString();
}

function nowIso(): string {
  return new Date().toISOString().replace(/\.\d{3}Z$/, "Z");
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

interface PreparedEvent {
  event: StoredEvent;
  dedupeKey: string | null;
}

export class LagoDouble {
  readonly url: string;
  readonly port: number;

  apiKey: string;
  latencyMs: number;
  batchMax: number;
  rateLimitPerSecond: number | null;
  eventStore: EventStore;
  rateLimitHeaderStyle: RateLimitHeaders;

  /** Stored events, in acceptance order. */
  readonly events: StoredEvent[] = [];
  /** One record per answered (or reset) request. */
  readonly requests: RequestRecord[] = [];

  batchRequests = 0;
  singleRequests = 0;
  accepted200 = 0;
  rejected422 = 0;
  rejected401 = 0;
  rejected403 = 0;
  count429 = 0;
  injectedFailures = 0;
  resets = 0;
  responsesLost = 0;

  readonly customers = new Map<string, CustomerRecord>();
  /** The current subscription per external id: active or pending if there is one, else the latest. */
  readonly subscriptions = new Map<string, SubscriptionRecord>();
  /** Every subscription ever created, terminated ones included (an external id can be reused). */
  readonly allSubscriptions: SubscriptionRecord[] = [];
  readonly billableMetrics = new Map<string, BillableMetricRecord>();
  readonly plans = new Map<string, PlanRecord>();
  /** Wallets, alerts, current usage, the webhook key and outbound webhooks (test/support/lago-prepaid.ts). */
  readonly prepaid: LagoPrepaid = new LagoPrepaid(this);

  private readonly server: Server;
  private modeValue: LagoMode = "ok";
  private forbidden = false;
  private failNextCount = 0;
  private failNextStatus = 500;
  private loseNextCount = 0;
  private failNextHeaders: Record<string, string> | undefined;
  private windowStart = 0;
  private windowCount = 0;
  private closed = false;
  private readonly hangWaiters = new Set<() => void>();
  /** Dedupe index: `${subscription}\u0000${transaction_id}` for non-null subscriptions. */
  private readonly dedupe = new Set<string>();
  private readonly txCounts = new Map<string, number>();
  private readonly keyCounts = new Map<string, number>();
  private acceptedTwiceCount = 0;
  private duplicatesStoredCount = 0;

  private constructor(server: Server, url: string, port: number, opts: LagoDoubleOptions) {
    this.server = server;
    this.url = url;
    this.port = port;
    this.apiKey = opts.apiKey ?? "lago-test-key";
    this.latencyMs = opts.latencyMs ?? 0;
    this.batchMax = opts.batchMax ?? 100;
    this.rateLimitPerSecond = opts.rateLimitPerSecond ?? null;
    this.eventStore = opts.eventStore ?? "postgres";
    this.rateLimitHeaderStyle = opts.rateLimitHeaders ?? "cloud";
  }

  static async start(opts: LagoDoubleOptions = {}): Promise<LagoDouble> {
    const host = opts.host ?? "127.0.0.1";
    let self: LagoDouble | undefined;
    const server = createServer((req, res) => {
      if (!self) {
        res.writeHead(503).end();
        return;
      }
      self.handle(req, res).catch((err: unknown) => {
        if (!res.headersSent && !res.destroyed) {
          res.writeHead(500, { "content-type": "application/json" });
          res.end(JSON.stringify({ status: 500, error: "Internal Server Error", message: String(err) }));
        } else {
          res.destroy();
        }
      });
    });
    server.keepAliveTimeout = 65_000;
    server.headersTimeout = 66_000;
    server.requestTimeout = 0;
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(opts.port ?? 0, host, () => {
        server.off("error", reject);
        resolve();
      });
    });
    const port = (server.address() as AddressInfo).port;
    self = new LagoDouble(server, `http://${host}:${port}`, port, opts);
    return self;
  }

  // ---------------------------------------------------------------- runtime controls

  get mode(): LagoMode {
    return this.modeValue;
  }

  setMode(mode: LagoMode): void {
    this.modeValue = mode;
    if (mode !== "hang") this.releaseHung();
  }

  /**
   * The next `n` event requests (POST /api/v1/events[/batch]) answer `status` with a JSON body, and
   * `headers` when given (a 429 otherwise gets the rateLimitHeaders style's headers).
   */
  failNext(n: number, status = 500, headers?: Record<string, string>): void {
    this.failNextCount = n;
    this.failNextStatus = status;
    this.failNextHeaders = headers;
  }

  /**
   * The next `n` event requests are processed (and their events stored) as usual, then the connection
   * is destroyed before the answer is written: the sender sees a socket error and must resend.
   */
  loseResponses(n: number): void {
    this.loseNextCount = n;
  }

  setApiKey(key: string): void {
    this.apiKey = key;
  }

  /** forbid(true): event writes answer 403 write_action_not_allowed_for_event. */
  forbid(on = true): void {
    this.forbidden = on;
  }

  setRateLimit(perSecond: number | null): void {
    this.rateLimitPerSecond = perSecond;
    this.windowStart = 0;
    this.windowCount = 0;
  }

  // ---------------------------------------------------------------- inspection

  get eventCount(): number {
    return this.events.length;
  }

  /** transaction_id -> number of times stored (exactly-once: every value is 1). */
  countByTransaction(): Map<string, number> {
    return new Map(this.txCounts);
  }

  /** Stored events whose subscription is missing or not known to this double (real Lago: silently unbilled). */
  eventsWithUnknownSubscription(): StoredEvent[] {
    return this.events.filter(
      (e) => e.external_subscription_id === null || !this.subscriptions.has(e.external_subscription_id),
    );
  }

  /**
   * The subscription that bills an event, as Lago matches it (app/models/event.rb#subscription):
   * same external id, started_at <= timestamp, not terminated before it; the latest such one.
   */
  billingSubscription(
    e: Pick<StoredEvent, "external_subscription_id" | "timestamp">,
  ): SubscriptionRecord | undefined {
    if (e.external_subscription_id === null) return undefined;
    const t = Math.round(e.timestamp * 1000);
    return this.allSubscriptions
      .filter(
        (s) =>
          s.external_id === e.external_subscription_id &&
          s.started_at !== null &&
          Date.parse(s.started_at) <= t &&
          (s.terminated_at === null || Date.parse(s.terminated_at) >= t),
      )
      .sort((a, b) => Date.parse(b.started_at ?? "") - Date.parse(a.started_at ?? ""))[0];
  }

  /** Stored events Lago would never bill: unknown code, or no subscription span covering the timestamp. */
  unbilledEvents(): StoredEvent[] {
    return this.events.filter((e) => !this.billableMetrics.has(e.code) || !this.billingSubscription(e));
  }

  /**
   * The events Lago bills, after its query-time dedupe: with the ClickHouse store the same
   * (code, subscription, transaction_id) counts once only when the timestamp is the same too, so a
   * resend with another timestamp is billed twice (app/models/clickhouse/events_enriched... dedupe).
   */
  billedEvents(): StoredEvent[] {
    const seen = new Set<string>();
    const out: StoredEvent[] = [];
    for (const e of this.events) {
      if (!this.billableMetrics.has(e.code) || !this.billingSubscription(e)) continue;
      const key = `${e.code}\u0000${e.external_subscription_id}\u0000${e.transaction_id}\u0000${e.timestamp}`;
      if (seen.has(key)) continue;
      seen.add(key);
      out.push(e);
    }
    return out;
  }

  /** Stored events whose code matches no billable metric (real Lago: silently unbilled). */
  eventsWithUnknownCode(): StoredEvent[] {
    return this.events.filter((e) => !this.billableMetrics.has(e.code));
  }

  stats(): LagoStats {
    let withoutSub = 0;
    let unknownSub = 0;
    for (const e of this.events) {
      if (e.external_subscription_id === null) {
        withoutSub++;
        unknownSub++;
      } else if (!this.subscriptions.has(e.external_subscription_id)) unknownSub++;
    }
    return {
      mode: this.modeValue,
      eventStore: this.eventStore,
      batchMax: this.batchMax,
      latencyMs: this.latencyMs,
      rateLimitPerSecond: this.rateLimitPerSecond,
      forbidden: this.forbidden,
      failNextRemaining: this.failNextCount,
      eventCount: this.events.length,
      requestCount: this.requests.length,
      batchRequests: this.batchRequests,
      singleRequests: this.singleRequests,
      accepted200: this.accepted200,
      rejected422: this.rejected422,
      rejected401: this.rejected401,
      rejected403: this.rejected403,
      count429: this.count429,
      injectedFailures: this.injectedFailures,
      resets: this.resets,
      duplicatesStored: this.duplicatesStoredCount,
      acceptedTwice: this.acceptedTwiceCount,
      eventsWithUnknownSubscription: unknownSub,
      eventsWithoutSubscription: withoutSub,
      unbilled: this.unbilledEvents().length,
      responsesLost: this.responsesLost,
    };
  }

  /**
   * Clears stored events, request log, counters, dedupe state and injected faults (mode -> ok,
   * failNext, forbid). Keeps configuration (apiKey, latencyMs, batchMax, rateLimitPerSecond).
   * Customers, subscriptions, metrics and plans are kept unless `entities: true`.
   */
  reset(opts: { entities?: boolean } = {}): void {
    this.events.length = 0;
    this.requests.length = 0;
    this.batchRequests = 0;
    this.singleRequests = 0;
    this.accepted200 = 0;
    this.rejected422 = 0;
    this.rejected401 = 0;
    this.rejected403 = 0;
    this.count429 = 0;
    this.injectedFailures = 0;
    this.resets = 0;
    this.responsesLost = 0;
    this.loseNextCount = 0;
    this.dedupe.clear();
    this.txCounts.clear();
    this.keyCounts.clear();
    this.acceptedTwiceCount = 0;
    this.duplicatesStoredCount = 0;
    this.failNextCount = 0;
    this.forbidden = false;
    this.windowStart = 0;
    this.windowCount = 0;
    this.setMode("ok");
    if (opts.entities) {
      this.customers.clear();
      this.subscriptions.clear();
      this.allSubscriptions.length = 0;
      this.billableMetrics.clear();
      this.plans.clear();
      this.prepaid.reset();
    }
  }

  // ---------------------------------------------------------------- test helpers (no HTTP)

  /**
   * Creates (or returns) a subscription; creates the customer and the plan if missing. Active since
   * 1970 unless `subscriptionAt` says otherwise (in the future: pending, as Lago does).
   */
  addSubscription(
    externalId: string,
    customerId: string,
    planCode = "default-plan",
    opts: { subscriptionAt?: Date } = {},
  ): SubscriptionRecord {
    if (!this.plans.has(planCode)) {
      this.createPlan({
        name: planCode,
        code: planCode,
        interval: "monthly",
        amount_cents: 0,
        amount_currency: "USD",
      });
    }
    return this.createSubscription({
      external_id: externalId,
      external_customer_id: customerId,
      plan_code: planCode,
      subscription_at: (opts.subscriptionAt ?? new Date(0)).toISOString(),
    });
  }

  /** Marks the active (or pending) subscription terminated, as DELETE /api/v1/subscriptions/:id does. */
  terminateSubscription(externalId: string, at: Date = new Date()): SubscriptionRecord | undefined {
    const sub = this.findSubscription(externalId, ["active", "pending"]);
    if (sub) {
      if (sub.status === "pending") {
        sub.status = "canceled";
        sub.canceled_at = at.toISOString();
      } else {
        sub.status = "terminated";
        sub.terminated_at = at.toISOString();
      }
    }
    return sub;
  }

  /** Lago's clock activating a pending subscription (started_at = `at`, as mark_as_active! does). */
  activateSubscription(externalId: string, at: Date = new Date()): SubscriptionRecord | undefined {
    const sub = this.findSubscription(externalId, ["pending"]);
    if (sub) {
      sub.status = "active";
      sub.started_at = at.toISOString();
    }
    return sub;
  }

  /** Like Lago's show: the given statuses, ordered terminated_at DESC NULLS FIRST, started_at DESC. */
  findSubscription(
    externalId: string,
    statuses: SubscriptionRecord["status"][],
  ): SubscriptionRecord | undefined {
    const time = (v: string | null) => (v === null ? Number.POSITIVE_INFINITY : Date.parse(v));
    return this.allSubscriptions
      .filter((s) => s.external_id === externalId && statuses.includes(s.status))
      .sort(
        (a, b) => time(b.terminated_at) - time(a.terminated_at) || time(b.started_at) - time(a.started_at),
      )[0];
  }

  /** Registers a sum_agg billable metric on field `tokens` (or returns the existing one). */
  addMetric(
    code: string,
    opts: {
      aggregationType?: string;
      fieldName?: string;
      filters?: Array<{ key: string; values: string[] }>;
    } = {},
  ): BillableMetricRecord {
    const existing = this.billableMetrics.get(code);
    if (existing) return existing;
    return this.createMetric({
      name: code,
      code,
      aggregation_type: opts.aggregationType ?? "sum_agg",
      field_name: opts.fieldName ?? "tokens",
      filters: opts.filters ?? [],
    });
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.releaseHung();
    await new Promise<void>((resolve) => {
      this.server.close(() => resolve());
      this.server.closeAllConnections();
    });
  }

  // ---------------------------------------------------------------- request handling

  private releaseHung(): void {
    const waiters = [...this.hangWaiters];
    this.hangWaiters.clear();
    for (const w of waiters) w();
  }

  private record(
    method: string,
    path: string,
    status: number,
    eventCount: number,
    t0: number,
    at: number,
  ): void {
    this.requests.push({
      method,
      path,
      status,
      eventCount,
      receivedAt: at,
      durationMs: performance.now() - t0,
    });
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const t0 = performance.now();
    const receivedAt = Date.now();
    const method = req.method ?? "GET";
    const parsedUrl = new URL(req.url ?? "/", "http://localhost");
    let path = parsedUrl.pathname.replace(/\/{2,}/g, "/");
    if (path.length > 1 && path.endsWith("/")) path = path.slice(0, -1);

    const raw = await readBody(req);

    if (path.startsWith("/__")) {
      this.handleControl(method, path, raw, res);
      return;
    }

    // Whole-server faults (an outage affects every endpoint, /health included).
    for (;;) {
      if (this.closed) {
        res.destroy();
        return;
      }
      if (this.modeValue === "reset") {
        this.resets++;
        this.record(method, path, 0, 0, t0, receivedAt);
        req.socket.destroy();
        return;
      }
      if (this.modeValue !== "hang") break;
      await new Promise<void>((resolve) => this.hangWaiters.add(resolve));
    }
    if (this.latencyMs > 0) await sleep(this.latencyMs);
    if (this.closed) {
      res.destroy();
      return;
    }

    let status: number;
    let body: Json;
    let headers: Record<string, string> = {};
    let eventCount = 0;
    try {
      if (this.modeValue === "error500") {
        throw new HttpError(500, { status: 500, error: "Internal Server Error" });
      }
      const json = raw.length > 0 ? parseJson(raw) : undefined;
      if (method === "POST" && EVENT_PATHS.has(path)) {
        eventCount = path === "/api/v1/events/batch" ? batchLength(json) : 1;
      }
      const out = this.route(method, path, parsedUrl.searchParams, req, json, receivedAt, eventCount);
      status = out.status;
      body = out.body;
      if (out.headers) headers = out.headers;
    } catch (err) {
      if (!(err instanceof HttpError)) throw err;
      status = err.status;
      body = err.body;
      if (err.headers) headers = { ...err.headers };
      else if (status === 429) headers = this.rateLimitHeaders(0);
    }
    if (status === 429) this.count429++;
    else if (status === 401) this.rejected401++;
    else if (method === "POST" && EVENT_PATHS.has(path)) {
      if (status === 422) this.rejected422++;
      else if (status === 403) this.rejected403++;
      else if (status === 200) this.accepted200++;
    }

    if (method === "POST" && EVENT_PATHS.has(path) && this.loseNextCount > 0) {
      // Processed (and stored, on success) but the answer never arrives.
      this.loseNextCount--;
      this.responsesLost++;
      this.record(method, path, 0, eventCount, t0, receivedAt);
      req.socket.destroy();
      return;
    }
    const payload = JSON.stringify(body);
    headers["content-type"] = "application/json; charset=utf-8";
    headers["content-length"] = String(Buffer.byteLength(payload));
    res.writeHead(status, headers);
    res.end(payload);
    this.record(method, path, status, eventCount, t0, receivedAt);
  }

  /** Headers of a 429 (or of an accepted request under a rate limit), in the configured style. */
  private rateLimitHeaders(remaining: number): Record<string, string> {
    const limit = this.rateLimitPerSecond ?? 0;
    const resetSeconds = Math.max(1, Math.ceil((this.windowStart + 1000 - Date.now()) / 1000));
    switch (this.rateLimitHeaderStyle) {
      case "none":
        return {};
      case "retry-after":
        return { "retry-after": String(resetSeconds) };
      case "epoch":
        return {
          "x-ratelimit-limit": String(limit),
          "x-ratelimit-remaining": String(remaining),
          "x-ratelimit-reset": String(Math.ceil(Date.now() / 1000) + resetSeconds),
        };
      case "cloud":
        return {
          "x-ratelimit-limit": String(limit),
          "x-ratelimit-remaining": String(remaining),
          "x-ratelimit-reset": String(resetSeconds),
        };
    }
  }

  private route(
    method: string,
    path: string,
    query: URLSearchParams,
    req: IncomingMessage,
    json: unknown,
    receivedAt: number,
    eventCount: number,
  ): { status: number; body: Json; headers?: Record<string, string> } {
    if (path === "/health" && method === "GET") {
      return { status: 200, body: { version: "lago-double", message: "Success" } };
    }
    if (!path.startsWith("/api/v1/") && path !== "/api/v1") {
      throw new HttpError(404, { status: 404, error: "Not Found" });
    }

    const isEventWrite = method === "POST" && EVENT_PATHS.has(path);

    // Injected infrastructure failures (load balancer / upstream errors) hit before auth.
    if (isEventWrite && this.failNextCount > 0) {
      this.failNextCount--;
      this.injectedFailures++;
      const s = this.failNextStatus;
      throw new HttpError(s, { status: s, error: STATUS_CODES[s] ?? "Error" }, this.failNextHeaders);
    }

    const auth = req.headers.authorization;
    const m = typeof auth === "string" ? /^Bearer\s+(.+)$/i.exec(auth.trim()) : null;
    if (!m || m[1] !== this.apiKey) {
      throw new HttpError(401, { status: 401, error: "Unauthorized" });
    }

    let rlHeaders: Record<string, string> | undefined;
    if (isEventWrite) {
      const limit = this.rateLimitPerSecond;
      if (limit && limit > 0) {
        const now = Date.now();
        if (now - this.windowStart >= 1000) {
          this.windowStart = now;
          this.windowCount = 0;
        }
        if (this.windowCount >= limit) {
          throw new HttpError(429, { status: 429, error: "Too Many Requests" });
        }
        this.windowCount++;
        rlHeaders = this.rateLimitHeaders(limit - this.windowCount);
      }
      if (this.forbidden) {
        throw new HttpError(403, {
          status: 403,
          error: "Forbidden",
          code: "write_action_not_allowed_for_event",
        });
      }
      if (path === "/api/v1/events/batch") {
        this.batchRequests++;
        return { status: 200, body: this.ingestBatch(json, receivedAt, eventCount), headers: rlHeaders };
      }
      this.singleRequests++;
      return { status: 200, body: this.ingestSingle(json, receivedAt), headers: rlHeaders };
    }

    const prepaid = this.prepaid.route(method, path.split("/").slice(3), query, json);
    if (prepaid) {
      if (prepaid.status >= 400) throw new HttpError(prepaid.status, prepaid.body, prepaid.headers);
      return prepaid;
    }
    return { status: 200, body: this.routeResources(method, path, query, json) };
  }

  // ---------------------------------------------------------------- events

  private prepareEvent(
    raw: unknown,
    receivedAt: number,
    endpoint: "batch" | "single",
  ): { ok: PreparedEvent } | { errors: ErrorMap } {
    const p: Json = isObject(raw) ? raw : {};
    const errors: ErrorMap = {};

    // Timestamp: Lago does Float(timestamp) and rescues ArgumentError into invalid_format, replacing
    // any other error for that event.
    let timestamp: number;
    let timestampDefaulted = false;
    const ts = p.timestamp;
    if (ts === undefined || ts === null) {
      timestamp = receivedAt / 1000;
      timestampDefaulted = true;
    } else if (typeof ts === "number" && Number.isFinite(ts)) {
      timestamp = ts;
    } else if (typeof ts === "string" && NUMERIC_STRING.test(ts)) {
      timestamp = Number.parseFloat(ts);
    } else {
      return { errors: { timestamp: ["invalid_format"] } };
    }

    const txRaw = p.transaction_id;
    const codeRaw = p.code;
    // Stricter than Lago (which casts numbers to strings): both must be JSON strings.
    if (isBlank(txRaw) || isObject(txRaw) || Array.isArray(txRaw))
      errors.transaction_id = ["value_is_mandatory"];
    else if (typeof txRaw !== "string") errors.transaction_id = ["invalid_type"];
    if (isBlank(codeRaw) || isObject(codeRaw) || Array.isArray(codeRaw)) errors.code = ["value_is_mandatory"];
    else if (typeof codeRaw !== "string") errors.code = ["invalid_type"];

    let precise: string | null = null;
    const pc = p.precise_total_amount_cents;
    if (pc !== undefined && pc !== null) {
      if (typeof pc === "string" && DECIMAL_STRING.test(pc)) precise = pc.trim();
      else errors.precise_total_amount_cents = ["invalid_value"];
    }

    if (Object.keys(errors).length > 0) return { errors };

    const sub = isBlank(p.external_subscription_id) ? null : scalarToString(p.external_subscription_id);
    const cust = isBlank(p.external_customer_id) ? null : scalarToString(p.external_customer_id);
    const transactionId = txRaw as string;
    const event: StoredEvent = {
      lago_id: randomUUID(),
      transaction_id: transactionId,
      code: codeRaw as string,
      external_subscription_id: sub,
      external_customer_id: cust,
      timestamp,
      timestampDefaulted,
      precise_total_amount_cents: precise,
      properties: isObject(p.properties) ? p.properties : {},
      endpoint,
      receivedAt,
    };
    return { ok: { event, dedupeKey: sub === null ? null : `${sub}\u0000${transactionId}` } };
  }

  private store(prepared: PreparedEvent[]): void {
    for (const { event, dedupeKey } of prepared) {
      this.events.push(event);
      if (dedupeKey !== null) this.dedupe.add(dedupeKey);
      const tx = event.transaction_id;
      const n = (this.txCounts.get(tx) ?? 0) + 1;
      this.txCounts.set(tx, n);
      if (n === 2) this.acceptedTwiceCount++;
      const key = `${event.external_subscription_id ?? ""}\u0000${tx}`;
      const k = (this.keyCounts.get(key) ?? 0) + 1;
      this.keyCounts.set(key, k);
      if (k === 2) this.duplicatesStoredCount++;
    }
  }

  private serialize(e: StoredEvent): Json {
    const sub =
      e.external_subscription_id !== null ? this.subscriptions.get(e.external_subscription_id) : undefined;
    return {
      lago_id: e.lago_id,
      transaction_id: e.transaction_id,
      lago_customer_id: sub ? (this.customers.get(sub.external_customer_id)?.lago_id ?? null) : null,
      code: e.code,
      timestamp: isoSeconds(e.timestamp),
      precise_total_amount_cents: e.precise_total_amount_cents,
      properties: e.properties,
      lago_subscription_id: sub?.lago_id ?? null,
      external_subscription_id: e.external_subscription_id,
      created_at: new Date(e.receivedAt).toISOString(),
    };
  }

  private ingestBatch(json: unknown, receivedAt: number, count: number): Json {
    if (!isObject(json) || !("events" in json))
      throw badRequest("param is missing or the value is empty: events");
    const list = json.events;
    if (!Array.isArray(list) || count === 0) throw validationError({ events: ["no_events"] });
    if (count > this.batchMax) throw validationError({ events: ["too_many_events"] });

    // 1. Validation of every event (create_batch_service.rb#validate_events): any error answers 422
    //    with the validation errors only, before duplicates are looked at.
    const errors: ErrorMap = {};
    const prepared: PreparedEvent[] = [];
    for (let i = 0; i < list.length; i++) {
      const r = this.prepareEvent(list[i], receivedAt, "batch");
      if ("errors" in r) errors[String(i)] = r.errors;
      else prepared.push(r.ok);
    }
    if (Object.keys(errors).length > 0) throw validationError(errors);
    // 2. The insert (post_validate_events): with the PostgreSQL store the unique index
    //    (organization, external_subscription_id, transaction_id) refuses duplicates, later copies
    //    within the batch included, and the whole batch is rolled back. ClickHouse checks nothing.
    if (this.eventStore === "postgres") {
      const seen = new Set<string>();
      prepared.forEach(({ dedupeKey: key }, i) => {
        if (key === null) return;
        if (this.dedupe.has(key) || seen.has(key))
          errors[String(i)] = { transaction_id: ["value_already_exist"] };
        seen.add(key);
      });
      if (Object.keys(errors).length > 0) throw validationError(errors);
    }
    this.store(prepared);
    return { events: prepared.map((p) => this.serialize(p.event)) };
  }

  private ingestSingle(json: unknown, receivedAt: number): Json {
    if (!isObject(json) || !isObject(json.event))
      throw badRequest("param is missing or the value is empty: event");
    const r = this.prepareEvent(json.event, receivedAt, "single");
    if ("errors" in r) throw validationError(r.errors);
    if (this.eventStore === "postgres" && r.ok.dedupeKey !== null && this.dedupe.has(r.ok.dedupeKey)) {
      throw validationError({ transaction_id: ["value_already_exist"] });
    }
    this.store([r.ok]);
    return { event: this.serialize(r.ok.event) };
  }

  // ---------------------------------------------------------------- customers, subscriptions, metrics, plans

  private routeResources(method: string, path: string, query: URLSearchParams, json: unknown): Json {
    const parts = path.split("/").slice(3); // ["", "api", "v1", ...]
    const [resource, rawId, extra] = parts;
    const id = rawId === undefined ? undefined : decodeURIComponent(rawId);
    if (extra !== undefined) throw new HttpError(404, { status: 404, error: "Not Found" });

    switch (resource) {
      case "organizations":
        if (method === "GET" && id === undefined) return { organizations: [{ name: "Test org" }] };
        break;
      case "customers":
        if (method === "POST" && id === undefined) {
          return { customer: this.upsertCustomer(rootObject(json, "customer")) };
        }
        if (method === "GET" && id !== undefined) {
          const c = this.customers.get(id);
          if (!c) throw notFound("customer");
          return { customer: c };
        }
        if (method === "GET" && id === undefined) {
          const all = [...this.customers.values()];
          return { customers: all, meta: pageMeta(all.length, 1, all.length || 1) };
        }
        break;
      case "subscriptions":
        if (method === "POST" && id === undefined) {
          return { subscription: this.createSubscription(rootObject(json, "subscription")) };
        }
        if (method === "GET" && id !== undefined) {
          // Active only unless asked (subscriptions_controller.rb#show: status: params[:status] || :active).
          const status = (query.get("status") ?? "active") as SubscriptionRecord["status"];
          const s = this.findSubscription(id, [status]);
          if (!s) throw notFound("subscription");
          return { subscription: s };
        }
        if (method === "DELETE" && id !== undefined) {
          const s = this.terminateSubscription(id);
          if (!s) throw notFound("subscription");
          return { subscription: s };
        }
        if (method === "GET" && id === undefined) return this.listSubscriptions(query);
        break;
      case "billable_metrics":
        if (method === "POST" && id === undefined) {
          return { billable_metric: this.createMetric(rootObject(json, "billable_metric")) };
        }
        if (method === "GET" && id !== undefined) {
          const bm = this.billableMetrics.get(id);
          if (!bm) throw notFound("billable_metric");
          return { billable_metric: bm };
        }
        if (method === "PUT" && id !== undefined) {
          return { billable_metric: this.updateMetric(id, rootObject(json, "billable_metric")) };
        }
        if (method === "GET" && id === undefined) {
          const all = [...this.billableMetrics.values()];
          return { billable_metrics: all, meta: pageMeta(all.length, 1, all.length || 1) };
        }
        break;
      case "plans":
        if (method === "POST" && id === undefined) return { plan: this.createPlan(rootObject(json, "plan")) };
        if (method === "GET" && id !== undefined) {
          const p = this.plans.get(id);
          if (!p) throw notFound("plan");
          return { plan: p };
        }
        if (method === "PUT" && id !== undefined)
          return { plan: this.updatePlan(id, rootObject(json, "plan")) };
        if (method === "GET" && id === undefined) {
          const all = [...this.plans.values()];
          return { plans: all, meta: pageMeta(all.length, 1, all.length || 1) };
        }
        break;
    }
    throw new HttpError(404, { status: 404, error: "Not Found" });
  }

  private upsertCustomer(p: Json): CustomerRecord {
    const externalId = scalarToString(p.external_id);
    if (isBlank(externalId) || externalId === null)
      throw validationError({ external_id: ["value_is_mandatory"] });
    const existing = this.customers.get(externalId);
    const { lago_id: _l, created_at: _c, ...rest } = p;
    const customer: CustomerRecord = {
      ...(existing ?? {}),
      ...rest,
      lago_id: existing?.lago_id ?? randomUUID(),
      external_id: externalId,
      name: typeof p.name === "string" ? p.name : (existing?.name ?? null),
      currency: typeof p.currency === "string" ? p.currency : (existing?.currency ?? null),
      created_at: existing?.created_at ?? nowIso(),
    };
    this.customers.set(externalId, customer);
    return customer;
  }

  private createSubscription(p: Json): SubscriptionRecord {
    const externalCustomerId = scalarToString(p.external_customer_id);
    const planCode = scalarToString(p.plan_code);
    const errors: ErrorMap = {};
    if (isBlank(externalCustomerId)) errors.external_customer_id = ["value_is_mandatory"];
    if (isBlank(planCode)) errors.plan_code = ["value_is_mandatory"];
    if (Object.keys(errors).length > 0 || externalCustomerId === null || planCode === null) {
      throw validationError(errors);
    }
    const plan = this.plans.get(planCode);
    if (!plan) throw notFound("plan");
    const externalId = scalarToString(p.external_id) ?? randomUUID();

    const existing = this.findSubscription(externalId, ["active", "pending"]);
    if (existing) {
      if (existing.external_customer_id !== externalCustomerId) {
        throw validationError({ external_id: ["value_already_exist"] });
      }
      // Same external_id + plan: return the existing one (retry-safe). Another plan: plan change.
      if (existing.plan_code !== planCode) existing.plan_code = planCode;
      return existing;
    }

    const customer =
      this.customers.get(externalCustomerId) ?? this.upsertCustomer({ external_id: externalCustomerId });
    let subscriptionAt = nowIso();
    if (typeof p.subscription_at === "string") {
      const d = new Date(p.subscription_at);
      if (Number.isNaN(d.getTime())) throw validationError({ subscription_at: ["invalid_date"] });
      subscriptionAt = d.toISOString().replace(/\.\d{3}Z$/, "Z");
    }
    const pending = Date.parse(subscriptionAt) > Date.now();
    const sub: SubscriptionRecord = {
      lago_id: randomUUID(),
      external_id: externalId,
      external_customer_id: externalCustomerId,
      lago_customer_id: customer.lago_id,
      plan_code: planCode,
      name: typeof p.name === "string" ? p.name : null,
      status: pending ? "pending" : "active",
      billing_time: typeof p.billing_time === "string" ? p.billing_time : "calendar",
      subscription_at: subscriptionAt,
      started_at: pending ? null : subscriptionAt,
      terminated_at: null,
      canceled_at: null,
      ending_at: typeof p.ending_at === "string" ? p.ending_at : null,
      created_at: nowIso(),
    };
    this.subscriptions.set(externalId, sub);
    this.allSubscriptions.push(sub);
    return sub;
  }

  private listSubscriptions(query: URLSearchParams): Json {
    const customerId = query.get("external_customer_id");
    const planCode = query.get("plan_code");
    const statuses = [...query.getAll("status[]"), ...query.getAll("status")];
    const wanted = new Set(statuses.length > 0 ? statuses : ["active"]);
    const all = this.allSubscriptions.filter(
      (s) =>
        (customerId === null || s.external_customer_id === customerId) &&
        (planCode === null || s.plan_code === planCode) &&
        wanted.has(s.status),
    );
    const page = Math.max(1, Number.parseInt(query.get("page") ?? "1", 10) || 1);
    const perPage = Math.max(1, Number.parseInt(query.get("per_page") ?? "100", 10) || 100);
    const slice = all
      .slice((page - 1) * perPage, page * perPage)
      .map((s) => ({ ...s, ...this.prepaid.periodOf(s) }));
    return { subscriptions: slice, meta: pageMeta(all.length, page, perPage) };
  }

  private validateMetric(p: Json, partial: boolean): ErrorMap {
    const errors: ErrorMap = {};
    if (!partial || "name" in p) if (isBlank(p.name)) errors.name = ["value_is_mandatory"];
    if (!partial || "code" in p) if (isBlank(p.code)) errors.code = ["value_is_mandatory"];
    if (!partial || "aggregation_type" in p) {
      if (isBlank(p.aggregation_type)) errors.aggregation_type = ["value_is_mandatory"];
      else if (!METRIC_AGGREGATIONS.has(String(p.aggregation_type)))
        errors.aggregation_type = ["value_is_invalid"];
    }
    if (p.filters !== undefined && p.filters !== null) {
      const ok =
        Array.isArray(p.filters) &&
        p.filters.every(
          (f) =>
            isObject(f) &&
            typeof f.key === "string" &&
            Array.isArray(f.values) &&
            f.values.every((v) => typeof v === "string"),
        );
      if (!ok) errors.filters = ["invalid_format"];
    }
    return errors;
  }

  private createMetric(p: Json): BillableMetricRecord {
    const errors = this.validateMetric(p, false);
    const agg = String(p.aggregation_type ?? "");
    if (FIELD_REQUIRED_AGGREGATIONS.has(agg) && isBlank(p.field_name))
      errors.field_name = ["value_is_mandatory"];
    if (Object.keys(errors).length > 0) throw validationError(errors);
    const code = String(p.code);
    if (this.billableMetrics.has(code)) throw validationError({ code: ["value_already_exist"] });
    const { lago_id: _l, created_at: _c, ...rest } = p;
    const bm: BillableMetricRecord = {
      ...rest,
      lago_id: randomUUID(),
      name: String(p.name),
      code,
      description: typeof p.description === "string" ? p.description : null,
      aggregation_type: agg,
      field_name: typeof p.field_name === "string" ? p.field_name : null,
      recurring: p.recurring === true,
      weighted_interval: typeof p.weighted_interval === "string" ? p.weighted_interval : null,
      expression: typeof p.expression === "string" ? p.expression : null,
      filters: Array.isArray(p.filters) ? (p.filters as BillableMetricRecord["filters"]) : [],
      created_at: nowIso(),
    };
    this.billableMetrics.set(code, bm);
    return bm;
  }

  private updateMetric(code: string, p: Json): BillableMetricRecord {
    const existing = this.billableMetrics.get(code);
    if (!existing) throw notFound("billable_metric");
    const errors = this.validateMetric(p, true);
    if (Object.keys(errors).length > 0) throw validationError(errors);
    const newCode = typeof p.code === "string" ? p.code : code;
    if (newCode !== code && this.billableMetrics.has(newCode)) {
      throw validationError({ code: ["value_already_exist"] });
    }
    const { lago_id: _l, created_at: _c, ...rest } = p;
    const updated: BillableMetricRecord = { ...existing, ...rest, code: newCode } as BillableMetricRecord;
    this.billableMetrics.delete(code);
    this.billableMetrics.set(newCode, updated);
    return updated;
  }

  private normalizeCharges(raw: unknown): Array<Record<string, unknown>> {
    if (raw === undefined || raw === null) return [];
    if (!Array.isArray(raw)) throw validationError({ charges: ["invalid_format"] });
    return raw.map((c) => {
      if (!isObject(c)) throw validationError({ charges: ["invalid_format"] });
      const metricId = c.billable_metric_id;
      let metric: BillableMetricRecord | undefined;
      if (typeof metricId === "string") {
        for (const bm of this.billableMetrics.values()) {
          if (bm.lago_id === metricId) metric = bm;
        }
        if (!metric) throw notFound("billable_metric");
      }
      // Serialised as Lago does (app/serializers/v1/charge_serializer.rb): the input's
      // billable_metric_id comes back as lago_billable_metric_id, beside billable_metric_code.
      const { billable_metric_id: _input, ...rest } = c;
      return {
        ...rest,
        lago_id: typeof c.lago_id === "string" ? c.lago_id : randomUUID(),
        ...(metric ? { lago_billable_metric_id: metric.lago_id, billable_metric_code: metric.code } : {}),
      };
    });
  }

  private createPlan(p: Json): PlanRecord {
    const errors: ErrorMap = {};
    for (const k of ["name", "code", "interval", "amount_currency"]) {
      if (isBlank(p[k])) errors[k] = ["value_is_mandatory"];
    }
    if (typeof p.amount_cents !== "number" && !NUMERIC_STRING.test(String(p.amount_cents ?? ""))) {
      errors.amount_cents = ["value_is_mandatory"];
    }
    if (Object.keys(errors).length > 0) throw validationError(errors);
    const code = String(p.code);
    if (this.plans.has(code)) throw validationError({ code: ["value_already_exist"] });
    const { lago_id: _l, created_at: _c, ...rest } = p;
    const plan: PlanRecord = {
      ...rest,
      lago_id: randomUUID(),
      name: String(p.name),
      code,
      interval: String(p.interval),
      amount_cents: Number(p.amount_cents),
      amount_currency: String(p.amount_currency),
      charges: this.normalizeCharges(p.charges),
      created_at: nowIso(),
    };
    this.plans.set(code, plan);
    return plan;
  }

  private updatePlan(code: string, p: Json): PlanRecord {
    const existing = this.plans.get(code);
    if (!existing) throw notFound("plan");
    const newCode = typeof p.code === "string" ? p.code : code;
    if (newCode !== code && this.plans.has(newCode)) throw validationError({ code: ["value_already_exist"] });
    const { lago_id: _l, created_at: _c, charges, ...rest } = p;
    const updated: PlanRecord = {
      ...existing,
      ...rest,
      code: newCode,
      ...(charges !== undefined ? { charges: this.normalizeCharges(charges) } : {}),
    } as PlanRecord;
    if ("amount_cents" in p) updated.amount_cents = Number(p.amount_cents);
    this.plans.delete(code);
    this.plans.set(newCode, updated);
    for (const s of this.allSubscriptions) if (s.plan_code === code) s.plan_code = newCode;
    return updated;
  }

  // ---------------------------------------------------------------- control API (/__*)

  private handleControl(method: string, path: string, raw: Buffer, res: ServerResponse): void {
    let status: number;
    let body: unknown;
    try {
      [status, body] = this.control(method, path, raw);
    } catch (err) {
      [status, body] = err instanceof HttpError ? [err.status, err.body] : [500, { error: String(err) }];
    }
    const payload = JSON.stringify(body);
    res.writeHead(status, {
      "content-type": "application/json; charset=utf-8",
      "content-length": String(Buffer.byteLength(payload)),
    });
    res.end(payload);
  }

  private control(method: string, path: string, raw: Buffer): [number, unknown] {
    if (method === "GET" && path === "/__stats") return [200, this.stats()];
    if (method === "GET" && path === "/__events") return [200, { events: this.events }];
    if (method === "GET" && path === "/__requests") return [200, { requests: this.requests }];
    if (method !== "POST" || path !== "/__control") return [404, { error: "Not Found" }];
    const c = raw.length > 0 ? parseJson(raw) : {};
    if (!isObject(c)) return [400, { error: "expected a JSON object" }];
    if (
      c.mode !== undefined &&
      c.mode !== "ok" &&
      c.mode !== "error500" &&
      c.mode !== "reset" &&
      c.mode !== "hang"
    ) {
      return [400, { error: `unknown mode ${String(c.mode)}` }];
    }
    if (c.reset === true || c.resetEntities === true) this.reset({ entities: c.resetEntities === true });
    if (typeof c.latencyMs === "number") this.latencyMs = c.latencyMs;
    if (typeof c.batchMax === "number") this.batchMax = c.batchMax;
    if (c.eventStore === "postgres" || c.eventStore === "clickhouse") this.eventStore = c.eventStore;
    if (
      c.rateLimitHeaders === "cloud" ||
      c.rateLimitHeaders === "none" ||
      c.rateLimitHeaders === "epoch" ||
      c.rateLimitHeaders === "retry-after"
    )
      this.rateLimitHeaderStyle = c.rateLimitHeaders;
    if (typeof c.loseResponses === "number") this.loseResponses(c.loseResponses);
    if (c.rateLimitPerSecond === null || typeof c.rateLimitPerSecond === "number") {
      this.setRateLimit(c.rateLimitPerSecond || null);
    }
    if (typeof c.apiKey === "string") this.setApiKey(c.apiKey);
    if (typeof c.forbid === "boolean") this.forbid(c.forbid);
    if (isObject(c.failNext) && typeof c.failNext.n === "number") {
      this.failNext(c.failNext.n, typeof c.failNext.status === "number" ? c.failNext.status : 500);
    }
    if (c.mode !== undefined) this.setMode(c.mode as LagoMode);
    return [200, this.stats()];
  }
}

// ------------------------------------------------------------------ helpers

function readBody(req: IncomingMessage): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => resolve(chunks.length === 1 ? (chunks[0] as Buffer) : Buffer.concat(chunks)));
    req.on("error", reject);
  });
}

function parseJson(raw: Buffer): unknown {
  try {
    return JSON.parse(raw.toString("utf8"));
  } catch (err) {
    throw badRequest(`invalid JSON: ${(err as Error).message}`);
  }
}

function batchLength(json: unknown): number {
  return isObject(json) && Array.isArray(json.events) ? json.events.length : 0;
}

function rootObject(json: unknown, root: string): Json {
  if (!isObject(json) || !isObject(json[root]))
    throw badRequest(`param is missing or the value is empty: ${root}`);
  return json[root] as Json;
}

function pageMeta(total: number, page: number, perPage: number): Json {
  const totalPages = Math.max(1, Math.ceil(total / perPage));
  return {
    current_page: page,
    next_page: page < totalPages ? page + 1 : null,
    prev_page: page > 1 ? page - 1 : null,
    total_pages: totalPages,
    total_count: total,
  };
}

// ------------------------------------------------------------------ standalone

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      port: { type: "string", default: "0" },
      host: { type: "string", default: "127.0.0.1" },
      "api-key": { type: "string", default: "lago-test-key" },
      "latency-ms": { type: "string", default: "0" },
      "rate-limit": { type: "string" },
      "batch-max": { type: "string", default: "100" },
      "event-store": { type: "string", default: "postgres" },
      "rate-limit-headers": { type: "string", default: "cloud" },
    },
    strict: true,
  });
  const double = await LagoDouble.start({
    port: Number(values.port),
    host: values.host,
    apiKey: values["api-key"],
    latencyMs: Number(values["latency-ms"]),
    batchMax: Number(values["batch-max"]),
    rateLimitPerSecond: values["rate-limit"] ? Number(values["rate-limit"]) : null,
    eventStore: values["event-store"] as EventStore,
    rateLimitHeaders: values["rate-limit-headers"] as RateLimitHeaders,
  });
  process.stdout.write(`${JSON.stringify({ url: double.url })}\n`);
  const stop = (): void => {
    double.close().then(
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
