import { auditSubscriptions, MAX_AUDITED_CUSTOMERS } from "../lago/subscription-audit.ts";
import type { Service } from "../service.ts";
import { type CustomerTally, pipelined, replayPage, Tally } from "./replay.ts";
import { SpendLogsReader } from "./spendlogs.ts";

export interface BackfillOptions {
  since: Date;
  until: Date;
  customer?: string | undefined;
  dryRun?: boolean | undefined;
  onProgress?: ((p: BackfillProgress) => void) | undefined;
  pageSize?: number | undefined;
  signal?: AbortSignal | undefined;
  /** The clock (tests). */
  now?: Date | undefined;
}

export interface BackfillProgress {
  scanned: number;
  /** Rows in the range (the scan's goal). */
  total: number;
  inserted: number;
  duplicates: number;
  conflicts: number;
  rejected: number;
  /** Time of the last row read (ISO 8601). */
  position: string;
}

export interface BackfillSummary {
  since: string;
  until: string;
  customer: string | null;
  dry_run: boolean;
  spendlogs: { available: boolean; message?: string };
  scanned: number;
  /** Calls new to the ledger (in a dry run: that would be new). */
  new: number;
  already_in_ledger: number;
  conflicts: number;
  rejected: number;
  rejected_reasons: Record<string, number>;
  skipped_other_customers: number;
  customers: Record<string, Omit<CustomerTally, "first_timestamp" | "last_timestamp">>;
  /** Lago events queued in the outbox for the new calls; the delivery worker sends them. */
  events_queued_for_lago: number;
  warnings: string[];
  duration_ms: number;
}

/**
 * Replays a historical range of SpendLogs into the ledger (source "backfill"); the ledger queues
 * the Lago events of new calls as usual and the delivery worker sends them. Calls already in the
 * ledger are counted, not touched, so a backfill can be repeated or overlap the reconciler. The
 * ingest age window does not apply: history is the point. Warns where Lago will store the events
 * without billing them (before a subscription starts, or in periods already invoiced).
 */
export async function backfill(service: Service, opts: BackfillOptions): Promise<BackfillSummary> {
  const started = Date.now();
  if (!(opts.since < opts.until)) throw new Error("--since must be before --until");
  const reader = new SpendLogsReader(service);
  const tally = new Tally();
  const summary = (spendlogs: BackfillSummary["spendlogs"], warnings: string[]): BackfillSummary => ({
    since: opts.since.toISOString(),
    until: opts.until.toISOString(),
    customer: opts.customer ?? null,
    dry_run: opts.dryRun ?? false,
    spendlogs,
    scanned: tally.scanned,
    new: tally.inserted,
    already_in_ledger: tally.duplicates,
    conflicts: tally.conflicts,
    rejected: tally.rejected,
    rejected_reasons: Object.fromEntries(tally.reasons),
    skipped_other_customers: tally.skippedOtherCustomers,
    customers: Object.fromEntries(
      [...tally.customers].map(([id, { first_timestamp: _f, last_timestamp: _l, ...c }]) => [id, c]),
    ),
    events_queued_for_lago: tally.eventsQueued,
    warnings,
    duration_ms: Date.now() - started,
  });
  try {
    const availability = await reader.probe();
    if (!availability.available) return summary({ available: false, message: availability.message }, []);
    const total = await reader.count(opts.since, opts.until);
    const progress = (position: string) =>
      opts.onProgress?.({
        scanned: tally.scanned,
        total,
        inserted: tally.inserted,
        duplicates: tally.duplicates,
        conflicts: tally.conflicts,
        rejected: tally.rejected,
        position,
      });
    progress(opts.since.toISOString());
    const pages = reader.pages(opts.since, opts.until, { pageSize: opts.pageSize, signal: opts.signal });
    await pipelined(pages, async (rows) => {
      await replayPage(
        service,
        rows,
        { source: "backfill", ignoreMaxAge: true, customer: opts.customer, dryRun: opts.dryRun },
        tally,
      );
      const last = rows[rows.length - 1];
      progress(last ? new Date(last.start_epoch * 1000).toISOString() : opts.until.toISOString());
    });
    // Pages commit two at a time: the last report comes once every page is in.
    progress(opts.until.toISOString());
    if (!opts.dryRun && tally.eventsQueued > 0) await service.sql`SELECT pg_notify('lago_events', '')`;
    const warnings = [
      ...(opts.signal?.aborted ? ["stopped before the end of the range: run it again to finish"] : []),
      ...invoicedPeriodWarning(opts.since, opts.now ?? new Date()),
      ...(await subscriptionWarnings(service, tally)),
    ];
    return summary({ available: true }, warnings);
  } finally {
    await reader.close();
  }
}

/**
 * Lago bills an event only in a period not yet invoiced. With calendar billing the periods before
 * the current month are normally finalised: their events are stored and never invoiced.
 */
export function invoicedPeriodWarning(since: Date, now: Date): string[] {
  const monthStart = new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), 1));
  if (since >= monthStart) return [];
  return [
    `the range starts ${since.toISOString()}, before the current billing period (${monthStart.toISOString()}): ` +
      "events in periods Lago has already invoiced are stored by Lago but not invoiced " +
      "(unless the invoice is still a draft in its grace period); bill them with a one-off invoice if needed",
  ];
}

/** Customers whose replayed calls fall outside their Lago subscription's span, or who have none. */
async function subscriptionWarnings(service: Service, tally: Tally): Promise<string[]> {
  const lago = service.lago;
  if (!lago) return [];
  const customers = [...tally.customers].filter(([, c]) => c.new > 0 || c.already_in_ledger > 0);
  const checked = customers.slice(0, MAX_AUDITED_CUSTOMERS).map(([customerId, c]) => ({
    customerId,
    firstAt: c.first_timestamp,
    lastAt: c.last_timestamp,
  }));
  const findings = await auditSubscriptions(lago.resolver, service.settings.lago, checked);
  const warnings = findings.flatMap((f) => (f.problem === null ? [] : [f.problem]));
  if (customers.length > MAX_AUDITED_CUSTOMERS) {
    warnings.push(
      `subscriptions of ${customers.length - MAX_AUDITED_CUSTOMERS} more customer(s) were not checked`,
    );
  }
  return warnings;
}
