import type { Sql } from "../db/pool.ts";
import { query } from "../db/queries.ts";
import type { Service } from "../service.ts";

/** The figures of GET /webhooks/stats. */
export async function collectStats(service: Service) {
  const [row] = await service.sql.unsafe<Record<string, unknown>[]>(query("stats"));
  const r = row ?? {};
  const lag = (r.lag_1h as number[] | null) ?? null;
  const sink = service.sink.snapshot();
  const n = (v: unknown) => Number(v ?? 0);
  return {
    events: {
      pending: n(r.pending),
      delivered: n(r.delivered),
      failed: n(r.failed),
      unbillable: n(r.unbillable),
    },
    usage: {
      received_last_hour: n(r.received_1h),
      received_last_day: n(r.received_24h),
      not_billable: n(r.not_billable),
      conflicts: n(r.conflicts),
      rejected_payloads: n(r.rejections),
    },
    delivered_last_hour: n(r.delivered_1h),
    delivered_last_day: n(r.delivered_24h),
    oldest_pending_age_seconds: r.oldest_pending_seconds === null ? null : n(r.oldest_pending_seconds),
    delivery_lag_seconds: { p50: lag?.[0] ?? null, p99: lag?.[1] ?? null },
    lago_duplicates_acknowledged: n(r.lago_duplicates),
    last_success_at: r.last_success_at ?? null,
    last_failure: r.last_failure ?? null,
    sink: {
      configured: service.lago !== null,
      worker_in_this_process: service.worker !== null,
      state: service.lago === null ? "not_configured" : sink.state,
      until: sink.until,
      error:
        service.lago === null
          ? "LAGO_API_URL (or LAGO_WEBHOOK_URL) and LAGO_API_KEY are not set: events are stored, not delivered"
          : sink.error,
      since: sink.since,
    },
  };
}

export async function backlog(sql: Sql) {
  const [row] = await sql.unsafe<Record<string, unknown>[]>(query("backlog"));
  return {
    pending: Number(row?.pending ?? 0),
    failed: Number(row?.failed ?? 0),
    unbillable: Number(row?.unbillable ?? 0),
    oldestPendingSeconds: row?.oldest_pending_seconds === null ? 0 : Number(row?.oldest_pending_seconds ?? 0),
  };
}
