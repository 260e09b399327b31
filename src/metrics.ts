import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from "prom-client";

/** Prometheus metrics of one process (prefix `lago_billing_`, base units, no customer labels). */
export interface Metrics {
  registry: Registry;
  ingested: Counter<"outcome" | "source">;
  httpSeconds: Histogram<"route" | "status_class">;
  databaseErrors: Counter<"where">;
  delivered: Counter<"duplicate">;
  parked: Counter<"state">;
  rateLimited: Counter;
  requestSeconds: Histogram<"status_class">;
  lagSeconds: Histogram;
  backlog: Gauge<"state">;
  oldestPendingSeconds: Gauge;
  sinkState: Gauge<"state">;
  lastSuccess: Gauge;
  batchSize: Gauge;
  /** Parked events now by state and reason class (set at scrape, src/operations/monitoring.ts). */
  parkedNow: Gauge<"state" | "reason">;
  /** The latest periodic drift check (drift_checks, set at scrape; the same on every replica). */
  driftUnexplained: Gauge;
  driftCalls: Gauge<"kind" | "explained">;
  driftWindowCalls: Gauge<"source">;
  driftSpendlogsAvailable: Gauge;
  driftLastCheck: Gauge;
  driftCheckDuration: Gauge;
  driftCheckInterval: Gauge;
  /** Drift checks this process ran. */
  driftChecks: Counter<"outcome">;
}

/** "2xx", "4xx", "429", "5xx", or "network" when no answer came. */
export function statusClass(status: number | null): string {
  if (status === null) return "network";
  if (status === 429) return "429";
  return `${Math.floor(status / 100)}xx`;
}

export function createMetrics(): Metrics {
  const registry = new Registry();
  // process_* and nodejs_* (CPU, memory, event loop lag), unprefixed as every Node exporter has them.
  // The lag is sampled every 100 ms, not prom-client's 10: each sample is a timer wake-up of the
  // process, and at 100 a second they were most of an idle service's CPU (9 ms/s on the benchmark
  // VM, BENCHMARKS.md). A sample still measures how late it fired, so a blocked loop still shows.
  collectDefaultMetrics({ register: registry, eventLoopMonitoringPrecision: 100 });
  const p = "lago_billing_";
  return {
    registry,
    ingested: new Counter({
      name: `${p}usage_events_received_total`,
      help: "Usage events received, by outcome (accepted, duplicate, conflict, rejected) and source (api, litellm)",
      labelNames: ["outcome", "source"],
      registers: [registry],
    }),
    httpSeconds: new Histogram({
      name: `${p}http_request_duration_seconds`,
      help: "Duration of HTTP requests to the service, by route and status class",
      labelNames: ["route", "status_class"],
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
      registers: [registry],
    }),
    databaseErrors: new Counter({
      name: `${p}database_errors_total`,
      help: "Database errors, by where they happened (ingest, delivery, health)",
      labelNames: ["where"],
      registers: [registry],
    }),
    delivered: new Counter({
      name: `${p}lago_events_delivered_total`,
      help: "Outgoing events Lago has (duplicate=true: Lago already had it)",
      labelNames: ["duplicate"],
      registers: [registry],
    }),
    parked: new Counter({
      name: `${p}lago_events_parked_total`,
      help: "Outgoing events parked as failed or unbillable",
      labelNames: ["state"],
      registers: [registry],
    }),
    rateLimited: new Counter({
      name: `${p}lago_rate_limited_total`,
      help: "429 answers from Lago",
      registers: [registry],
    }),
    requestSeconds: new Histogram({
      name: `${p}lago_request_duration_seconds`,
      help: "Duration of POST /api/v1/events/batch by status class (2xx, 4xx, 429, 5xx, network)",
      labelNames: ["status_class"],
      buckets: [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers: [registry],
    }),
    lagSeconds: new Histogram({
      name: `${p}delivery_lag_seconds`,
      help: "From the call's start to Lago's acceptance",
      buckets: [0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 3600],
      registers: [registry],
    }),
    backlog: new Gauge({
      name: `${p}lago_events`,
      help: "Outgoing events by state (updated at scrape)",
      labelNames: ["state"],
      registers: [registry],
    }),
    oldestPendingSeconds: new Gauge({
      name: `${p}oldest_pending_age_seconds`,
      help: "Age of the oldest pending outgoing event",
      registers: [registry],
    }),
    sinkState: new Gauge({
      name: `${p}sink_state`,
      help: "1 for the current state of the Lago sink",
      labelNames: ["state"],
      registers: [registry],
    }),
    lastSuccess: new Gauge({
      name: `${p}last_success_timestamp_seconds`,
      help: "When Lago last accepted a batch",
      registers: [registry],
    }),
    batchSize: new Gauge({
      name: `${p}lago_batch_size`,
      help: "Events per POST /api/v1/events/batch now: LAGO_BATCH_SIZE, or less after Lago answered too_many_events",
      registers: [registry],
    }),
    parkedNow: new Gauge({
      name: `${p}lago_events_parked`,
      help: "Parked outgoing events now, by state (failed, unbillable) and reason (multiple_subscriptions, before_subscription_start, after_subscription_end, no_subscription, lago_rejected, max_attempts, max_age, other)",
      labelNames: ["state", "reason"],
      registers: [registry],
    }),
    driftUnexplained: new Gauge({
      name: `${p}drift_unexplained_calls`,
      help: "Calls with a difference nothing explains between SpendLogs, the ledger and Lago, in the last drift check's window",
      registers: [registry],
    }),
    driftCalls: new Gauge({
      name: `${p}drift_calls`,
      help: "Calls per difference kind in the last drift check's window (explained=true: in progress or by design)",
      labelNames: ["kind", "explained"],
      registers: [registry],
    }),
    driftWindowCalls: new Gauge({
      name: `${p}drift_window_calls`,
      help: "Calls each source holds in the last drift check's window (spendlogs, ledger, delivered)",
      labelNames: ["source"],
      registers: [registry],
    }),
    driftSpendlogsAvailable: new Gauge({
      name: `${p}drift_spendlogs_available`,
      help: "1 when the last drift check could read LiteLLM's SpendLogs, 0 when it compared the ledger and Lago only",
      registers: [registry],
    }),
    driftLastCheck: new Gauge({
      name: `${p}drift_last_check_timestamp_seconds`,
      help: "When the last drift check completed (0: none yet)",
      registers: [registry],
    }),
    driftCheckDuration: new Gauge({
      name: `${p}drift_check_duration_seconds`,
      help: "How long the last completed drift check took",
      registers: [registry],
    }),
    driftCheckInterval: new Gauge({
      name: `${p}drift_check_interval_seconds`,
      help: "DRIFT_CHECK_INTERVAL_SECONDS (0: the periodic drift check is off)",
      registers: [registry],
    }),
    driftChecks: new Counter({
      name: `${p}drift_checks_total`,
      help: "Periodic drift checks this process ran, by outcome (ok, error)",
      labelNames: ["outcome"],
      registers: [registry],
    }),
  };
}

/** Metrics of prepaid credits and limits (src/entitlements/): gauges read at scrape, counters as things happen. */
export interface EntitlementMetrics {
  /** Tracked customers by state (set at scrape from PostgreSQL). */
  customers: Gauge<"state">;
  /** Blocked customers by reason (set at scrape). */
  blocked: Gauge<"reason">;
  /** Changes of decision, by the new state, reason and what caused them. */
  decisions: Counter<"state" | "reason" | "source">;
  /** Lago webhooks received, by type (unknown types as "unknown") and outcome. */
  webhooks: Counter<"type" | "outcome">;
  /** Refreshes of a customer from Lago's API. */
  refreshes: Counter<"outcome">;
  /** 429 answers to the refresh's reads (each pauses them as Lago asks). */
  lagoRateLimited: Counter;
  /** Seconds since the oldest complete Lago refresh among customers with a wallet, a limit or a block. */
  oldestRefreshAge: Gauge;
  /** Seconds since the engine's leader last published to Redis (decisions or the heartbeat's meta). */
  publishAge: Gauge;
  /** Calls the proxies rejected (enforce) or would have (observe), by reason: their totals in Redis. */
  proxyRejections: Gauge<"mode" | "reason">;
  /** The oldest cache among proxies that polled in the last minute: how old the data they decide on is. */
  proxyCacheAge: Gauge;
  /** Proxies (seen in the last minute) that cannot read Redis or see no heartbeat, applying ENFORCEMENT_FAIL_MODE. */
  proxiesUnavailable: Gauge;
}

/**
 * `collect` sets the entitlement gauges from PostgreSQL and Redis at each scrape. prom-client reads
 * the metrics of a registry concurrently, so every gauge awaits the same run of it.
 */
export function createEntitlementMetrics(
  registry: Registry,
  collect: () => Promise<void> = async () => {},
): EntitlementMetrics {
  const p = "lago_billing_entitlement_";
  let run: Promise<void> | null = null;
  let ranAt = 0;
  const once = (): Promise<void> => {
    if (!run || Date.now() - ranAt > 250) {
      ranAt = Date.now();
      run = collect().catch(() => undefined);
    }
    return run;
  };
  const m: EntitlementMetrics = {
    customers: new Gauge({
      name: `${p}customers`,
      help: "Customers tracked for entitlements, by state (allowed, blocked)",
      labelNames: ["state"],
      registers: [registry],
      collect: once,
    }),
    blocked: new Gauge({
      name: `${p}blocked_customers`,
      help: "Blocked customers by reason",
      labelNames: ["reason"],
      registers: [registry],
      collect: once,
    }),
    decisions: new Counter({
      name: `${p}decisions_total`,
      help: "Changes of a customer's entitlement, by new state, reason and source (ledger, refresh, webhook, manual, engine)",
      labelNames: ["state", "reason", "source"],
      registers: [registry],
    }),
    webhooks: new Counter({
      name: "lago_billing_lago_webhooks_received_total",
      help: "Lago webhooks received at POST /webhooks/lago, by type and outcome (applied, stale, refresh, ignored, unknown, unmatched, duplicate, bad_signature, invalid)",
      labelNames: ["type", "outcome"],
      registers: [registry],
    }),
    refreshes: new Counter({
      name: `${p}refreshes_total`,
      help: "Refreshes of a customer from Lago's API, by outcome (ok, error, rate_limited)",
      labelNames: ["outcome"],
      registers: [registry],
    }),
    lagoRateLimited: new Counter({
      name: `${p}lago_rate_limited_total`,
      help: "429 answers from Lago to the entitlement refresh's reads (each pauses them as Lago asks)",
      registers: [registry],
    }),
    oldestRefreshAge: new Gauge({
      name: `${p}oldest_refresh_age_seconds`,
      help: "Age of the oldest complete Lago refresh among customers with a wallet, a limit or a block",
      registers: [registry],
      collect: once,
    }),
    publishAge: new Gauge({
      name: `${p}publish_age_seconds`,
      help: "Seconds since this process (as the engine's leader) last published decisions to Redis; absent when not leading",
      registers: [registry],
      collect: once,
    }),
    proxyRejections: new Gauge({
      name: `${p}proxy_rejections`,
      help: "Calls the proxies rejected (mode=enforce) or would have rejected (mode=observe) since Redis was last emptied, by reason (totals read from Redis; the same on every replica)",
      labelNames: ["mode", "reason"],
      registers: [registry],
      collect: once,
    }),
    proxyCacheAge: new Gauge({
      name: `${p}proxy_cache_age_seconds`,
      help: "Decision age at the proxies: the oldest entitlement cache among proxies that polled Redis in the last minute",
      registers: [registry],
      collect: once,
    }),
    proxiesUnavailable: new Gauge({
      name: `${p}proxies_unavailable`,
      help: "Proxies that polled in the last minute but cannot read the entitlements (they apply ENFORCEMENT_FAIL_MODE)",
      registers: [registry],
      collect: once,
    }),
  };
  return m;
}
