import { query } from "../db/queries.ts";
import type { Service } from "../service.ts";
import { pipelined, replayPage, Tally } from "./replay.ts";
import { SpendLogsReader } from "./spendlogs.ts";

export const CURSOR_NAME = "spendlogs";
const FIRST_RUN_LOOKBACK_MS = 24 * 3_600_000;
/** Re-read at least this much before the cursor: LiteLLM writes SpendLogs in batches every ~10 s. */
const MIN_OVERLAP_MS = 60_000;
// Any fixed number, distinct from the migration lock: one reconciler at a time across replicas.
const RECONCILE_LOCK = 7_305_111_002;

export interface ReconcileOptions {
  /** Explicit window start; without it the run continues from the persisted cursor. */
  since?: Date | undefined;
  /** Explicit window end (exclusive); default now − RECONCILE_SAFETY_LAG_SECONDS. */
  until?: Date | undefined;
  /** The clock (tests). */
  now?: Date | undefined;
  pageSize?: number | undefined;
  /** Stops between pages; the cursor then stays where it was. */
  signal?: AbortSignal | undefined;
}

export interface ReconcileResult {
  /** False when there is no SpendLogs to read; `message` says why. Nothing was done. */
  available: boolean;
  message?: string;
  since: string | null;
  until: string | null;
  scanned: number;
  inserted: number;
  duplicates: number;
  conflicts: number;
  rejected: number;
  rejections_stored: number;
  events_queued: number;
  /** The persisted cursor after the run (null when never set). */
  cursor: string | null;
  duration_ms: number;
}

/**
 * Ingests every SpendLogs call the ledger lacks in a window: by default from the persisted cursor
 * (minus an overlap, so rows LiteLLM wrote late are still seen) to now minus the safety lag (rows
 * LiteLLM may not have written yet are left for the next run). The same request id delivered by
 * the callback is a duplicate, so nothing is counted twice; running twice changes nothing. The
 * cursor moves only after the window is committed, and only on cursor-driven runs: an explicit
 * --since is a one-off look at history.
 */
export async function reconcile(
  service: Pick<Service, "settings" | "sql" | "ledger" | "prices">,
  opts: ReconcileOptions = {},
): Promise<ReconcileResult> {
  const started = Date.now();
  const now = opts.now ?? new Date();
  const lagMs = service.settings.reconcile.safetyLagSeconds * 1000;
  const [cursorRow] = await service.sql.unsafe<{ cursor: Date }[]>(query("reconcile_cursor_get"), [
    CURSOR_NAME,
  ]);
  const cursor = cursorRow?.cursor ?? null;
  const reader = new SpendLogsReader(service);
  const result = (tally: Tally, extra: Partial<ReconcileResult>): ReconcileResult => ({
    available: true,
    since: null,
    until: null,
    scanned: tally.scanned,
    inserted: tally.inserted,
    duplicates: tally.duplicates,
    conflicts: tally.conflicts,
    rejected: tally.rejected,
    rejections_stored: tally.rejectionsStored,
    events_queued: tally.eventsQueued,
    cursor: cursor?.toISOString() ?? null,
    duration_ms: Date.now() - started,
    ...extra,
  });
  try {
    const availability = await reader.probe();
    if (!availability.available) {
      return result(new Tally(), { available: false, message: availability.message });
    }
    const fromCursor = opts.since === undefined;
    const since =
      opts.since ??
      (cursor
        ? new Date(cursor.getTime() - Math.max(lagMs, MIN_OVERLAP_MS))
        : new Date(now.getTime() - FIRST_RUN_LOOKBACK_MS));
    const until = opts.until ?? new Date(now.getTime() - lagMs);
    const window = { since: since.toISOString(), until: until.toISOString() };
    const tally = new Tally();
    if (since >= until) return result(tally, window);
    const pages = reader.pages(since, until, { pageSize: opts.pageSize, signal: opts.signal });
    await pipelined(pages, (rows) =>
      replayPage(service, rows, { source: "reconciler", ignoreMaxAge: false }, tally),
    );
    if (opts.signal?.aborted) return result(tally, { ...window, message: "stopped before the end" });
    const summary = result(tally, window);
    if (tally.eventsQueued > 0) await service.sql`SELECT pg_notify('lago_events', '')`;
    if (!fromCursor) return summary;
    const { cursor: _c, duration_ms: _d, ...last } = summary;
    const [saved] = await service.sql.unsafe<{ cursor: Date }[]>(query("reconcile_cursor_set"), [
      CURSOR_NAME,
      until.toISOString(),
      JSON.stringify({ ...last, at: new Date().toISOString() }),
    ]);
    return { ...summary, cursor: saved?.cursor.toISOString() ?? null };
  } finally {
    await reader.close();
  }
}

export interface ReconcilerHandle {
  /** Stops the timer and waits for a run in progress to stop at its next page. */
  stop(): Promise<void>;
}

/**
 * Runs reconcile() every RECONCILE_INTERVAL_SECONDS in a worker process (0: off, returns null).
 * Replicas take turns through a PostgreSQL advisory lock held by the run's session, so a crashed
 * replica's lock goes with its connection. Failures are logged and retried next interval: the
 * reconciler must never take the worker down.
 */
export function startReconciler(service: Service): ReconcilerHandle | null {
  const intervalMs = service.settings.reconcile.intervalSeconds * 1000;
  const log = service.log.child({ component: "reconciler" });
  if (intervalMs <= 0) {
    log.info("reconciler off (RECONCILE_INTERVAL_SECONDS=0)");
    return null;
  }
  const abort = new AbortController();
  let timer: NodeJS.Timeout | null = null;
  let running: Promise<void> | null = null;
  let reportedUnavailable = false;

  const runOnce = async (): Promise<void> => {
    const conn = await service.sql.reserve();
    try {
      const [lock] = await conn<{ ok: boolean }[]>`SELECT pg_try_advisory_lock(${RECONCILE_LOCK}) AS ok`;
      if (!lock?.ok) {
        log.debug("another replica is reconciling");
        return;
      }
      try {
        const r = await reconcile(service, { signal: abort.signal });
        if (!r.available) {
          if (!reportedUnavailable) log.info({ reason: r.message }, "reconciler idle");
          reportedUnavailable = true;
          return;
        }
        reportedUnavailable = false;
        const level = r.inserted > 0 || r.conflicts > 0 ? "warn" : "info";
        log[level](
          r,
          r.inserted > 0
            ? `reconciler recovered ${r.inserted} call(s) missing from the ledger`
            : "reconciler: ledger complete",
        );
      } finally {
        await conn`SELECT pg_advisory_unlock(${RECONCILE_LOCK})`.catch(() => undefined);
      }
    } finally {
      conn.release();
    }
  };

  const schedule = (delayMs: number) => {
    if (abort.signal.aborted) return;
    timer = setTimeout(() => {
      running = runOnce()
        .catch((err: unknown) => log.error({ err }, "reconcile run failed; retrying next interval"))
        .finally(() => {
          running = null;
          schedule(intervalMs);
        });
    }, delayMs);
    timer.unref();
  };
  // Soon after start: the callbacks lost while this process was down are what it should find first.
  schedule(Math.min(intervalMs, 5000));

  return {
    async stop() {
      abort.abort();
      if (timer) clearTimeout(timer);
      await running;
    },
  };
}
