import { query } from "../db/queries.ts";
import type { Service } from "../service.ts";
import { type DriftReport, drift } from "./drift.ts";

/** The name of the periodic check's row in drift_checks. */
export const DRIFT_CHECK_NAME = "periodic";
/** The first check runs this long after the process starts (the others once per interval). */
const FIRST_CHECK_DELAY_MS = 30_000;

/** What a drift check stores and /health/metrics exports (lago_billing_drift_*). */
export interface DriftSummary {
  /** Calls in differences nothing explains: what an operator must look at. */
  unexplained_calls: number;
  spendlogs_available: boolean;
  /** Calls each source holds in the window (delivered: calls with an event Lago has). */
  calls: { spendlogs: number; ledger: number; delivered: number };
  /** Calls per difference kind, explained or not. */
  differences: { kind: string; explained: boolean; calls: number }[];
}

export function summarize(report: DriftReport): DriftSummary {
  const calls = { spendlogs: 0, ledger: 0, delivered: 0 };
  for (const d of report.days) {
    calls.spendlogs += d.spendlogs?.calls ?? 0;
    calls.ledger += d.ledger?.calls ?? 0;
    calls.delivered += d.delivered?.calls ?? 0;
  }
  const byKind = new Map<string, DriftSummary["differences"][number]>();
  let unexplained = 0;
  for (const d of report.differences) {
    const explained = !d.unexplained;
    if (!explained) unexplained += d.calls;
    const key = `${d.kind}\u0000${explained}`;
    const entry = byKind.get(key) ?? { kind: d.kind, explained, calls: 0 };
    entry.calls += d.calls;
    byKind.set(key, entry);
  }
  return {
    unexplained_calls: unexplained,
    spendlogs_available: report.spendlogs.available,
    calls,
    differences: [...byKind.values()],
  };
}

export interface DriftCheckResult {
  /** False when another replica took this interval's check. */
  ran: boolean;
  summary?: DriftSummary;
  duration_ms?: number;
}

/**
 * One periodic drift check: the drift report (SpendLogs vs ledger vs Lago, the same as `report
 * drift`) over the last DRIFT_CHECK_WINDOW_HOURS, summarised into drift_checks. One replica takes
 * each interval (a conditional upsert, no lock held while it runs). `force` takes it regardless.
 */
export async function runDriftCheck(
  service: Service,
  opts: { now?: Date; force?: boolean } = {},
): Promise<DriftCheckResult> {
  const { intervalSeconds, windowHours } = service.settings.driftCheck;
  const taken = await service.sql.unsafe<{ taken: boolean }[]>(query("drift_check_claim"), [
    DRIFT_CHECK_NAME,
    opts.force ? 0 : Math.max(intervalSeconds * 0.9, 1),
  ]);
  if (taken.length === 0) return { ran: false };
  const started = Date.now();
  const until = opts.now ?? new Date();
  const since = new Date(until.getTime() - windowHours * 3_600_000);
  try {
    const report = await drift(service, { since, until, now: until });
    const summary = summarize(report);
    const duration = Date.now() - started;
    await service.sql.unsafe(query("drift_check_save"), [
      DRIFT_CHECK_NAME,
      since.toISOString(),
      until.toISOString(),
      duration,
      JSON.stringify(summary),
    ]);
    service.metrics.driftChecks.inc({ outcome: "ok" });
    return { ran: true, summary, duration_ms: duration };
  } catch (err) {
    service.metrics.driftChecks.inc({ outcome: "error" });
    const message = err instanceof Error ? err.message : String(err);
    await service.sql
      .unsafe(query("drift_check_failed"), [DRIFT_CHECK_NAME, message.slice(0, 2000)])
      .catch(() => undefined);
    throw err;
  }
}

export interface DriftCheckHandle {
  stop(): Promise<void>;
}

/** Runs the drift check every DRIFT_CHECK_INTERVAL_SECONDS (0: off) in a process with a worker. */
export function startDriftCheck(service: Service): DriftCheckHandle | null {
  const { intervalSeconds, windowHours } = service.settings.driftCheck;
  const log = service.log.child({ component: "drift-check" });
  if (intervalSeconds <= 0) {
    log.info("periodic drift check off (DRIFT_CHECK_INTERVAL_SECONDS=0)");
    return null;
  }
  let stopped = false;
  let running: Promise<void> | null = null;
  let timer: NodeJS.Timeout | null = null;
  const tick = () => {
    running = runDriftCheck(service)
      .then((r) => {
        if (!r.ran || !r.summary) return;
        const s = r.summary;
        const fields = { ...s.calls, unexplained_calls: s.unexplained_calls, duration_ms: r.duration_ms };
        if (!s.spendlogs_available)
          log.info(fields, "drift check: SpendLogs not readable, ledger vs Lago only");
        else if (s.unexplained_calls > 0)
          log.warn(
            fields,
            `drift check: ${s.unexplained_calls} call(s) differ between SpendLogs, the ledger and Lago in the last ${windowHours} h; run \`webhook-service report drift --since <time>\` for the details`,
          );
        else log.info(fields, "drift check: SpendLogs, ledger and Lago agree");
      })
      .catch((err: unknown) =>
        log.warn({ err }, "drift check failed (it runs again at the next interval; see `report drift`)"),
      )
      .finally(() => {
        running = null;
        if (!stopped) timer = setTimeout(tick, intervalSeconds * 1000).unref();
      });
  };
  timer = setTimeout(tick, Math.min(FIRST_CHECK_DELAY_MS, intervalSeconds * 1000)).unref();
  return {
    async stop() {
      stopped = true;
      if (timer) clearTimeout(timer);
      await running;
    },
  };
}
