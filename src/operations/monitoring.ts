import type { DriftSummary } from "../completeness/drift-check.ts";
import { DRIFT_CHECK_NAME } from "../completeness/drift-check.ts";
import { query } from "../db/queries.ts";
import type { Service } from "../service.ts";

/** How long the scrape-time figures read from PostgreSQL are reused (scrapes from several Prometheus servers). */
const CACHE_MS = 10_000;

/** The reason classes of parked_reasons.sql, always exported (0 when none), so dashboards and alerts see a series. */
const PARKED_REASONS: Record<"failed" | "unbillable", string[]> = {
  unbillable: [
    "multiple_subscriptions",
    "before_subscription_start",
    "after_subscription_end",
    "no_subscription",
    "other",
  ],
  failed: ["lago_rejected", "max_attempts", "max_age", "other"],
};

interface DriftRow {
  checked_at: number | null;
  duration_ms: number | null;
  summary: DriftSummary | null;
}

const cache = new WeakMap<Service, { at: number; run: Promise<void> }>();

/**
 * Sets the gauges an operator alerts on that live in PostgreSQL, not in this process: parked events
 * by reason and the latest periodic drift check. Read at most every 10 s per process; a database
 * error leaves the previous values (the database being down shows in /health and `up`).
 */
export function refreshMonitoringGauges(service: Service): Promise<void> {
  const hit = cache.get(service);
  if (hit && Date.now() - hit.at < CACHE_MS) return hit.run;
  const run = read(service).catch((err: unknown) => {
    service.metrics.databaseErrors.inc({ where: "metrics" });
    service.log.debug({ err }, "could not read the monitoring gauges");
  });
  cache.set(service, { at: Date.now(), run });
  return run;
}

async function read(service: Service): Promise<void> {
  const m = service.metrics;
  const [parked, drift] = await Promise.all([
    service.sql.unsafe<{ state: "failed" | "unbillable"; reason: string; events: string }[]>(
      query("parked_reasons"),
    ),
    service.sql.unsafe<DriftRow[]>(query("drift_check_get"), [DRIFT_CHECK_NAME]),
  ]);
  const counts = new Map(parked.map((r) => [`${r.state}/${r.reason}`, Number(r.events)]));
  m.parkedNow.reset();
  for (const [state, reasons] of Object.entries(PARKED_REASONS)) {
    for (const reason of reasons) m.parkedNow.set({ state, reason }, counts.get(`${state}/${reason}`) ?? 0);
  }

  m.driftCheckInterval.set(service.settings.driftCheck.intervalSeconds);
  const row = drift[0];
  const s = row?.summary;
  if (!row || row.checked_at === null || !s) return;
  m.driftLastCheck.set(row.checked_at);
  m.driftCheckDuration.set((row.duration_ms ?? 0) / 1000);
  m.driftUnexplained.set(s.unexplained_calls);
  m.driftSpendlogsAvailable.set(s.spendlogs_available ? 1 : 0);
  for (const source of ["spendlogs", "ledger", "delivered"] as const)
    m.driftWindowCalls.set({ source }, s.calls[source]);
  m.driftCalls.reset();
  for (const d of s.differences) m.driftCalls.set({ kind: d.kind, explained: String(d.explained) }, d.calls);
}
