import { Redis } from "ioredis";
import type { Logger } from "pino";
import { openPool, type Sql } from "./db/pool.ts";
import { Sink } from "./delivery/sink.ts";
import { DeliveryWorker } from "./delivery/worker.ts";
import { createEntitlements, type Entitlements } from "./entitlements/runtime.ts";
import { Ledger } from "./ingest/store.ts";
import { LagoClient } from "./lago/client.ts";
import { toLagoEvents } from "./lago/mapping.ts";
import { SubscriptionResolver } from "./lago/subscriptions.ts";
import { createMetrics, type Metrics } from "./metrics.ts";
import { loadConfiguredModels, PriceBook } from "./pricing.ts";
import type { Settings } from "./settings.ts";

/** Everything the HTTP routes and the worker share in one process. */
export interface Service {
  settings: Settings;
  log: Logger;
  sql: Sql;
  ledger: Ledger;
  prices: PriceBook;
  metrics: Metrics;
  sink: Sink;
  lago: { client: LagoClient; resolver: SubscriptionResolver } | null;
  worker: DeliveryWorker | null;
  redis: Redis | null;
  /** Prepaid credits and limits: the engine (started by serve/worker) and the Lago webhook intake. */
  entitlements: Entitlements;
  close(): Promise<void>;
}

/**
 * Wires the parts together. NOTIFY after commits is coalesced: one per 20 ms at most, outside the
 * ingest transaction, because a NOTIFY inside it serialises every commit on a global lock.
 */
export function createService(settings: Settings, log: Logger, opts: { worker: boolean }): Service {
  const sql = openPool(settings.databaseUrl, { max: 20 });
  const metrics = createMetrics();
  const sink = new Sink({
    backoffCapMs: Math.min(5000, settings.lago.retryMaxMs),
    authPauseMs: Math.min(30_000, settings.lago.retryMaxMs),
    maxRateLimitPauseMs: settings.lago.rateLimitMaxPauseSeconds * 1000,
  });
  const redis = settings.redisUrl
    ? new Redis(settings.redisUrl, { lazyConnect: true, maxRetriesPerRequest: 1, enableOfflineQueue: false })
    : null;
  redis?.on("error", (err) =>
    log.debug({ err: err.message }, "redis unavailable; subscription cache is local"),
  );
  redis?.connect().catch(() => undefined);
  let lago: Service["lago"] = null;
  if (settings.lago.url && settings.lago.apiKey) {
    const client = new LagoClient({
      url: settings.lago.url,
      apiKey: settings.lago.apiKey,
      timeoutMs: settings.lago.requestTimeoutMs,
      connections: settings.lago.concurrency + 4,
    });
    const resolver = new SubscriptionResolver(client, {
      ttlSeconds: settings.lago.subscriptionCacheTtlSeconds,
      ...(redis ? { redis } : {}),
    });
    lago = { client, resolver };
  }
  // Delivery has a pool of its own: each batch in flight holds a connection for its transaction
  // (its events' row locks), and ingest must never wait behind them. A worker that hangs mid-batch
  // (not a crash: that closes the connection) loses its locks after the lease, ended by PostgreSQL.
  const leaseSeconds = Math.max(
    settings.lago.leaseSeconds,
    Math.ceil((settings.lago.requestTimeoutMs * 2) / 1000),
  );
  const deliverySql =
    opts.worker && lago
      ? openPool(settings.databaseUrl, {
          max: settings.lago.concurrency + 1,
          applicationName: "webhook-service-delivery",
          idleInTransactionTimeoutMs: leaseSeconds * 1000,
        })
      : null;
  const worker =
    deliverySql && lago
      ? new DeliveryWorker({
          sql: deliverySql,
          client: lago.client,
          resolver: lago.resolver,
          sink,
          log: log.child({ component: "delivery" }),
          metrics,
          batchSize: settings.lago.batchSize,
          concurrency: settings.lago.concurrency,
          rateLimitRps: settings.lago.rateLimitRps,
          lingerMs: settings.lago.lingerMs,
          retry: {
            baseMs: settings.lago.retryBaseMs,
            maxMs: settings.lago.retryMaxMs,
            maxAttempts: settings.lago.maxAttempts,
            maxAgeHours: settings.lago.maxEventAgeHours,
          },
        })
      : null;
  // Other processes' workers hear of commits by NOTIFY, coalesced to one per 20 ms at most. Without a
  // local worker it goes at once when none went out in the last 20 ms (no wait at low rates). A local
  // worker is woken directly; others are told only when it has no free slot (a statement per commit
  // saved at low rates), at the end of the 20 ms, carrying its id so that it ignores the echo.
  let notifyTimer: NodeJS.Timeout | null = null;
  let lastNotify = 0;
  const sendNotify = () => {
    notifyTimer = null;
    lastNotify = Date.now();
    sql`SELECT pg_notify('lago_events', ${worker?.id ?? ""})`.catch(() => undefined);
  };
  const notify = (events: number) => {
    worker?.wake(events);
    if (notifyTimer || (worker && !worker.saturated)) return;
    const wait = worker ? 20 : lastNotify + 20 - Date.now();
    if (wait <= 0) sendNotify();
    else notifyTimer = setTimeout(sendNotify, wait);
  };
  const ledger = new Ledger(sql, {
    writers: 4,
    mapEvents: (r) => toLagoEvents(r, settings.lago),
    onCommitted: notify,
    log: log.child({ component: "ledger" }),
  });
  const prices = new PriceBook(loadConfiguredModels(settings.litellmConfigPath));
  const entitlements = createEntitlements({
    sql,
    redis,
    client: lago?.client ?? null,
    settings,
    log,
    registry: metrics.registry,
  });
  return {
    settings,
    log,
    sql,
    ledger,
    prices,
    metrics,
    sink,
    lago,
    worker,
    redis,
    entitlements,
    async close() {
      await entitlements.engine.stop();
      await worker?.stop();
      if (notifyTimer) clearTimeout(notifyTimer);
      await lago?.client.close();
      redis?.disconnect();
      await deliverySql?.end({ timeout: 5 });
      await sql.end({ timeout: 5 });
    },
  };
}
