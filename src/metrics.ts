import { Counter, Gauge, Histogram, Registry } from "prom-client";

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
}

/** "2xx", "4xx", "429", "5xx", or "network" when no answer came. */
export function statusClass(status: number | null): string {
  if (status === null) return "network";
  if (status === 429) return "429";
  return `${Math.floor(status / 100)}xx`;
}

export function createMetrics(): Metrics {
  const registry = new Registry();
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
  };
}
