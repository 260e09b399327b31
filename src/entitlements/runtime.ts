import type { Redis } from "ioredis";
import type { Logger } from "pino";
import type { Registry } from "prom-client";
import type { Sql } from "../db/pool.ts";
import type { LagoClient } from "../lago/client.ts";
import { createEntitlementMetrics, type EntitlementMetrics } from "../metrics.ts";
import type { Settings } from "../settings.ts";
import { EntitlementEngine, STALE_AFTER_SECONDS } from "./engine.ts";
import { LagoWebhookIntake } from "./intake.ts";
import { LagoReader, RateLimiter } from "./lago-reader.ts";

/** The entitlement parts one process holds: the engine (leader or standby) and the webhook intake. */
export interface Entitlements {
  engine: EntitlementEngine;
  intake: LagoWebhookIntake;
  reader: LagoReader | null;
  metrics: EntitlementMetrics;
}

export function createEntitlements(deps: {
  sql: Sql;
  redis: Redis | null;
  client: LagoClient | null;
  settings: Settings;
  log: Logger;
  registry: Registry;
}): Entitlements {
  const { sql, redis, settings } = deps;
  const log = deps.log.child({ component: "entitlements" });
  let engine: EntitlementEngine | null = null;
  const metrics = createEntitlementMetrics(deps.registry, async () => {
    await collect(sql, engine, metrics);
  });
  const reader = deps.client
    ? new LagoReader(
        deps.client,
        new RateLimiter(settings.entitlements.refreshRps),
        settings.lago.rateLimitMaxPauseSeconds * 1000,
        () => metrics.lagoRateLimited.inc(),
      )
    : null;
  engine = new EntitlementEngine({ sql, redis, reader, settings, log, metrics });
  const e = engine;
  const intake = new LagoWebhookIntake({
    sql,
    settings,
    reader,
    log,
    metrics,
    onChanged: (customer) => {
      if (e.isLeader) e.markDirty(customer, "webhook");
    },
  });
  return { engine, intake, reader, metrics };
}

/** Sets the entitlement gauges at scrape: counts from PostgreSQL, the proxies' reports from Redis. */
async function collect(sql: Sql, engine: EntitlementEngine | null, m: EntitlementMetrics): Promise<void> {
  const rows = await sql<{ state: string; reason: string | null; n: number }[]>`
    SELECT state, reason, count(*)::int AS n FROM entitlements GROUP BY state, reason`;
  m.customers.reset();
  m.blocked.reset();
  m.customers.set({ state: "allowed" }, 0);
  m.customers.set({ state: "blocked" }, 0);
  const totals = new Map<string, number>();
  for (const r of rows) {
    totals.set(r.state, (totals.get(r.state) ?? 0) + r.n);
    if (r.state === "blocked") m.blocked.set({ reason: r.reason ?? "unknown" }, r.n);
  }
  for (const [state, n] of totals) m.customers.set({ state }, n);
  const [age] = await sql<{ s: number | null }[]>`
    SELECT extract(epoch FROM now() - min(coalesce(refreshed_at, created_at)))::float8 AS s
    FROM entitlements
    WHERE state = 'blocked' OR wallet_fingerprint IS NOT NULL OR limit_cents IS NOT NULL`;
  m.oldestRefreshAge.set(age?.s ?? 0);
  const publisher = engine?.publisher;
  if (engine?.isLeader && publisher) m.publishAge.set((Date.now() - publisher.lastPublishedAt) / 1000);
  if (!publisher) return;
  const reports = await publisher.proxyReports();
  m.proxyRejections.reset();
  for (const [key, n] of Object.entries(reports.rejections)) {
    const [mode = "enforce", reason = "unknown"] = key.split(":");
    m.proxyRejections.set({ mode, reason }, n);
  }
  const recent = reports.proxies.filter((p) => Date.now() / 1000 - p.at < 60);
  m.proxyCacheAge.set(recent.reduce((max, p) => Math.max(max, p.age ?? STALE_AFTER_SECONDS * 10), 0));
  m.proxiesUnavailable.set(recent.filter((p) => p.unavailable).length);
}
