import { Redis } from "ioredis";
import type { Logger } from "pino";
import { openPool, type Sql } from "./db/pool.ts";
import { Sink } from "./delivery/sink.ts";
import { DeliveryWorker } from "./delivery/worker.ts";
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
  const worker =
    opts.worker && lago
      ? new DeliveryWorker({
          sql,
          client: lago.client,
          resolver: lago.resolver,
          sink,
          log: log.child({ component: "delivery" }),
          metrics,
          batchSize: settings.lago.batchSize,
          // Must outlast a batch's requests (timeouts included); a crashed worker's claim returns after it.
          leaseSeconds: Math.max(
            settings.lago.leaseSeconds,
            Math.ceil((settings.lago.requestTimeoutMs * 2) / 1000),
          ),
          concurrency: settings.lago.concurrency,
          rateLimitRps: settings.lago.rateLimitRps,
          retry: {
            baseMs: settings.lago.retryBaseMs,
            maxMs: settings.lago.retryMaxMs,
            maxAttempts: settings.lago.maxAttempts,
            maxAgeHours: settings.lago.maxEventAgeHours,
          },
        })
      : null;
  let notifyTimer: NodeJS.Timeout | null = null;
  const notify = () => {
    worker?.wake();
    if (notifyTimer) return;
    notifyTimer = setTimeout(() => {
      notifyTimer = null;
      sql`SELECT pg_notify('lago_events', '')`.catch(() => undefined);
    }, 20);
  };
  const ledger = new Ledger(sql, {
    writers: 4,
    mapEvents: (r) => toLagoEvents(r, settings.lago),
    onCommitted: notify,
    log: log.child({ component: "ledger" }),
  });
  const prices = new PriceBook(loadConfiguredModels(settings.litellmConfigPath));
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
    async close() {
      await worker?.stop();
      if (notifyTimer) clearTimeout(notifyTimer);
      await lago?.client.close();
      redis?.disconnect();
      await sql.end({ timeout: 5 });
    },
  };
}
